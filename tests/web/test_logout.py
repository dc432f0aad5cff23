"""Logout revokes the session server-side, on aiohttp and the range fast path; Secure cookies."""

from __future__ import annotations

import os
import time
import uuid as uuid_mod
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import web.auth as auth_mod
from audiosocket.config import Config, WebConfig
from audiosocket.root.app import Services
from helpers.store.db import CallStore
from tests.web.test_fastpath import exchange, fast_count, get, handoffs
from web.app import make_app, start_http
from web.auth import COOKIE_NAME, AuthPolicy

TOKEN = "s3cret-token-for-tests"


class Portal:
    def __init__(self, port: int, runner: Any) -> None:
        self.port, self.runner = port, runner
        self.base = f"http://127.0.0.1:{port}"


async def _start(store: CallStore, data_dir: Path, **web: Any) -> Portal:
    import socket

    cfg = Config(data_dir=str(data_dir), host="0.0.0.0", web=WebConfig(token=TOKEN, **web))
    app = make_app(cfg, Services(store=store))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Portal(port, await start_http(app, "127.0.0.1", port))


@pytest.fixture
async def recording(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    store = CallStore(tmp_path / "calls.db").open()
    cid = str(uuid_mod.uuid4())
    (tmp_path / "archive").mkdir()
    mp3 = tmp_path / "archive" / f"{cid}.mp3"
    mp3.write_bytes(os.urandom(1000))
    store.call_started(cid, "ivr", 8000, "127.0.0.1:5000", time.time() - 60)
    store.call_ended(cid, time.time(), "remote_closed", 100, 100)
    store.set_recording(cid, "mp3", mp3, 1000, 1.0)
    store.flush()
    yield {"store": store, "tmp": tmp_path, "path": f"/api/calls/{cid}/recording.mp3"}
    store.close()


async def _login(http: aiohttp.ClientSession, base: str) -> tuple[str, str]:
    """(cookie value, raw Set-Cookie header) from a real POST /login."""
    async with http.post(f"{base}/login", data={"token": TOKEN, "next": "/"},
                         allow_redirects=False) as r:
        assert r.status == 303
        raw = r.headers["Set-Cookie"]
    jar: SimpleCookie = SimpleCookie()
    jar.load(raw)
    return jar[COOKIE_NAME].value, raw


async def test_logout_revokes_the_cookie_on_api_and_fast_path(
        recording: dict[str, Any]) -> None:
    portal = await _start(recording["store"], recording["tmp"])
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            cookie, _ = await _login(http, portal.base)
            hdr = {"Cookie": f"{COOKIE_NAME}={cookie}"}
            async with http.get(f"{portal.base}/api/calls", headers=hdr) as r:
                assert r.status == 200
            before = fast_count("206")
            [(status, _, _)] = await exchange(
                portal.port, get(recording["path"], "Range: bytes=0-9", f"Cookie: {hdr['Cookie']}"))
            assert status == 206 and fast_count("206") == before + 1  # the fast path took it
            # A second session, to show logout ends only its own.
            other, _ = await _login(http, portal.base)

            async with http.post(f"{portal.base}/logout", headers=hdr,
                                 allow_redirects=False) as r:
                assert r.status == 303
            # The old cookie, kept by someone who copied it, is dead everywhere.
            async with http.get(f"{portal.base}/api/calls", headers=hdr) as r:
                assert r.status == 401
            refused = handoffs("auth")
            [(status, _, _)] = await exchange(
                portal.port, get(recording["path"], "Range: bytes=0-9", f"Cookie: {hdr['Cookie']}"))
            assert status == 401
            assert handoffs("auth") == refused + 1  # refused by the fast path's own check
            async with http.get(f"{portal.base}/api/calls",
                                headers={"Cookie": f"{COOKIE_NAME}={other}"}) as r:
                assert r.status == 200
    finally:
        await portal.runner.cleanup()


@pytest.mark.parametrize("secure", [True, False])
async def test_secure_cookie_switch(recording: dict[str, Any], secure: bool) -> None:
    portal = await _start(recording["store"], recording["tmp"], secure_cookies=secure)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            cookie, raw = await _login(http, portal.base)
            assert ("Secure" in raw) is secure  # plain HTTP here: only the switch sets it
            assert "HttpOnly" in raw and "SameSite=Strict" in raw
            async with http.post(f"{portal.base}/logout", allow_redirects=False,
                                 headers={"Cookie": f"{COOKIE_NAME}={cookie}"}) as r:
                assert r.status == 303
                assert ("Secure" in r.headers["Set-Cookie"]) is secure
    finally:
        await portal.runner.cleanup()


def test_revocation_memory_is_bounded_and_fails_closed() -> None:
    p = AuthPolicy(token=TOKEN, required=True)
    now = time.time()
    keep = p.new_session(now)
    assert p.revoke(keep, now) and not p.session_ok(keep, now)
    assert not p.revoke("garbage", now)  # only valid sessions take room
    for _ in range(auth_mod.MAX_REVOKED):
        assert p.revoke(p.new_session(now), now)
    assert len(p._revoked.expires) <= auth_mod.MAX_REVOKED
    # Past the bound, every session issued so far is refused: none is forgotten.
    assert not p.session_ok(keep, now)
    assert p.session_ok(p.new_session(now + 1), now + 1)


def test_a_new_process_does_not_honour_old_cookies() -> None:
    """Revocations live in memory, so a restart must not bring a logged-out cookie back."""
    before = AuthPolicy(token=TOKEN, required=True)
    cookie = before.new_session()
    assert before.session_ok(cookie)
    assert not AuthPolicy(token=TOKEN, required=True).session_ok(cookie)
