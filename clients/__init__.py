"""meshline clients: a Python client (``MeshlineClient``) and the ``meshline`` CLI."""

from clients.client import MeshlineClient, MeshlineError

__all__ = ["MeshlineClient", "MeshlineError"]
