"""meshline ingress: HTTP API, durable jobs, storage. No model code lives here."""
