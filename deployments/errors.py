"""Typed domain errors raised by model code. The ingress maps them to HTTP status codes."""

from __future__ import annotations


class DeploymentError(Exception):
    """Base class: a failure whose message is safe to show to a client. (Not the HTTP
    client's ``clients.MeshlineError``, which is what a caller of the HTTP API catches.)"""

    kind = "internal_error"


class InvalidInput(DeploymentError):
    """The request itself cannot be processed (bad prompt, empty mask, bad mesh)."""

    kind = "invalid_input"
    status = 422

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownModel(InvalidInput):
    """A model id no registry source knows (404, not 422: the request names a missing thing)."""

    kind = "not_found"
    status = 404


class UnsupportedPrompt(InvalidInput):
    """A prompt kind the configured model cannot take (a text prompt on SAM2): 422 saying so."""

    kind = "unsupported_prompt"


class UnknownImage(InvalidInput):
    """An image id no store holds (never sent, or pruned): 404 naming it."""

    kind = "not_found"
    status = 404


class UnsupportedImage(InvalidInput):
    """Bytes that are no image of an accepted format (415)."""

    kind = "unsupported_media_type"
    status = 415


class ImageTooLarge(InvalidInput):
    """An image with more pixels than allowed, found when decoding it (413)."""

    kind = "payload_too_large"
    status = 413


class ModelLoadError(DeploymentError):
    """A configured checkpoint or model config could not be loaded."""

    kind = "model_load_error"
