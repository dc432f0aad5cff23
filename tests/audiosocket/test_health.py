"""``/healthz`` from the call loop's point of view: the server's clock, its state, and the
HTTP answer a load balancer reads (asterisk/haproxy.cfg)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from audiosocket.caller import place_call
from audiosocket.server import HEALTH_MAX_LAG_S
from sessions.echo import EchoSession
from web.app import make_app


async def test_health_follows_the_clock_and_the_state(start_server: Any) -> None:
    server = await start_server(EchoSession)
    await asyncio.sleep(0.1)
    healthy, body = server.health()
    assert healthy and body["status"] == "ok" and body["calls"] == 0, body
    assert body["lag_ms"] < 500, body
    # The loop busy for longer than the limit: the next tick is overdue by that much.
    time.sleep(HEALTH_MAX_LAG_S + 0.3)  # noqa: ASYNC251 - the stall is the point
    healthy, body = server.health()
    assert not healthy and body["reason"] == "clock_lag", body
    assert body["lag_s"] > HEALTH_MAX_LAG_S, body
    # Ticks resume (resynced to the grid): healthy again.
    await asyncio.sleep(0.1)
    assert server.health()[0]
    assert server.clock.last_tick > 0 and server.clock.last_lateness < HEALTH_MAX_LAG_S


async def test_healthz_answers_503_with_the_reason_and_200_while_draining(
    start_server: Any,
) -> None:
    server = await start_server(EchoSession)
    client = TestClient(TestServer(make_app(None, health=server.health)))
    await client.start_server()
    try:
        resp = await client.get("/healthz")
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
        server.clock.stop()  # no ticks at all: no call hears anything
        resp = await client.get("/healthz")
        body = await resp.json()
        assert resp.status == 503 and body["reason"] == "clock_lag", body
        server.clock.start()
        await asyncio.sleep(0.05)
        assert (await client.get("/healthz")).status == 200
        # SIGTERM with a call up: the listener closes, /healthz stays 200 until it ends.
        call = asyncio.create_task(place_call(port=server.port, send_silence=True,
                                              linger=30, max_seconds=30))
        while not server.calls:  # noqa: ASYNC110 - polled: the server has no event
            await asyncio.sleep(0.02)
        port = server.port
        stopping = asyncio.create_task(server.shutdown(grace=1.0))
        await asyncio.sleep(0.2)
        try:
            await asyncio.open_connection("127.0.0.1", port)
            raise AssertionError("the AudioSocket port still accepts while draining")
        except ConnectionRefusedError:
            pass
        resp = await client.get("/healthz")
        body = await resp.json()
        assert resp.status == 200 and body == {**body, "status": "draining", "calls": 1}, body
        await stopping
        await call
        resp = await client.get("/healthz")
        assert resp.status == 503 and (await resp.json())["reason"] == "server_stopped"
    finally:
        await client.close()


async def test_without_a_probe_healthz_is_the_loop_answering() -> None:
    client = TestClient(TestServer(make_app(None)))
    await client.start_server()
    try:
        resp = await client.get("/healthz")
        assert resp.status == 200 and (await resp.json()) == {"status": "ok"}
    finally:
        await client.close()
