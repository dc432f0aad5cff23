"""Shared fixtures: a real AudioSocket server on a free port, with a chosen app."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from audiosocket.config import load_config
from audiosocket.root.app import AppContext, Services, session_factory
from audiosocket.root.services import close_services, provide
from audiosocket.server import AudioSocketServer
from helpers.ai import ModelCache
from sessions.base import Session
from tests.engines.postgres import pg_cluster, pg_url, store_target  # noqa: F401 (fixtures)

#: Real engines (nats-server, ...) as fixtures any test can use.
pytest_plugins = ("tests.engines.nats",)

StartServer = Callable[..., Any]
#: One model cache for the test process, as a server has one for its own: each test's
#: server gets fresh caps and writer but loads Whisper, Piper and Silero only once.
_MODELS = ModelCache()


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """``await start_server(AppClass, **config)`` -> a running server on 127.0.0.1:port."""
    servers: list[AudioSocketServer] = []

    async def start(
        app: type[Session], services: Services | None = None, **overrides: Any
    ) -> AudioSocketServer:
        overrides.setdefault("port", 1)  # replaced by 0 below; validate() wants a TCP port
        overrides.setdefault("data_dir", str(tmp_path / "data"))
        overrides.setdefault("http_port", 0)
        cfg = load_config(overrides=overrides, environ={})
        cfg.port = 0
        if services is None:
            services = dataclasses.replace(Services.for_config(cfg), models=_MODELS)
        ctx = AppContext(cfg, services=services)
        # As the composition root does: build what the app declares, then prepare it.
        await provide(ctx, app.needs)
        await app.prepare(ctx)
        server = AudioSocketServer(cfg, session_factory(app, ctx), app_name=app.name)
        server.observers.extend(ctx.observers)
        server.ctx = ctx  # type: ignore[attr-defined]
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown(grace=0.5)
        await close_services(server.ctx)  # type: ignore[attr-defined]
    await asyncio.sleep(0)


#: Tests that take minutes of real time: run first, so that with ``-n 2`` (scripts/test.sh)
#: one worker does them while the other works through the rest, instead of the suite
#: ending with one worker idle and the other in a two-minute soak.
_LONG_FIRST = ("test_soak.py", "test_shutdown.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the long tests first (a stable sort keeps everything else in its order)."""
    items.sort(key=lambda item: 0 if item.path.name in _LONG_FIRST else 1)
