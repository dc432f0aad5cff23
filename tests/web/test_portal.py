"""Portal pages, static files, security headers, DELETE and the OpenAPI document."""

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
from web.portal import CSP

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def store(data_dir: Path) -> Iterator[CallStore]:
    s = CallStore(data_dir).open()
    yield s
    s.close()


@pytest.fixture
async def client(store: CallStore, data_dir: Path) -> AsyncIterator[Client]:
    cfg = Config(data_dir=str(data_dir))
    async with TestClient(TestServer(make_app(cfg, Services(store=store)))) as c:
        yield c


def finished_call(store: CallStore, data_dir: Path) -> tuple[str, list[Path]]:
    cid = str(uuid.uuid4())
    store.call_started(cid, "ivr", 8000, None, time.time() - 60)
    store.call_ended(cid, time.time(), "hangup", 10, 10)
    files = []
    for fmt, folder, suffix in (("wav", "recordings", ".wav"), ("mp3", "archive", ".mp3"),
                                ("peaks", "peaks", ".json")):
        path = data_dir / folder / f"{cid}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
        store.set_recording(cid, fmt, path, 100, 1.0)
        files.append(path)
    store.flush()
    return cid, files


def assert_security_headers(headers: object) -> None:
    h = dict(headers)  # type: ignore[call-overload]
    assert h["Content-Security-Policy"] == CSP
    assert "script-src 'self' 'wasm-unsafe-eval'" in CSP and "unsafe-inline" not in CSP
    assert "worker-src 'self' blob:" in CSP
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["X-Frame-Options"] == "DENY"
    assert "Access-Control-Allow-Origin" not in h


@pytest.mark.parametrize("path", ["/", "/upload", "/login",
                                  "/calls/7b0c6a3e-5d7e-4e1e-9a55-0c1f0f7e4a11"])
async def test_pages_are_html_with_security_headers(client: Client, path: str) -> None:
    r = await client.get(path, headers={"Origin": "https://evil.example"})
    assert r.status == 200 and r.content_type == "text/html"
    body = await r.text()
    assert "<script type=\"module\"" in body
    assert "<script>" not in body and " style=" not in body  # nothing inline for the CSP
    assert_security_headers(r.headers)


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/api/calls", "/nope",
                                  "/api/calls/not-a-uuid", "/static/js/list.mjs"])
async def test_every_response_has_security_headers(client: Client, path: str) -> None:
    r = await client.get(path)
    assert_security_headers(r.headers)


async def test_static_files_types_and_traversal(client: Client) -> None:
    r = await client.get("/static/js/validator.worker.mjs")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
    r = await client.get("/static/css/portal.css")
    assert r.status == 200 and r.content_type == "text/css"
    for bad in ["/static/../app.py", "/static/%2e%2e/app.py", "/static/js/%2e%2e/%2e%2e/api.py",
                "/static/..%2fapi.py", "/static/.hidden", "/static/js/", "/static/index.htm",
                "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/js/../../files.py"]:
        r = await client.get(bad)
        assert r.status == 404, bad


@pytest.mark.parametrize("bad", ["..%2F..%2Fetc%2Fpasswd", "not-a-uuid", "1234",
                                 "7b0c6a3e-5d7e-4e1e-9a55-0c1f0f7e4a1", "%00"])
async def test_ids_are_validated(client: Client, bad: str) -> None:
    for path in (f"/calls/{bad}", f"/api/calls/{bad}", f"/api/calls/{bad}/recording.mp3",
                 f"/api/calls/{bad}/peaks.json"):
        r = await client.get(path)
        assert r.status == 404, path
    r = await client.delete(f"/api/calls/{bad}")
    assert r.status == 404


async def test_delete_removes_files_rows_and_audits(
    client: Client, store: CallStore, data_dir: Path
) -> None:
    cid, files = finished_call(store, data_dir)
    r = await client.delete(f"/api/calls/{cid}")
    assert r.status == 200
    assert await r.json() == {"uuid": cid, "deleted": True, "files": 3}
    assert not any(p.exists() for p in files)
    assert (await client.get(f"/api/calls/{cid}")).status == 404
    store.flush()
    audit = store.audit_log(call_uuid=cid)
    assert audit and audit[0].action == "delete_call"
    assert (await client.delete(f"/api/calls/{cid}")).status == 404


async def test_delete_never_touches_files_outside_the_data_dir(
    client: Client, store: CallStore, data_dir: Path, tmp_path: Path
) -> None:
    cid, _files = finished_call(store, data_dir)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    store.set_recording(cid, "m4a", data_dir / ".." / "precious.txt", 7, None)
    link = data_dir / "archive" / "link.m4a"
    link.symlink_to(outside)
    store.set_recording(cid, "mp3", link, 7, None)  # a symlink pointing out of the dir
    store.flush()
    r = await client.delete(f"/api/calls/{cid}")
    assert r.status == 200
    assert outside.read_text() == "keep me"
    store.flush()
    assert "precious" in store.audit_log(call_uuid=cid)[0].detail


async def test_delete_refuses_a_live_call(client: Client, store: CallStore) -> None:
    cid = str(uuid.uuid4())
    store.call_started(cid, "ivr", 8000, None, time.time())
    store.flush()
    r = await client.delete(f"/api/calls/{cid}")
    assert r.status == 409
    assert (await client.get(f"/api/calls/{cid}")).status == 200


async def test_openapi_describes_every_route(client: Client) -> None:
    r = await client.get("/api/openapi.json")
    assert r.status == 200
    spec = await r.json()
    assert spec["openapi"].startswith("3.1")
    app = client.server.app
    assert app is not None
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter", "")
        path = path.replace("{path:.+}", "{path}")
        if "{fmt}" in path:
            paths = [path.replace("{fmt}", f) for f in ("wav", "m4a", "mp3")]
        else:
            paths = [path]
        for p in paths:
            assert p in spec["paths"], p
            assert route.method.lower() in spec["paths"][p], (p, route.method)


async def test_no_cors(client: Client) -> None:
    r = await client.options("/api/calls", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client.get("/api/calls", headers={"Origin": "https://evil.example"})
    assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
