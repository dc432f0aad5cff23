"""Hostile static paths (a NUL, a name too long) are a 404, never a 500 with a traceback."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from audiosocket.config import Config
from audiosocket.root.app import Services
from helpers.store.db import CallStore
from tests.web.test_fastpath import exchange, get
from web.app import make_app, start_http
from web.files import serve_file

BAD = ["/static/%00", "/static/js/%00.mjs", "/static/a%00b.js", "/static/css/portal.css%00",
       "/static/" + "a" * 5000 + ".js", "/static/" + "/".join(["d" * 250] * 20) + ".css"]


@pytest.mark.parametrize("fast", [True, False])
async def test_hostile_static_paths_are_404(tmp_path: Path, fast: bool,
                                            caplog: pytest.LogCaptureFixture) -> None:
    store = CallStore(tmp_path / "calls.db").open()
    cfg = Config(data_dir=str(tmp_path))
    cfg.web.fast_ranges = fast
    app = make_app(cfg, Services(store=store))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = await start_http(app, "127.0.0.1", port)
    try:
        with caplog.at_level(logging.ERROR):
            for path in BAD:
                [(status, _, _)] = await exchange(port, get(path, "Connection: close"))
                assert status == 404, path
            [(status, _, _)] = await exchange(port, get("/static/css/portal.css"))
            assert status == 200
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await runner.cleanup()
        store.close()


async def test_serve_file_with_an_impossible_name_is_404(tmp_path: Path) -> None:
    from aiohttp.test_utils import make_mocked_request

    req = make_mocked_request("GET", "/x")
    for path in (tmp_path / "a\x00b.wav", tmp_path / ("n" * 5000 + ".wav")):
        resp = await serve_file(req, path, "audio/wav")
        assert resp.status == 404
