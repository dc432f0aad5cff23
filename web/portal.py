"""The portal: page routes, static files, auth and the security headers on every response.

Pages are plain HTML + CSS + ES modules from ``web/static`` (no build step). The data comes
from the JSON API, so the HTML itself is the same for every call and user.

Security headers are added in ``on_response_prepare``, which runs for *every* response,
including errors raised by aiohttp itself (404, 405, 413) and streamed file responses.
No ``Access-Control-Allow-Origin`` is ever sent: CORS stays off, so other sites' scripts
cannot read the API even when a browser would send credentials.
"""

from __future__ import annotations

import uuid as uuid_mod
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from web.auth import AUTH_KEY, AuthPolicy, auth_middleware, setup_login
from web.files import serve_file

__all__ = ["CSP", "SECURITY_HEADERS", "STATIC_DIR", "setup_portal", "static_content_type"]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

#: 'wasm-unsafe-eval' lets ONNX Runtime Web compile its WASM; nothing else is relaxed (no
#: inline script or style, no eval). blob: workers are allowed because some WASM runtimes
#: start their helpers that way; our own worker is a same-origin module.
CSP: Final = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
    "style-src 'self'; img-src 'self' data:; media-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

_STATIC_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming insists on it
    ".onnx": "application/octet-stream",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}


def static_content_type(path: Path) -> str | None:
    """Content-Type for a static file, or None when we do not serve that kind of file."""
    return _STATIC_TYPES.get(path.suffix.lower())


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # CORS off: make sure no handler ever lets one through.
    response.headers.popall(hdrs.ACCESS_CONTROL_ALLOW_ORIGIN, None)


def _resolve_static(root: Path, rel: str) -> Path | None:
    """The file under ``root`` that ``rel`` names, or None (traversal, hidden, unknown kind)."""
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        return None
    if "\x00" in rel:  # /static/%00: the OS refuses such a name (ValueError, a 500)
        return None
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError):  # a name too long, a symlink loop: not a file we serve
        return None
    if not path.is_relative_to(root) or static_content_type(path) is None:
        return None
    return path


def _page(root: Path, name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_file(request, root / name, "text/html; charset=utf-8")

    handler.__doc__ = f"The {name} page."
    return handler




def setup_portal(
    app: web.Application, *, bind: str = "127.0.0.1", token: str = "",
    static_dir: Path = STATIC_DIR, secure_cookies: bool = False,
) -> None:
    """Install auth, security headers, the pages and ``/static/``; call before adding routes
    is not required (middlewares apply to every route of the app)."""
    app[AUTH_KEY] = AuthPolicy.from_config(bind, token, secure_cookies)
    app.middlewares.append(auth_middleware)
    app.on_response_prepare.append(_security_headers)
    root = static_dir.resolve()

    async def static(request: web.Request) -> web.StreamResponse:
        path = _resolve_static(root, request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound()
        ctype = static_content_type(path)
        assert ctype is not None  # _resolve_static checked it
        return await serve_file(request, path, ctype)

    call_page = _page(root, "call.html")

    async def call(request: web.Request) -> web.StreamResponse:
        # The id is checked here so a bad one is a plain 404 (the page itself is generic).
        try:
            uuid_mod.UUID(request.match_info["uuid"])
        except ValueError:
            raise web.HTTPNotFound(text="no such call") from None
        return await call_page(request)

    app.router.add_get("/", _page(root, "index.html"))
    app.router.add_get("/upload", _page(root, "upload.html"))
    app.router.add_get("/calls/{uuid}", call)
    app.router.add_get("/static/{path:.+}", static)
    setup_login(app, static_dir)
