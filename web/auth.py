"""Who may use the portal and the API.

Policy (see docs/PORTAL.md):

* Bound to loopback (``127.x``, ``localhost``, ``::1``): everything is open, DELETE included.
  Whoever can reach a loopback port already runs code on this host and could read
  ``calls.db`` directly, so a token would protect nothing.
* Any other bind: every route except ``/healthz``, ``/metrics``, ``/login`` and the static
  files needs the token, sent as ``Authorization: Bearer <token>`` (API clients) or held as
  a session cookie that ``POST /login`` sets (browsers). ``Config.validate`` already refuses
  to start on a non-loopback bind without a token.

The session cookie is ``<issued_at>.<session id>.<hex HMAC-SHA256>`` over both, keyed by the
token and a key made at process start. It is HttpOnly (scripts cannot read it),
SameSite=Strict (no cross-site request carries it, which is the CSRF defence for the
POST/DELETE routes, backed by an Origin check), ``Secure`` over TLS or when
``[web] secure_cookies`` says a TLS proxy is in front, and expires after
:data:`SESSION_TTL_S`. ``POST /logout`` revokes its session id server-side (the middleware
and the range fast path both check through :meth:`AuthPolicy.credentials`). Revocations live
in memory, so the key is per process: a restart ends every session instead of forgetting a
logout. Changing the token invalidates every session. All comparisons are constant-time
(:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlencode, urlsplit

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

__all__ = [
    "AUTH_KEY",
    "COOKIE_NAME",
    "OPEN_PATHS",
    "SESSION_TTL_S",
    "AuthPolicy",
    "auth_middleware",
    "is_loopback",
    "safe_next",
    "setup_login",
]

COOKIE_NAME: Final = "portal_session"
SESSION_TTL_S: Final = 12 * 3600
#: Revoked sessions remembered at once (each until it would have expired anyway); past
#: this, every session issued so far is refused instead (fail closed, everyone logs in again).
MAX_REVOKED: Final = 10_000
#: Routes that never need the token: probes, the login form, and the static files (the
#: pages' code and styles hold no call data; the data comes from the API).
OPEN_PATHS: Final = frozenset({"/healthz", "/metrics", "/login", "/favicon.ico"})
OPEN_PREFIXES: Final = ("/static/",)



def is_loopback(host: str) -> bool:
    """True for binds only this host can reach (``127.x``, ``localhost``, ``::1``)."""
    host = host.strip().strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


class _Revocations:
    """Session ids logged out before their expiry, and a floor for the overflow case."""

    def __init__(self) -> None:
        self.expires: dict[str, float] = {}  # session id -> when its cookie expires anyway
        self.not_after = -1  # sessions issued at or before this second are all refused

    def revoked(self, sid: str, issued: int) -> bool:
        return issued <= self.not_after or sid in self.expires

    def add(self, sid: str, issued: int, now: float) -> None:
        self.expires[sid] = issued + SESSION_TTL_S
        if len(self.expires) > MAX_REVOKED:
            for old in [k for k, exp in self.expires.items() if exp < now]:
                del self.expires[old]
        if len(self.expires) > MAX_REVOKED:
            self.not_after = int(now)
            self.expires.clear()


@dataclass(frozen=True)
class AuthPolicy:
    """The token (empty: no auth), whether it is required, and the sessions logged out."""

    token: str = ""
    required: bool = False
    #: Mark the cookie ``Secure`` even on plain HTTP (a TLS-terminating proxy in front).
    secure_cookies: bool = False
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False,
                        compare=False)
    _revoked: _Revocations = field(default_factory=_Revocations, repr=False, compare=False)

    @classmethod
    def from_config(cls, bind: str, token: str, secure_cookies: bool = False) -> AuthPolicy:
        """Open on loopback; token-protected otherwise."""
        return cls(token=token, required=not is_loopback(bind), secure_cookies=secure_cookies)

    # -- checks ------------------------------------------------------------------------

    def token_ok(self, candidate: str) -> bool:
        """Constant-time comparison with the configured token (never true for an empty one)."""
        if not self.token:
            return False
        return hmac.compare_digest(candidate.encode("utf-8"), self.token.encode("utf-8"))

    def _mac(self, issued: str, sid: str) -> str:
        return hmac.new(self.token.encode("utf-8") + self._key,
                        f"session:{issued}:{sid}".encode(), hashlib.sha256).hexdigest()

    def new_session(self, now: float | None = None) -> str:
        """A cookie value for a browser that just proved it knows the token."""
        issued = str(int(time.time() if now is None else now))
        sid = secrets.token_hex(16)
        return f"{issued}.{sid}.{self._mac(issued, sid)}"

    def _session(self, value: str, now: float | None) -> tuple[str, int] | None:
        """(session id, issued) of a cookie we issued and that is still valid, else None."""
        parts = value.split(".")
        if not self.token or len(parts) != 3:
            return None
        issued, sid, mac = parts
        if not issued.isdigit() or len(issued) > 12:
            return None
        age = (time.time() if now is None else now) - int(issued)
        if not -60 <= age <= SESSION_TTL_S:
            return None
        if not hmac.compare_digest(mac.encode("ascii", "replace"),
                                   self._mac(issued, sid).encode()):
            return None
        if self._revoked.revoked(sid, int(issued)):
            return None
        return sid, int(issued)

    def session_ok(self, value: str, now: float | None = None) -> bool:
        """A cookie we issued with the current token, not older than the TTL, not logged out."""
        return self._session(value, now) is not None

    def revoke(self, value: str, now: float | None = None) -> bool:
        """Log the session of cookie ``value`` out for good; False if it was not valid."""
        found = self._session(value, now)
        if found is None:
            return False
        self._revoked.add(*found, time.time() if now is None else now)
        return True

    def credentials(self, authorization: str, session_cookie: str | None) -> str:
        """How the request proves it knows the token: ``bearer``, ``cookie``, or ``""``.

        ``authorization`` is the Authorization header ('' if absent), ``session_cookie`` the
        value of the :data:`COOKIE_NAME` cookie. Shared by the middleware and the range
        fast path, which parses headers itself.
        """
        scheme, _, cred = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(cred.strip()):
            return "bearer"
        if session_cookie and self.session_ok(session_cookie):
            return "cookie"
        return ""

    def authorised(self, request: web.Request) -> tuple[bool, str]:
        """(allowed, how): ``open``, ``bearer`` or ``cookie``; ``("", False)`` when refused."""
        if not self.required:
            return True, "open"
        how = self.credentials(request.headers.get(hdrs.AUTHORIZATION, ""),
                               request.cookies.get(COOKIE_NAME))
        return bool(how), how


AUTH_KEY: Final[web.AppKey[AuthPolicy]] = web.AppKey("auth_policy", AuthPolicy)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _same_origin(request: web.Request) -> bool:
    """A cookie-authenticated write must come from our own pages (belt to SameSite's braces).

    Browsers send ``Origin`` on every POST/DELETE; a request without one is not from a
    browser form or fetch, so it is allowed (it carried the cookie only if a non-browser
    client copied it, which is equivalent to holding the token).
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc.lower() == request.host.lower()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse unauthenticated requests: 401 JSON for the API, a redirect to /login for pages."""
    policy: AuthPolicy = request.app[AUTH_KEY]
    if not policy.required or _is_open(request.path):
        return await handler(request)
    allowed, how = policy.authorised(request)
    if allowed and how == "cookie" and request.method not in ("GET", "HEAD", "OPTIONS"):
        if not _same_origin(request):
            return web.json_response(
                {"error": "forbidden", "detail": "cross-origin request refused"}, status=403
            )
    if allowed:
        return await handler(request)
    if request.path.startswith("/api/") or request.method not in ("GET", "HEAD"):
        return web.json_response(
            {"error": "unauthorized", "detail": "send Authorization: Bearer <token> or log in"},
            status=401,
            headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="audiosocket"'},
        )
    target = request.rel_url.path_qs
    raise web.HTTPSeeOther("/login?" + urlencode({"next": target}))


def safe_next(value: str | None) -> str:
    """A post-login redirect target confined to this site (no ``//host`` or scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def setup_login(app: web.Application, static_dir: Path) -> None:
    """``GET /login`` (the form), ``POST /login`` (sets the cookie), ``POST /logout``."""
    page = static_dir / "login.html"

    async def login_form(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(page, headers={hdrs.CACHE_CONTROL: "no-store"})

    async def login_submit(request: web.Request) -> web.StreamResponse:
        policy: AuthPolicy = request.app[AUTH_KEY]
        form = await request.post()
        token = str(form.get("token", ""))
        nxt = safe_next(str(form.get("next", "")) or None)
        if not policy.required:
            raise web.HTTPSeeOther(nxt)
        if not policy.token_ok(token):
            # Same page, an error flag the page's script shows; no detail about why.
            raise web.HTTPSeeOther("/login?" + urlencode({"next": nxt, "error": "1"}))
        resp = web.HTTPSeeOther(nxt)
        resp.set_cookie(
            COOKIE_NAME,
            policy.new_session(),
            max_age=SESSION_TTL_S,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure or policy.secure_cookies,
        )
        raise resp

    async def logout(request: web.Request) -> web.StreamResponse:
        policy: AuthPolicy = request.app[AUTH_KEY]
        # Deleting the browser's copy is not enough: a copied cookie would stay valid for
        # the rest of its 12 h. Revoke it here, for aiohttp and the fast path alike.
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            policy.revoke(cookie)
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Strict",
                        secure=request.secure or policy.secure_cookies)
        raise resp

    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
