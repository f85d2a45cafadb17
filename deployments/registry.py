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
is registered as ``<id>`` too (the S3 listing is cached for a few seconds). The id ``default``
is the configured detector (a checkpoint, or the random-init config).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from deployments.errors import InvalidInput, ModelLoadError, UnknownModel

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
DEFAULT_MODEL_ID = "default"


@dataclass(frozen=True)
class ModelEntry:
    model_id: str
    source: str  # local path, s3://bucket/key, https://…, or an ultralytics .yaml (random init)
    origin: str  # "settings", "registry_file", "models_dir" or "s3_prefix"
    sha256: str | None = None  # the registry file's pin (lower-case hex), if any


class ModelRegistry:
    S3_LISTING_TTL_S = 10.0

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
        self._s3_cache: tuple[float, dict[str, str]] = (0.0, {})
        self._s3_lock = threading.Lock()

    def entries(self) -> dict[str, ModelEntry]:
        found = {DEFAULT_MODEL_ID: ModelEntry(DEFAULT_MODEL_ID, self.default_source, "settings")}
        if self.models_dir is not None and self.models_dir.is_dir():
            for path in sorted(self.models_dir.glob("*.pt")):
                if MODEL_ID.fullmatch(path.stem) and path.stem != DEFAULT_MODEL_ID:
                    found[path.stem] = ModelEntry(path.stem, str(path.resolve()), "models_dir")
        for model_id, source in self._s3_entries().items():
            found[model_id] = ModelEntry(model_id, source, "s3_prefix")
        for model_id, (source, digest) in self._file_entries().items():
            found[model_id] = ModelEntry(model_id, source, "registry_file", digest)
        return found

    def _s3_entries(self) -> dict[str, str]:
        if not self.s3_prefix:
            return {}
        with self._s3_lock:
            listed_at, cached = self._s3_cache
            if time.monotonic() - listed_at < self.S3_LISTING_TTL_S:
                return cached
            import boto3

            bucket, _, prefix = self.s3_prefix.removeprefix("s3://").partition("/")
            client = boto3.client("s3", endpoint_url=self.s3_endpoint_url)
            entries: dict[str, str] = {}
            try:
                for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix
                ):
                    for item in page.get("Contents", []):
                        stem = Path(item["Key"]).stem
                        if (
                            item["Key"].endswith(".pt")
                            and MODEL_ID.fullmatch(stem)
                            and stem != DEFAULT_MODEL_ID
                        ):
                            entries[stem] = f"s3://{bucket}/{item['Key']}"
            except Exception as exc:  # botocore raises many types; all mean "cannot list"
                raise ModelLoadError(f"cannot list models under {self.s3_prefix}: {exc}") from exc
            self._s3_cache = (time.monotonic(), entries)
            return entries

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
        if not MODEL_ID.fullmatch(model_id):
            raise InvalidInput(f"invalid model id {model_id!r}", param="model")
        entry = self.entries().get(model_id)
        if entry is None:
            raise UnknownModel(f"unknown model {model_id!r}", param="model")
        return entry
