"""meshline model deployments: one module per model, no HTTP code.

Each module holds a plain model class (usable without Ray, e.g. in tests and notebooks) and
a thin ``@serve.deployment`` class that owns one instance per replica.
"""
