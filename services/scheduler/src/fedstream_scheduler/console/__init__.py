"""The web console's static assets (HTML, ES modules, CSS, an SVG icon), shipped as package data
and served by the admin API under /console/ (``fedstream_scheduler.api.console``).

No build step: the files here are what the browser runs. Everything the console shows comes
from the admin API with the operator's bearer token, and is put on the page as text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

# What each kind of asset is served as.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The console's pages load only from the scheduler itself: no inline script or style, no other
# origin (so no CDN, no external font), and never inside another site's frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (an ETag makes that cheap), so an upgraded scheduler's console is
    # what the browser runs.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    media_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every asset of the console by file name, read once from the package."""
    found: dict[str, Asset] = {}
    for entry in resources.files(__name__).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            found[entry.name] = Asset(entry.name, body, MEDIA_TYPES[suffix], etag)
    return found
