"""Start-up and shutdown of ``audiosocket serve``: engines, the server, the HTTP side."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from audiosocket import metrics
from audiosocket.config import Config
from audiosocket.lifecycle import SignalWatcher, Watchdog
from audiosocket.ports import port_in_use
from audiosocket.root.app import AppContext, resolve_app, session_factory
from audiosocket.root.services import close_services, provide
from audiosocket.server import AudioSocketServer
from helpers.postcall.retention import apply_retention
from helpers.recorder import repair_all
from helpers.store.db import StoreUnavailableError
from web.limits import raise_nofile_limit

if TYPE_CHECKING:
    from sessions.base import Session

__all__ = ["run_server"]

log = structlog.get_logger("audiosocket")

#: What a stop may take beyond ``shutdown_grace_s`` before the process exits non-zero.
SHUTDOWN_EXTRA_S = 5.0


def _busy_port(config: Config) -> str | None:
    """A message naming the first of our ports (AudioSocket, HTTP) that is taken, or None."""
    wanted = [("AudioSocket", config.host, config.port)]
    if config.http_port:
        wanted.append(("HTTP", config.http_bind, config.http_port))
    for what, host, port in wanted:
        why = port_in_use(host, port)
        if why:
            return f"cannot listen on {what} port {port} ({host}): {why}"
    return None


def tune_gc(config: Config) -> tuple[int, int, int]:
    """Set the collector's youngest threshold from the config (``gc_young_threshold``; 0
    keeps Python's default); the thresholds now in force."""
    if config.gc_young_threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(config.gc_young_threshold, middle, old)
    return gc.get_threshold()


async def run_server(
    config: Config, *, loop_name: str = "asyncio", native_threads: dict[str, str] | None = None
) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code.

    The caller has blocked SIGTERM/SIGINT in every thread (``lifecycle``): here a thread of
    their own takes them, so a stop request works even if the loop is stuck, and the process
    ends within ``shutdown_grace_s + 5`` s of it whatever happens.
    """
    # First of all, before any model loads: a busy port is a one-line error now, not a
    # traceback after the prompt warm-up.
    busy = _busy_port(config)
    if busy:
        print(f"audiosocket: {busy}", file=sys.stderr, flush=True)
        return 2
    loop = asyncio.get_running_loop()
    raise_nofile_limit(config.max_calls)  # before anything opens a file; logs the limit
    stop = asyncio.Event()
    # First: a SIGTERM during start-up (it stays pending until now) is a graceful stop.
    def request_stop() -> None:
        loop.call_soon_threadsafe(stop.set)

    SignalWatcher(request_stop, config.shutdown_grace_s + SHUTDOWN_EXTRA_S).start()
    watchdog = Watchdog(loop, stall_s=config.watchdog_stall_s,
                        exit_s=config.watchdog_exit_s).start()
    data = config.data_path
    recordings = config.shared_path / "recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    fixed = await asyncio.to_thread(repair_all, recordings)
    if fixed:
        log.warning("recordings_repaired", count=fixed)
    cls = resolve_app(config.app)
    ctx = AppContext(config)
    try:
        await _start_services(ctx)
    except StoreUnavailableError as exc:
        # cluster.store is down or wrong: exit 1 (a supervisor retries), never SQLite.
        log.error("cannot_start", reason="store_unavailable", error=str(exc),
                  connect_timeout_s=config.cluster.connect_timeout_s)
        watchdog.stop()
        return 1
    # Model loading and prompt warm-up can take a while; a stop request meanwhile should
    # not wait for them.
    if not await _unless_stopped(_prepare_app(cls, ctx), stop):
        await _stop_services(ctx, budget_s=SHUTDOWN_EXTRA_S - 1)
        return 0
    server = AudioSocketServer(config, session_factory(cls, ctx), app_name=config.app)
    server.observers.extend(ctx.observers)
    # Everything that runs on the loop at start-up (importing and building the web app,
    # the collector's freeze) happens before the AudioSocket port opens: done after, it
    # was a ~300 ms stall that a call arriving then would hear as a gap (seen in the soak).
    runner = None
    if config.http_port:
        from web.app import make_app, start_http

        app = make_app(config, ctx.services, health=server.health)
        runner = await start_http(app, config.http_bind, config.http_port, config)
        log.info("http_listening", host=config.http_bind, port=config.http_port)
    # What start-up loaded (modules, models, the web app) lives as long as the process:
    # freezing it keeps the collector from walking it again during calls. A full
    # collection of that heap takes ~31 ms here (measured at start-up with the echo app);
    # during calls it would be a 31 ms gap on every call at once.
    gc.collect()
    gc.freeze()
    tune_gc(config)
    gc_watch = metrics.watch_gc()
    await server.start()
    log.info("ready", app=config.app, loop=loop_name, data_dir=str(data),
             native_threads=native_threads or {}, watchdog_stall_s=config.watchdog_stall_s,
             watchdog_exit_s=config.watchdog_exit_s)
    keeper = asyncio.create_task(_retention_forever(ctx))
    await stop.wait()
    # The calls get the grace; everything after it shares the remaining 5 s (the signal
    # thread ends the process non-zero past that, so aim half a second short of it).
    deadline = time.monotonic() + config.shutdown_grace_s + SHUTDOWN_EXTRA_S - 0.5

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    keeper.cancel()
    await server.shutdown(finish_s=2.0)

    if runner is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(1.0, left())):
                await runner.cleanup()
    await asyncio.to_thread(ctx.services.writer.flush)
    await _stop_services(ctx, budget_s=left())
    gc.callbacks.remove(gc_watch)
    watchdog.stop()
    return 0


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it). True if it completed."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _retention_forever(ctx: AppContext, every_s: float = 3600.0) -> None:
    """Apply the retention rules hourly (a no-op when every rule is 0 days)."""
    pc = ctx.config.postcall
    rules = {"wav": pc.retention_days_wav, "m4a": pc.retention_days_m4a,
             "mp3": pc.retention_days_mp3}
    if not any(days > 0 for days in rules.values()):
        return
    while True:
        try:
            await asyncio.to_thread(lambda: apply_retention(ctx.services.store, rules,
                                                            root=ctx.shared_dir))
        except Exception as exc:
            log.error("retention_failed", error=str(exc))
        await asyncio.sleep(every_s)


async def _start_services(ctx: AppContext) -> None:
    """Create the engines every app shares: the call store (every call is recorded in it)
    and the live-call hub (the portal's live view)."""
    await provide(ctx, ("store", "live", "jobs") if ctx.config.postcall.enabled
                  else ("store", "live"))


async def _prepare_app(cls: type[Session], ctx: AppContext) -> None:
    """Build the engines the app declares (``cls.needs``), then let it load its own."""
    await provide(ctx, cls.needs)
    await cls.prepare(ctx)


async def _stop_services(ctx: AppContext, budget_s: float) -> None:
    try:
        async with asyncio.timeout(budget_s):
            await close_services(ctx)
    except TimeoutError:
        # Something (a native call in a worker thread) did not stop in time; what is durable
        # is already written, and the signal thread's deadline ends the process.
        log.error("services_stop_timeout", budget_s=round(budget_s, 2))
