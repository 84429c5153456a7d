"""GET / and /static/*: the try-on page, plain files from app/static/ (no build step, no framework).

The page talks to the public API only (jobs, their events stream, /health), so it is open without a
key: it asks for one when the API answers 401, as any client would.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PATH = "/static"
# Nothing is fetched from another host: the browser enforces it. Results are shown from blob: URLs
# (fetched with the key header, which an <img src> cannot send).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    """The page; revalidated on each visit so an upgraded server never runs a stale script."""
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


def static_files() -> StaticFiles:
    """app.js and style.css (with ETag and Last-Modified, so revisits cost a 304)."""
    return StaticFiles(directory=STATIC_DIR)
