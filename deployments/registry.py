"""Detector model registry: model ids → checkpoint sources, re-read on every lookup, so adding
a model (a file in the models directory or a line in the registry file) needs no redeploy.

Registry file (YAML or JSON)::

    models:
      chairs-v3: {source: s3://bucket/runs/42/best.pt, sha256: 3b1f…}
      coco: {source: /models/yolo11n.pt}
      remote: {source: https://models.example.com/yolo/best.pt, sha256: 9c0e…}

``sha256`` (optional, 64 hex digits) pins the file: a download, or a local file, with other
bytes is refused (``deployments.common.resolve_checkpoint``). Checkpoints are unpickled when
loaded, so remote entries should carry one; an unpinned remote entry is logged as such.

Every ``<id>.pt`` in the models directory, and under the ``s3://bucket/prefix/`` models prefix,
is registered as ``<id>`` too. The prefix is a folder (``s3://bucket/models`` lists
``models/…``, never ``models-old/…``); a key in a subfolder registers its stem only when no key
nearer the prefix has it (``models/chairs.pt`` wins over ``models/zz/chairs.pt``). The S3
listing is cached for a few seconds; when listing fails, the last good listing is served (the
failure is logged and retried after ``S3_FAILURE_TTL_S``). The id ``default`` (the configured
detector: a checkpoint, or the random-init config) and the registry file's ids resolve without
listing S3. Precedence, highest first: registry file, S3 prefix, models directory, settings.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from deployments.errors import DeploymentError, InvalidInput, ModelLoadError, UnknownModel

logger = logging.getLogger("meshline.registry")

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
DEFAULT_MODEL_ID = "default"


class ModelUnavailable(DeploymentError):
    """A model that cannot be used just now (S3 listing down with no listing to fall back on, a
    replica's copy being reloaded): the ingress answers 503 with Retry-After."""

    kind = "model_unavailable"
    status = 503

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ModelEntry:
    model_id: str
    source: str  # local path, s3://bucket/key, https://…, or an ultralytics .yaml (random init)
    origin: str  # "settings", "registry_file", "models_dir" or "s3_prefix"
    sha256: str | None = None  # the registry file's pin (lower-case hex), if any


class ModelRegistry:
    S3_LISTING_TTL_S = 10.0
    S3_FAILURE_TTL_S = 2.0  # a failed listing is not retried by every lookup meanwhile
    S3_TIMEOUT_S = 5.0  # connect / read: a lookup must not hang on an unreachable endpoint

    def __init__(
        self,
        default_source: str,
        registry_file: Path | None = None,
        models_dir: Path | None = None,
        s3_prefix: str | None = None,
        s3_endpoint_url: str | None = None,
    ) -> None:
        self.default_source = default_source
        self.registry_file = registry_file
        self.models_dir = models_dir
        self.s3_prefix = s3_prefix
        self.s3_endpoint_url = s3_endpoint_url
        # (when, entries) of the last good listing (None: none yet); when the last try failed
        self._s3_good: tuple[float, dict[str, str]] | None = None
        self._s3_failed_at: float | None = None
        self._s3_lock = threading.Lock()

    def entries(self) -> dict[str, ModelEntry]:
        """Every registered model. With the S3 listing down and no good one yet, its models
        are missing here (``resolve`` says so: 503)."""
        return self._entries(self._s3_entries()[0])

    def _entries(self, s3: dict[str, str]) -> dict[str, ModelEntry]:
        found = {DEFAULT_MODEL_ID: ModelEntry(DEFAULT_MODEL_ID, self.default_source, "settings")}
        if self.models_dir is not None and self.models_dir.is_dir():
            for path in sorted(self.models_dir.glob("*.pt")):
                if MODEL_ID.fullmatch(path.stem) and path.stem != DEFAULT_MODEL_ID:
                    found[path.stem] = ModelEntry(path.stem, str(path.resolve()), "models_dir")
        for model_id, source in s3.items():
            found[model_id] = ModelEntry(model_id, source, "s3_prefix")
        for model_id, (source, digest) in self._file_entries().items():
            found[model_id] = ModelEntry(model_id, source, "registry_file", digest)
        return found

    def _s3_entries(self) -> tuple[dict[str, str], bool]:
        """(model id → s3 URI, whether that is a listing at all: False when S3 could never be
        listed). Blocking (the network): callers on an event loop use a thread."""
        if not self.s3_prefix:
            return {}, True
        with self._s3_lock:
            now = time.monotonic()
            good = self._s3_good
            failed_recently = (
                self._s3_failed_at is not None and now - self._s3_failed_at < self.S3_FAILURE_TTL_S
            )
            if good is not None and (failed_recently or now - good[0] < self.S3_LISTING_TTL_S):
                return good[1], True
            if failed_recently:
                return {}, False
            try:
                entries = self._list_s3(self.s3_prefix)
            except Exception as exc:  # noqa: BLE001 — botocore raises many types: "cannot list"
                self._s3_failed_at = time.monotonic()
                logger.warning(
                    "cannot list detector models under %s (%s); %s",
                    self.s3_prefix,
                    exc,
                    "serving the last good listing" if good else "no listing to serve yet",
                )
                return (good[1], True) if good is not None else ({}, False)
            self._s3_good, self._s3_failed_at = (time.monotonic(), entries), None
            return entries, True

    def _list_s3(self, s3_prefix: str) -> dict[str, str]:
        import boto3
        from botocore.config import Config

        bucket, _, prefix = s3_prefix.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""  # a folder, not a stem
        timeout = Config(
            connect_timeout=self.S3_TIMEOUT_S,
            read_timeout=self.S3_TIMEOUT_S,
            retries={"max_attempts": 2},
        )
        client = boto3.client("s3", endpoint_url=self.s3_endpoint_url, config=timeout)
        found: dict[str, tuple[int, str]] = {}  # stem → (depth under the prefix, key)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                stem = Path(key).stem
                if not (key.endswith(".pt") and MODEL_ID.fullmatch(stem)):
                    continue
                if stem == DEFAULT_MODEL_ID:
                    continue
                depth = key[len(prefix) :].count("/")
                # The key nearest the prefix wins; at one depth, the first listed (key order).
                if stem not in found or depth < found[stem][0]:
                    found[stem] = (depth, key)
        return {stem: f"s3://{bucket}/{key}" for stem, (_, key) in found.items()}

    def _file_entries(self) -> dict[str, tuple[str, str | None]]:
        if self.registry_file is None or not self.registry_file.is_file():
            return {}
        text = self.registry_file.read_text()
        try:
            data = (
                json.loads(text) if self.registry_file.suffix == ".json" else yaml.safe_load(text)
            )
        except (ValueError, yaml.YAMLError) as exc:
            raise ModelLoadError(
                f"model registry {self.registry_file} is not valid: {exc}"
            ) from exc
        models = (data or {}).get("models", {})
        if not isinstance(models, dict):
            raise ModelLoadError(f"model registry {self.registry_file}: 'models' must be a mapping")
        entries: dict[str, tuple[str, str | None]] = {}
        for model_id, spec in models.items():
            source = spec.get("source") if isinstance(spec, dict) else spec
            digest = spec.get("sha256") if isinstance(spec, dict) else None
            if not MODEL_ID.fullmatch(str(model_id)) or not isinstance(source, str):
                raise ModelLoadError(f"model registry {self.registry_file}: bad entry {model_id!r}")
            if digest is not None and not (
                isinstance(digest, str) and SHA256_HEX.fullmatch(digest)
            ):
                raise ModelLoadError(
                    f"model registry {self.registry_file}: entry {model_id!r} has a sha256 that "
                    "is not 64 hex digits"
                )
            entries[str(model_id)] = (source, digest.lower() if digest else None)
        return entries

    def resolve(self, model_id: str) -> ModelEntry:
        """The entry of ``model_id``: 422 for a malformed id, 404 for an unknown one, 503 when
        only an S3 listing that cannot be had might know it. Blocking (files, S3)."""
        if not MODEL_ID.fullmatch(model_id):
            raise InvalidInput(f"invalid model id {model_id!r}", param="model")
        # The registry file outranks every other source, and 'default' is the settings': both
        # are known without S3 (an S3 outage must not fail the default model).
        file_entry = self._file_entries().get(model_id)
        if file_entry is not None:
            return ModelEntry(model_id, file_entry[0], "registry_file", file_entry[1])
        if model_id == DEFAULT_MODEL_ID:
            return ModelEntry(DEFAULT_MODEL_ID, self.default_source, "settings")
        s3, listed = self._s3_entries()
        entry = self._entries(s3).get(model_id)
        if entry is None and not listed:
            raise ModelUnavailable(f"cannot list the detector models now; retry ({model_id!r})")
        if entry is None:
            raise UnknownModel(f"unknown model {model_id!r}", param="model")
        return entry
