"""meshline Studio: the page at /studio (a client of the public API only)."""
