"""API keys: who is calling, and what they may touch.

Keys are stored only as SHA-256 hashes (settings ``api_keys`` and/or the YAML/JSON file
``api_keys_file``). When none is configured, access is open (the embedded default, bound to
127.0.0.1). Otherwise every route but ``/healthz`` and the static admin page shell needs
``Authorization: Bearer <key>``: missing or unknown → 401, known but not allowed → 403.

A key's *scope* (default: its id) owns the jobs it submits; a non-admin key sees only its
scope's jobs (others' are a 404, so their existence does not leak). Admin keys see all.

Make a key:  ``python -m serve_app.auth new ci-bot [--admin]``  (prints the key once, and the
entry to store); hash an existing one: ``printf %s "$KEY" | python -m serve_app.auth hash``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fastapi import Request
from pydantic import BaseModel, Field, ValidationError, field_validator

KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ApiKeyEntry(BaseModel):
    """One stored key: its id, the SHA-256 of the key, and what it may do."""

    id: str = Field(description="Key id (shown in logs and recorded as job owner).")
    sha256: str = Field(description="Hex SHA-256 of the key; the key itself is never stored.")
    admin: bool = Field(False, description="Admin keys reload models, cancel any job, use /admin.")
    scope: str | None = Field(
        None,
        description="Owner name for the key's jobs; keys sharing a scope share jobs (default: id).",
    )

    @field_validator("id", "scope")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not KEY_ID.fullmatch(value):
            raise ValueError("must be 1-64 characters of A-Z a-z 0-9 _ . -")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 hex characters (the SHA-256 of the key, not the key)")
        return value


@dataclass(frozen=True)
class Principal:
    """The caller. ``key_id`` None means open access (no keys configured)."""

    key_id: str | None
    admin: bool
    scope: str | None = None

    @property
    def owner(self) -> str | None:
        """What jobs submitted by this caller record as their owner."""
        return self.scope or self.key_id

    @property
    def sees_everything(self) -> bool:
        return self.admin or self.key_id is None


OPEN = Principal(key_id=None, admin=True)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def can_access(principal: Principal, owner: str | None) -> bool:
    """May ``principal`` read/cancel/download a job or video recorded with ``owner``?"""
    return principal.sees_everything or (owner is not None and owner == principal.owner)


def current_principal(request: Request) -> Principal:
    """Set by the auth middleware for every request (OPEN when no keys are configured)."""
    return getattr(request.state, "principal", OPEN)


def parse_entries(data: Any, source: str) -> list[ApiKeyEntry]:
    """``{key_id: {sha256, admin, scope}}`` (optionally under ``keys:``) or a list of entries."""
    if isinstance(data, dict) and set(data) == {"keys"}:
        data = data["keys"]
    if isinstance(data, dict):
        data = [{"id": key_id, **(value or {})} for key_id, value in data.items()]
    if not isinstance(data, list):
        # ValueError, not TypeError: callers (and pydantic validators) treat it as bad config.
        raise ValueError(f"{source}: expected a mapping of key ids or a list of entries")  # noqa: TRY004
    try:
        return [ApiKeyEntry.model_validate(item) for item in data]
    except ValidationError as exc:
        raise ValueError(f"{source}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


class KeyRing:
    """The configured keys; the file is re-read when it changes (rotate without a restart)."""

    def __init__(self, entries: list[ApiKeyEntry], path: Path | None = None) -> None:
        self._static = list(entries)
        self._path = path
        self._stamp: tuple[int, int, int, int] | None = None
        self._from_file: list[ApiKeyEntry] = []
        self._lock = threading.Lock()
        self._check_unique(self._static)
        self._reload()

    def _reload(self) -> None:
        if self._path is None:
            return
        stat = self._path.stat()  # a missing file is a startup error, not "open access"
        # Nanoseconds, the change time (which a restored mtime moves too) and the inode: a key
        # swapped for another of the same length is seen even if the mtime is set back.
        stamp = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        entries = parse_entries(yaml.safe_load(self._path.read_text()) or {}, str(self._path))
        self._check_unique(self._static + entries)
        self._from_file, self._stamp = entries, stamp

    @staticmethod
    def _check_unique(entries: list[ApiKeyEntry]) -> None:
        ids = [e.id for e in entries]
        if len(ids) != len(set(ids)):
            raise ValueError(
                f"duplicate API key ids: {sorted({i for i in ids if ids.count(i) > 1})}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self._static or self._path is not None)

    def entries(self) -> list[ApiKeyEntry]:
        with self._lock:
            try:
                self._reload()
            except (OSError, ValueError):
                pass  # keep the last good keys while the file is being rewritten
            return self._static + self._from_file

    def authenticate(self, key: str) -> Principal | None:
        presented = hash_key(key)
        found: ApiKeyEntry | None = None
        for entry in self.entries():  # no early exit: the time does not depend on which key
            if hmac.compare_digest(presented, entry.sha256):
                found = entry
        return Principal(found.id, found.admin, found.scope) if found else None


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# Label Studio sends an ML backend's credentials only as HTTP Basic auth: under this prefix the
# Basic password is read as the API key (the user name is ignored).
BASIC_AUTH_PREFIX = "/labelstudio/"


def presented_key(authorization: str | None, path: str) -> str | None:
    """The API key a request presents: ``Bearer <key>``, or for the Label Studio backend
    routes ``Basic base64(<any user>:<key>)``."""
    token = bearer_token(authorization)
    if token is not None or not path.startswith(BASIC_AUTH_PREFIX) or not authorization:
        return token
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or len(encoded) > 4096:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep and password else None


# Routes that need an admin key once the caller is known; everything else needs any key.
ADMIN_ROUTES = (
    ("POST", re.compile(r"^/v1/models/[^/]+/reload$")),
    ("*", re.compile(r"^/admin/api(/.*)?$")),
    ("*", re.compile(r"^/v1/admin(/.*)?$")),
)
# No key needed: the liveness probe, and the static shells of the admin page and of Studio
# (its page, modules and three.js: they hold no data; the page asks for the key and sends it
# as a Bearer header on its own API calls).
PUBLIC_ROUTES = (
    ("GET", re.compile(r"^/healthz$")),
    ("GET", re.compile(r"^/admin/?$")),
    ("GET", re.compile(r"^/studio(/[A-Za-z0-9._/-]*)?$")),
    # Label Studio registers <ML backend URL>/webhook without credentials; it reads nothing.
    ("POST", re.compile(r"^/labelstudio/webhook$")),
)


def _matches(rules: tuple[tuple[str, re.Pattern[str]], ...], method: str, path: str) -> bool:
    return any(
        (m == "*" or m == method or (m == "GET" and method == "HEAD")) and p.fullmatch(path)
        for m, p in rules
    )


def is_public(method: str, path: str) -> bool:
    return _matches(PUBLIC_ROUTES, method, path)


def needs_admin(method: str, path: str) -> bool:
    return _matches(ADMIN_ROUTES, method, path)


def _main(argv: list[str]) -> int:
    usage = (
        "usage: python -m serve_app.auth new KEY_ID [--admin] [--scope S] | hash  (key on stdin)"
    )
    if argv[:1] == ["hash"]:
        key = sys.stdin.read().strip()
        if not key:
            print(usage, file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    if len(argv) >= 2 and argv[0] == "new":
        key_id, admin = argv[1], "--admin" in argv
        scope = argv[argv.index("--scope") + 1] if "--scope" in argv[:-1] else None
        key = "ml_" + secrets.token_urlsafe(32)
        entry = ApiKeyEntry(id=key_id, sha256=hash_key(key), admin=admin, scope=scope)
        print(f"key (shown once, give it to the client): {key}", file=sys.stderr)
        stored = {entry.id: entry.model_dump(exclude={"id"}, exclude_none=True)}
        print(yaml.safe_dump(stored, sort_keys=False).rstrip())  # an entry for api_keys_file
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
