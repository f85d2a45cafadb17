"""GET /studio: meshline Studio, a page that drives the public API (serve_app/static/studio/:
one plain JS module per view, no build step), and the files it loads.

The page and its files hold no data, so they are public (serve_app/auth.py); every API call the
page makes carries the key as an ``Authorization: Bearer`` header. three.js is not in git: the
install step (``make install``, the Dockerfile) unpacks the pinned npm tarball into
``static/studio/vendor/three/`` (git-ignored), and it is served from there: no CDN, nothing
fetched at run time.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from serve_app.http.errors import ApiError

router = APIRouter(tags=["studio"])

MEDIA_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# no-store: the files are small, and a stale copy after an upgrade would talk to a newer API.
NO_STORE = {"Cache-Control": "no-store"}


def studio_root() -> Path:
    return Path(str(resources.files("serve_app").joinpath("static/studio")))


@cache
def _index() -> str:
    return (studio_root() / "index.html").read_text(encoding="utf-8")


@router.get("/studio", response_class=HTMLResponse, include_in_schema=False)
async def studio() -> HTMLResponse:
    return HTMLResponse(_index(), headers=NO_STORE)


@router.get("/studio/{path:path}", include_in_schema=False)
async def studio_file(path: str) -> FileResponse:
    """A file under static/studio/ (its modules, the stylesheet, the unpacked three.js):
    anything that resolves outside that folder, or is not a known kind of file, is a 404."""
    if not path:  # /studio/ → /studio (the page's relative URLs are written for that)
        return RedirectResponse("../studio", status_code=307)  # type: ignore[return-value]
    root = studio_root().resolve()
    try:
        target = (root / path).resolve()
        found = target.is_relative_to(root) and target.suffix in MEDIA_TYPES and target.is_file()
    except (OSError, ValueError):  # a NUL byte (ValueError), a name too long for the OS (OSError)
        found = False
    if not found:
        raise ApiError(404, f"no studio file {path!r}", "not_found", "path")
    return FileResponse(target, media_type=MEDIA_TYPES[target.suffix], headers=NO_STORE)
