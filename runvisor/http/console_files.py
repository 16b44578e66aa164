"""The operator console: a page and its static files, kept inside the package (console/).

Served without a token: the files hold no data, and every API call the page makes sends the
token itself (`Authorization: Bearer`, README "Operator console"). Each answer carries a strict
Content-Security-Policy: scripts, styles and images from this origin only, no inline script or
style, no form submission, no framing. Output a run prints is put into the page as text nodes,
so even a line of HTML can only ever be shown, never run.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

from runvisor.errors import NotFound

_DIR = resources.files(__package__ or "runvisor.http") / "console"
PAGE = "index.html"
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The files served at /console/{file} (the page itself is served at /).
FILES: tuple[str, ...] = tuple(
    sorted(
        entry.name
        for entry in _DIR.iterdir()
        if entry.is_file() and entry.name != PAGE and entry.name[entry.name.rfind(".") :] in _TYPES
    )
)

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        # A form is never submitted by the browser: were the script not to run, the sign-in
        # form could otherwise put the token in a URL.
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded node serves its own console
}


@functools.cache
def _read(name: str) -> bytes:
    return (_DIR / name).read_bytes()


def _answer(name: str) -> web.Response:
    suffix = name[name.rfind(".") :]
    charset = "utf-8" if _TYPES[suffix].startswith("text/") else None
    return web.Response(
        body=_read(name),
        content_type=_TYPES[suffix],
        charset=charset,
        headers=SECURITY_HEADERS,
    )


async def page(_request: web.Request) -> web.Response:
    return _answer(PAGE)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in FILES:  # only the listed files: nothing of the request reaches a path
        raise NotFound(f"the console has no file {name!r}")
    return _answer(name)
