"""Secrets and locations out of logs and answers (issue 13): database URLs, checkpoint
locations, paths in error texts."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_SECRET_QUERY_KEYS = ("password", "secret", "token", "signature", "credential", "key")
# A URI with a scheme (s3://, https://, gs://, file://…), or an absolute path of two or more
# parts; what ends it: whitespace, quotes, brackets, a comma/semicolon before a space.
_LOCATION = re.compile(
    r"""(?:\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'"<>()\[\]]+)|(?:(?<![\w.:/])/(?:[^\s'"<>()\[\]/]+/)+[^\s'"<>()\[\]/]+)"""
)


def safe_db_url(url: str) -> str:
    """The job store URL for logs: the password (and any password-like query parameter)
    masked, e.g. ``postgresql://meshline:***@db:5432/jobs``."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 — unparsable: show nothing that could hold a secret
        return "(unparsable database URL)"
    query = {
        k: ("***" if any(word in k.lower() for word in _SECRET_QUERY_KEYS) else v)
        for k, v in parsed.query.items()
    }
    return parsed.set(query=query).render_as_string(hide_password=True)


def safe_label(location: str) -> str:
    """What users may see of a checkpoint (or any file) location: its file name, without
    scheme, bucket, host, credentials, directories or query (``s3://b/runs/7/best.pt?X-Amz-…``
    → ``best.pt``); "checkpoint" when it has no usable name."""
    text = str(location).strip()
    # A path without a scheme (urllib3's "url: /bucket/key.pt?X-Amz-Signature=…") has its query
    # and fragment cut as well as a URL's.
    path = urlsplit(text).path if "://" in text else re.split(r"[?#]", text, maxsplit=1)[0]
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name if name and "@" not in name and ":" not in name else "checkpoint"


def redact_locations(text: str) -> str:
    """``text`` with every URI and absolute path replaced by its ``safe_label``: stage errors
    (a checkpoint that did not load…) reach users; the full text stays in the server log."""
    return _LOCATION.sub(_label_match, text)


def _label_match(match: re.Match[str]) -> str:
    found = match.group(0)
    location = found.rstrip(":;,.")  # punctuation of the sentence, not of the location
    return safe_label(location) + found[len(location) :]
