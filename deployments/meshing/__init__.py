"""CPU geometry used by the Reconstructor and Converter deployments (no Ray, no HTTP)."""
