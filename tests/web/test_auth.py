"""Auth: open on loopback, token (Bearer or login cookie) everywhere else."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from audiosocket.config import Config
from audiosocket.root.app import Services
from helpers.store.db import CallStore
from web.app import make_app
from web.auth import COOKIE_NAME, SESSION_TTL_S, AuthPolicy, is_loopback, safe_next

TOKEN = "s3cret-token-for-tests"
Client = TestClient[web.Request, web.Application]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CallStore]:
    s = CallStore(tmp_path).open()
    yield s
    s.close()


async def _client(store: CallStore, tmp_path: Path, host: str, token: str) -> Client:
    cfg = Config(data_dir=str(tmp_path), host=host)
    cfg.web.token = token
    return TestClient(TestServer(make_app(cfg, Services(store=store))))


@pytest.fixture
async def remote(store: CallStore, tmp_path: Path) -> AsyncIterator[Client]:
    """The app as configured for a non-loopback bind (the test still talks over loopback)."""
    async with await _client(store, tmp_path, "0.0.0.0", TOKEN) as c:
        yield c


@pytest.fixture
async def local(store: CallStore, tmp_path: Path) -> AsyncIterator[Client]:
    async with await _client(store, tmp_path, "127.0.0.1", "") as c:
        yield c


@pytest.mark.parametrize("host,expected", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
    ("example.com", False),
])
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_session_cookie_signing() -> None:
    p = AuthPolicy(token=TOKEN, required=True)
    now = time.time()
    cookie = p.new_session(now)
    assert p.session_ok(cookie, now)
    assert not p.session_ok(cookie, now + SESSION_TTL_S + 1)  # expired
    assert not AuthPolicy(token="other", required=True).session_ok(cookie, now)
    issued, sid, mac = cookie.split(".")
    assert not p.session_ok(f"{int(issued) + 1}.{sid}.{mac}", now)
    assert not p.session_ok(f"{issued}.{'0' * 32}.{mac}", now)  # another session's id
    assert not p.session_ok(f"{issued}.{mac}", now)  # the old two-part form
    assert not p.session_ok("garbage", now) and not p.session_ok("x.y", now)
    assert not AuthPolicy(token="", required=True).token_ok("")


@pytest.mark.parametrize("value,expected", [
    ("/calls/x?y=1", "/calls/x?y=1"), ("//evil.example/", "/"), ("https://evil.example", "/"),
    ("/\\evil.example", "/"), ("", "/"), (None, "/"), ("javascript:alert(1)", "/"),
])
def test_safe_next(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


async def test_loopback_is_open_delete_included(local: Client, store: CallStore) -> None:
    for path in ("/", "/upload", "/api/calls", "/api/openapi.json", "/healthz"):
        assert (await local.get(path)).status == 200, path
    cid = str(uuid.uuid4())
    store.call_started(cid, "echo", 8000, None, time.time() - 5)
    store.call_ended(cid, time.time(), "hangup", 0, 0)
    store.flush()
    assert (await local.delete(f"/api/calls/{cid}")).status == 200


async def test_remote_requires_token(remote: Client) -> None:
    for path in ("/healthz", "/metrics", "/login", "/static/css/portal.css"):
        assert (await remote.get(path)).status == 200, path
    r = await remote.get("/api/calls")
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await r.json())["error"] == "unauthorized"
    for path in ("/api/calls/7b0c6a3e-5d7e-4e1e-9a55-0c1f0f7e4a11/recording.mp3",
                 "/api/openapi.json", "/api/uploads"):
        assert (await remote.get(path)).status == 401, path
    assert (await remote.post("/api/uploads", data=b"x")).status == 401
    assert (await remote.delete("/api/calls/7b0c6a3e-5d7e-4e1e-9a55-0c1f0f7e4a11")).status == 401
    r = await remote.get("/calls/7b0c6a3e-5d7e-4e1e-9a55-0c1f0f7e4a11?x=1",
                         allow_redirects=False)
    assert r.status == 303
    from urllib.parse import parse_qs, urlsplit

    loc = urlsplit(r.headers["Location"])
    assert loc.path == "/login"
    assert parse_qs(loc.query)["next"] == ["/calls/7b0c6a3e-5d7e-4e1e-9a55-0c1f0f7e4a11?x=1"]
    for bad in ("Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "):
        r = await remote.get("/api/calls", headers={"Authorization": bad})
        assert r.status == 401, bad
    r = await remote.get("/api/calls", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200
    r = await remote.get("/api/calls", headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status == 200


async def test_login_sets_a_strict_httponly_cookie(remote: Client) -> None:
    r = await remote.post("/login", data={"token": "wrong", "next": "/upload"},
                          allow_redirects=False)
    assert r.status == 303 and "error=1" in r.headers["Location"]
    assert COOKIE_NAME not in r.cookies
    r = await remote.post("/login", data={"token": TOKEN, "next": "//evil.example/"},
                          allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/"
    raw = r.headers["Set-Cookie"]
    assert "HttpOnly" in raw and "SameSite=Strict" in raw and "Path=/" in raw
    # The client's jar now holds the cookie: pages and API open up.
    assert (await remote.get("/api/calls")).status == 200
    assert (await remote.get("/", allow_redirects=False)).status == 200
    # A cookie-authenticated write from another origin is refused (CSRF belt and braces).
    r = await remote.delete("/api/calls/7b0c6a3e-5d7e-4e1e-9a55-0c1f0f7e4a11",
                            headers={"Origin": "https://evil.example"})
    assert r.status == 403
    r = await remote.delete("/api/calls/7b0c6a3e-5d7e-4e1e-9a55-0c1f0f7e4a11",
                            headers={"Origin": str(remote.make_url("")).rstrip("/")})
    assert r.status == 404  # allowed through auth; the call does not exist
    r = await remote.post("/logout", allow_redirects=False)
    assert r.status == 303
    remote.session.cookie_jar.clear()
    assert (await remote.get("/api/calls")).status == 401


async def test_forged_cookie_is_refused(remote: Client) -> None:
    forged = AuthPolicy(token="not-the-token", required=True).new_session()
    r = await remote.get("/api/calls", cookies={COOKIE_NAME: forged})
    assert r.status == 401
