"""The live view (issue 16, point 5) end to end: a real AudioSocket server with the live hub,
real calls (``place_call``), real Whisper and Piper, the portal served with its production
limits over real HTTP, and the page in headless Chromium at a desktop and a phone width
(screenshots in ``tests/artifacts/``, gitignored)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from audiosocket.caller import CallResult, place_call
from audiosocket.config import Config
from audiosocket.live import LiveHub
from audiosocket.root.app import Services
from audiosocket.root.services import install_live
from helpers.store.db import CallStore
from sessions.echo import EchoSession
from sessions.ivr import IvrSession
from tests.helpers.speech_fixtures import silence, synth_speech
from tests.web.test_browser import browser  # noqa: F401 - the Chromium fixture
from tests.web.test_browser import pytestmark as BROWSER_MARKS
from tests.web.test_browser_edges import ARTIFACTS, WIDTHS
from web.app import make_app, start_http
from web.live import wav_stream_header

FLOW = """
name: live
start: menu
nodes:
  menu:
    menu:
      prompt: "Say sales."
      timeout: 8
      retries: 0
      no_input: bye
      no_match: bye
      choices:
        - {key: "1", words: ["sales", "sale"], goto: sales}
  sales: {say: "Sales.", hangup: sales}
  bye: {hangup: bye}
"""
#: For the page: after the answer the call waits in a menu, so it stays up a while.
HOLD = """
  hold:
    menu:
      prompt: "Press one to finish."
      timeout: 5
      retries: 0
      no_input: bye
      no_match: bye
      choices:
        - {key: "1", goto: bye}
"""
TOKEN = "live-view-test-token"


class Stack:
    """An AudioSocket server and the portal sharing one live hub."""

    def __init__(self, server: Any, hub: LiveHub, url: str, runner: web.AppRunner) -> None:
        self.server, self.hub, self.url, self.runner = server, hub, url, runner

    async def call(self, **kw: Any) -> CallResult:
        return await place_call("127.0.0.1", self.server.port, max_seconds=40, **kw)


async def start_stack(start_server: Any, tmp_path: Path, app: Any, *, listen_in: bool = True,
                      store: CallStore | None = None, **overrides: Any) -> Stack:
    server = await start_server(app, **overrides)
    hub = install_live(server.ctx)  # as `audiosocket serve` does, before any call
    hub.heartbeat_s = 0.5
    server.observers.append(hub)  # the fixture copied ctx.observers before the hub existed
    store = store or server.ctx.services.store
    cfg = Config(data_dir=str(tmp_path / "data"), host="127.0.0.1", http_port=1)
    cfg.web.listen_in = listen_in
    cfg.web.head_timeout_s = 1.0  # the streams below must outlive it
    http = make_app(cfg, Services(store=store, live=hub))
    runner = await start_http(http, "127.0.0.1", 0, cfg)
    host, port = runner.addresses[0][:2]
    return Stack(server, hub, f"http://{host}:{port}", runner)


@pytest.fixture
async def stacks() -> AsyncIterator[list[Stack]]:
    made: list[Stack] = []
    yield made
    for s in made:
        await s.runner.cleanup()


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) from a real SSE response; comments come as ("comment", text)."""
    kind, data = "message", ""
    while True:
        raw = await resp.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


def frames_of(pcm: bytes, size: int = 320) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm) - size + 1, size)]


def loud(frame: bytes) -> bool:
    return float(np.abs(np.frombuffer(frame, "<i2")).mean()) > 300


@pytest.mark.slow
async def test_events_and_listen_in_follow_a_real_ivr_call(
    start_server: Any, tmp_path: Path, stacks: list[Stack]
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "live.yaml").write_text(FLOW)
    flow: dict[str, Any] = {"ivr.flows_dir": str(flows), "ivr.flow": "live"}
    stack = await start_stack(start_server, tmp_path, IvrSession, **flow)
    stacks.append(stack)
    speech = synth_speech("Sales, please.")
    audio = silence(2.5) + speech + silence(1.0)
    events: list[tuple[str, Any, float]] = []
    heard = bytearray()
    async with aiohttp.ClientSession() as http:
        resp = await http.get(stack.url + "/api/live/events")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        stream = sse_events(resp)
        kind, snap = await anext(stream)
        assert kind == "snapshot" and snap["calls"] == [] and snap["listen_in"] is True
        caller = asyncio.create_task(stack.call(pcm=audio, send_silence=True, linger=20))

        async def listen(call_id: str) -> None:
            async with http.get(f"{stack.url}/api/calls/{call_id}/listen") as r:
                assert r.status == 200 and r.headers["Content-Type"] == "audio/wav"
                async for chunk in r.content.iter_any():
                    heard.extend(chunk)

        listener = None
        opened = time.monotonic()
        async with asyncio.timeout(60):
            async for kind, data in stream:
                events.append((kind, data, time.monotonic() - opened))
                if kind == "call_started":
                    listener = asyncio.create_task(listen(data["uuid"]))
                if kind == "call_ended":
                    break
        resp.close()
    result = await caller
    assert listener is not None
    await asyncio.wait_for(listener, 5)  # the audio stream ends with the call

    kinds = [k for k, _, _ in events if k != "comment"]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended"
    started = events[[k for k, _, _ in events].index("call_started")][1]
    assert started["uuid"] == result.uuid and started["app"] == "ivr"
    nodes = [d["node"] for k, d, _ in events if k == "node"]
    assert nodes == ["menu", "sales"]
    lines = [d for k, d, _ in events if k == "line"]
    assert lines and "sales" in lines[0]["text"].lower(), lines
    assert lines[0]["uuid"] == result.uuid
    # The line came while the call was up: before the node it led to, and before the end.
    order = [(k, d.get("node")) for k, d, _ in events if k in ("line", "node", "call_ended")]
    assert order.index(("line", None)) < order.index(("node", "sales"))
    assert events[-1][1]["end_reason"] == "app_hangup"
    # Heartbeats kept the stream alive past the 1 s head timeout, and it was not cut.
    assert any(k == "comment" and d == "ping" for k, d, _ in events)
    assert events[-1][2] > 2.0

    # Listen-in: a WAV stream of the mix, frame for frame. The caller's voiced frames are in
    # it byte for byte (the server was quiet while they spoke), and so is the server's
    # reply, which the caller received.
    assert bytes(heard[:44]) == wav_stream_header(8000)
    mixed = set(frames_of(bytes(heard[44:])))
    said = [f for f in frames_of(speech) if loud(f)]
    assert len(said) > 20
    found = sum(f in mixed for f in said)
    assert found >= 0.9 * len(said), (found, len(said))
    reply = [f for f in frames_of(bytes(result.received)) if loud(f)][-20:]
    assert sum(f in mixed for f in reply) >= 18
    # Audited: who listened to which call.
    store = stack.server.ctx.services.store
    await store.aflush()
    audit = await store.aread(store.audit_log, 10, result.uuid)
    assert [a.action for a in audit] == ["listen_in"]
    assert json.loads(audit[0].detail)["how"] == "open"
    # The call is in the call list, no longer live.
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.url + "/api/live") as r:
            assert (await r.json())["calls"] == []
        async with http.get(stack.url + "/api/calls") as r:
            listed = {c["uuid"]: c for c in (await r.json())["items"]}
    assert listed[result.uuid]["live"] is False


async def test_an_echo_call_is_live_but_cannot_be_heard(
    start_server: Any, tmp_path: Path, stacks: list[Stack]
) -> None:
    (tmp_path / "web").mkdir()
    store = CallStore(tmp_path / "web").open()
    try:
        stack = await start_stack(start_server, tmp_path, EchoSession, store=store)
        stacks.append(stack)
        caller = asyncio.create_task(stack.call(pcm=silence(1.5), linger=0.5))
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.get(stack.url + "/api/live") as r:
                    calls = (await r.json())["calls"]
                if calls:
                    break
                await asyncio.sleep(0.05)
            (call,) = calls
            assert call["app"] == "echo" and call["listenable"] is False
            async with http.get(f"{stack.url}/api/calls/{call['uuid']}/listen") as r:
                assert r.status == 409
                assert "C media path" in (await r.json())["detail"]
            result = await caller
            assert result.frames_received > 0
            async with http.get(stack.url + "/api/live") as r:
                assert (await r.json())["calls"] == []
            async with http.get(f"{stack.url}/api/calls/{call['uuid']}/listen") as r:
                assert r.status == 404
    finally:
        store.close()


@pytest.mark.parametrize("bind,token,listen_in,expected", [
    ("127.0.0.1", "", False, 403),  # switched off
    ("0.0.0.0", TOKEN, True, 401),  # no credentials
    ("0.0.0.0", TOKEN, False, 401),  # auth before anything else
])
async def test_listen_in_refusals(tmp_path: Path, bind: str, token: str, listen_in: bool,
                                  expected: int) -> None:
    store = CallStore(tmp_path).open()
    cfg = Config(data_dir=str(tmp_path), host=bind)
    cfg.web.token, cfg.web.listen_in = token, listen_in
    hub = LiveHub()
    try:
        async with TestClient(TestServer(make_app(cfg, Services(store=store, live=hub)))) as client:
            uuid = "0b7e7ad8-3f43-4d7b-9d5a-0e2f1f3b2a10"
            r = await client.get(f"/api/calls/{uuid}/listen")
            assert r.status == expected
            body = await r.json()
            if expected == 403:
                assert "listen_in" in body["detail"]
            for path in ("/api/live", "/api/live/events"):
                r = await client.get(path)
                assert r.status == (401 if token else 200)
                r.close()
            if token:  # with the token, the snapshot says whether listen-in is on
                r = await client.get("/api/live",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
                assert (await r.json())["listen_in"] is listen_in
        assert hub.subscribers == 0 and hub.listening == 0
    finally:
        store.close()


async def test_event_stream_cap_is_a_503(tmp_path: Path) -> None:
    store = CallStore(tmp_path).open()
    hub = LiveHub(max_subscribers=1)
    try:
        app = make_app(None, Services(store=store, live=hub))
        async with TestClient(TestServer(app)) as client:
            first = await client.get("/api/live/events")
            assert first.status == 200
            second = await client.get("/api/live/events")
            assert second.status == 503 and second.headers["Retry-After"]
            # No HEAD on a stream (it would hold a subscriber writing into nothing).
            assert (await client.head("/api/live/events")).status == 405
            first.close()
    finally:
        store.close()


# -- the page in Chromium ------------------------------------------------------------------

def browser_test(fn: Any) -> Any:
    """The marks of the other Chromium tests (browser, slow, skipped without Chromium)."""
    for mark in BROWSER_MARKS:
        fn = mark(fn)
    return fn


@browser_test
async def test_live_page_in_chromium(
    start_server: Any, tmp_path: Path, stacks: list[Stack], browser: Any  # noqa: F811
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "live.yaml").write_text(
        FLOW.replace("sales: {say: \"Sales.\", hangup: sales}",
                     "sales: {say: \"Sales.\", goto: hold}") + HOLD)
    flow: dict[str, Any] = {"ivr.flows_dir": str(flows), "ivr.flow": "live"}
    stack = await start_stack(start_server, tmp_path, IvrSession, **flow)
    stacks.append(stack)
    pages = {}
    for name, (w, h) in WIDTHS.items():
        ctx = await browser.new_context(viewport={"width": w, "height": h})
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
        await page.goto(stack.url + "/live")
        await page.wait_for_selector("body[data-ready='1']")
        assert "No calls in progress" in await page.inner_text("#status")
        pages[name] = (page, errors)
    # The caller answers the menu, then stays on (silent) until the server hangs up.
    caller = asyncio.create_task(stack.call(
        pcm=silence(2.5) + synth_speech("Sales, please.") + silence(1.0), send_silence=True,
        linger=30))
    node = ".live-call .live-node .node"
    for page, _errors in pages.values():  # both pages see the call at its first node
        await page.wait_for_function(
            f"() => document.querySelector('{node}')?.textContent === 'menu'", timeout=20_000)
    for page, _errors in pages.values():
        await page.wait_for_selector(".live-call .live-lines li", timeout=30_000)
        line = await page.inner_text(".live-call .live-lines li")
        assert "sales" in line.lower(), line
        # The answer led on to the next nodes, all while the call is up.
        await page.wait_for_function(
            f"() => document.querySelector('{node}')?.textContent === 'hold'", timeout=20_000)
        assert not caller.done()
        head = await page.inner_text(".live-call .live-head")
        assert "ivr" in head and "127.0.0.1" in head
        assert not await page.is_visible("#listening")  # nobody listens yet
        # Nothing overflows the phone's width.
        widths = await page.evaluate(
            "() => [window.innerWidth, document.documentElement.scrollWidth]")
        assert widths[1] <= widths[0], widths
    # The duration ticks.
    page = pages["desktop"][0]
    first = await page.inner_text(".live-call .dur")
    await page.wait_for_function(
        f"() => document.querySelector('.live-call .dur').textContent !== {first!r}",
        timeout=5_000)
    # Listen-in: the stream plays through Web Audio; its lead over the clock is the delay
    # the listener hears on top of one 20 ms tick.
    await page.click(".live-call button.listen")
    await page.wait_for_function("() => window.listenStats.chunks >= 25", timeout=5_000)
    assert not caller.done()
    stats = await page.evaluate("window.listenStats")
    assert stats["bytes"] >= 25 * 320
    lead = sorted(stats["leadMs"])[len(stats["leadMs"]) // 2]
    print(f"listen-in lead (median of {len(stats['leadMs'])} chunks): {lead} ms")
    assert 0 < lead < 1000
    ARTIFACTS.mkdir(exist_ok=True)
    for name, (p, _errors) in pages.items():
        await p.screenshot(path=str(ARTIFACTS / f"live-{name}.png"), full_page=True)
    result = await caller
    assert result.hangup_by_server  # the hold menu timed out
    for p, errors in pages.values():
        await p.wait_for_selector(".live-call", state="detached", timeout=15_000)
        assert "No calls in progress" in await p.inner_text("#status")
        link = p.locator(f'#ended a[href="/calls/{result.uuid}"]')
        assert await link.count() == 1
        assert errors == [], errors
    await pages["desktop"][0].wait_for_selector("#listening:not([hidden])")
    assert "ended" in await pages["desktop"][0].inner_text("#listen-state")
    # And the call is in the call list.
    page = pages["phone"][0]
    await page.goto(stack.url + "/")
    await page.locator(f'tr[data-uuid="{result.uuid}"]').wait_for()
    for p, _ in pages.values():
        await p.context.close()

