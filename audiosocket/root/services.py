"""The process-wide engines apps share, created once: the call store, STT, TTS, post-call jobs.

Model loading takes seconds, so it happens at start-up (in a thread, off the loop), never
when a call arrives. Apps declare what they need (``Session.needs``); the composition root
(``runner``, the tests' ``start_server``) calls :func:`provide` with it before
``Session.prepare``, which keeps only the app's own loading (flows, prompts).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import structlog

from audiosocket.call import CallIds
from audiosocket.config import ConfigError
from audiosocket.root.app import NEEDS, AppContext, Need

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.live import LiveHub
    from helpers.postcall.jobs import PostCallJobs
    from helpers.speech.stt import SttEngine
    from helpers.speech.tts import TtsEngine
    from helpers.store.db import CallStore

__all__ = [
    "SERVICE_NAMES", "StoreObserver", "ensure_jobs", "ensure_store", "ensure_stt", "ensure_tts",
    "install_live", "provide",
]

log = structlog.get_logger("audiosocket.root.services")
T = TypeVar("T")
#: Where ``audiosocket models fetch`` puts checkpoints (the repository's models/ folder).
_REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
#: Post-call worker tasks per process (the FFmpeg and AI caps bound the heavy part).
_SERVER_WORKERS = 4


class StoreObserver:
    """Writes every call's start and end to the call store (via its writer thread), and
    tells the server which call ids the store already holds (``known``, read at start-up)."""

    def __init__(self, store: CallStore, known: CallIds | None = None) -> None:
        self.store = store
        self.known = known if known is not None else CallIds()

    def id_taken(self, call_id: str) -> bool:
        """Whether a call in the store has this id (from memory: runs on the loop)."""
        return call_id in self.known

    def call_started(self, call: Call) -> None:
        self.store.call_started(call.id, call.app, call.rate, call.peer, call.started_at,
                                audiosocket_uuid=str(call.uuid))

    def call_ended(self, call: Call) -> None:
        self.store.call_ended(
            call.id, call.ended_at or 0.0, call.end_reason or "unknown", call.frames_in,
            call.playout.sent_total,
        )


async def _once(ctx: AppContext, name: Need, build: Callable[[AppContext], Awaitable[T]]) -> T:
    """Engine ``name`` of ``ctx.services``, built by ``build`` the first time, exactly once
    even when several coroutines ask at the same moment; the context then holds a new
    :class:`~audiosocket.root.app.Services` with it."""
    engine = getattr(ctx.services, name)
    if engine is None:
        async with _loading(ctx, name):
            engine = getattr(ctx.services, name)
            if engine is None:
                engine = await build(ctx)
                # The field named ``name`` holds what ``build`` returns (``_BUILDERS``).
                ctx.services = replace(ctx.services, **{name: engine})  # type: ignore[arg-type]
    return cast(T, engine)


def _loading(ctx: AppContext, name: Need) -> asyncio.Lock:
    """The lock that makes concurrent first uses of engine ``name`` load it once: without
    it, the first post-call transcripts each loaded their own Whisper (and its threads)."""
    lock = ctx.loading.get(name)
    if lock is None:
        lock = ctx.loading[name] = asyncio.Lock()
    return lock


async def ensure_store(ctx: AppContext, *, own_calls: bool = True) -> CallStore:
    """Open the call store once (``<data>/calls.db``, or PostgreSQL when ``cluster.store``
    names it); also registers the observer that records calls. ``own_calls`` False
    (``audiosocket worker``: it takes no calls) leaves the calls of the store alone: closing
    "dangling" calls at start would end the servers' live ones."""

    async def build(c: AppContext) -> CallStore:
        return await _build_store(c, own_calls=own_calls)

    return await _once(ctx, "store", build)


async def _build_store(ctx: AppContext, *, own_calls: bool = True) -> CallStore:
    """The store of ``cluster.store`` (empty: SQLite under the data dir). PostgreSQL is
    retried until ``cluster.connect_timeout_s``; then :class:`StoreUnavailableError` (the
    runner exits 1). Never a fall-back to SQLite: calls would go where no portal looks."""
    from helpers.storage import LocalStorage
    from helpers.store.db import open_store

    cfg = ctx.config
    # calls.db stays in data_dir, never on the shared directory: SQLite's WAL needs one host.
    store = await asyncio.to_thread(
        open_store, cfg.cluster.store, ctx.data_dir, node=cfg.node,
        connect_timeout_s=cfg.cluster.connect_timeout_s,
    )
    # Recording paths are stored relative to the shared directory (helpers.storage).
    store.files = LocalStorage(ctx.shared_dir)
    if not own_calls:
        return store
    # Calls cut off by a crash have no end: close them so they do not look live.
    # Their length is the last activity known (the recording), not the downtime.
    recordings = ctx.shared_dir / "recordings"
    closed = await asyncio.to_thread(
        lambda: store.close_dangling_calls(recordings=recordings).result()
    )
    if closed:
        log.warning("dangling_calls_closed", count=closed)
    known = await asyncio.to_thread(lambda: CallIds(store.call_ids()))
    ctx.observers.insert(0, StoreObserver(store, known))
    return store


def install_live(ctx: AppContext) -> LiveHub:
    """The live-call hub (portal's live view, listen-in), made once: a call observer, and
    ``ctx.services.live`` for sessions and the web app."""
    hub = ctx.services.live
    if hub is None:
        from audiosocket.live import LiveHub

        hub = LiveHub()
        ctx.services = replace(ctx.services, live=hub)
        ctx.observers.append(hub)
    return hub


async def ensure_stt(ctx: AppContext) -> SttEngine:
    """Load the Whisper model once (bundled tiny.en unless ``stt.model`` says otherwise)."""
    return await _once(ctx, "stt", _build_stt)


async def _build_stt(ctx: AppContext) -> SttEngine:
    from helpers.speech.stt import SttEngine

    cfg = ctx.config.stt
    cluster = ctx.config.cluster
    shared = ctx.services
    settings: dict[str, Any] = dict(
        workers=cfg.workers, language=cfg.language,
        beam_size=cfg.beam_size, live_deadline_s=cfg.live_deadline_s,
        max_utterance_s=cfg.max_utterance_s, rtf_estimate=cfg.rtf_estimate,
        queue_capacity=cfg.queue_capacity or None, queue_max_bytes=cfg.queue_max_bytes,
        short_window=cfg.short_window,
        vad_aggressiveness=cfg.vad_aggressiveness,
        ai=shared.ai, models=shared.models,
    )
    if cluster.stt_remote:
        return await _build_remote_stt(ctx, settings)

    def load() -> SttEngine:
        engine = SttEngine(cfg.model or None, **settings)
        engine.start()
        _ = engine.backend  # load the model now, not on the first utterance
        return engine

    stt = await asyncio.to_thread(load)
    log.info("stt_ready", model=cfg.model or "tiny.en (bundled)", workers=cfg.workers,
             queue_capacity=stt.capacity or None, answer_deadline_s=cfg.answer_deadline_s,
             live_deadline_s=cfg.live_deadline_s)
    return stt


async def _build_remote_stt(ctx: AppContext, settings: dict[str, Any]) -> SttEngine:
    """Live utterances to ``audiosocket worker --stt`` over NATS: no Whisper loads here (a
    post-call transcript on this server would load it on first use). NATS unreachable for
    ``cluster.connect_timeout_s`` raises ``EngineUnavailable`` (``serve`` exits 1)."""
    from helpers.speech.remote_stt import RemoteSttEngine, pool_capacity

    cfg = ctx.config.stt
    cluster = ctx.config.cluster
    engine = RemoteSttEngine(
        cfg.model or None, nats_url=cluster.nats, inflight=cluster.stt_remote_inflight,
        pool=pool_capacity(cfg.queue_capacity), connect_timeout_s=cluster.connect_timeout_s,
        name=f"audiosocket {ctx.config.node}", **settings,
    )
    await asyncio.to_thread(engine.start)
    log.info("stt_ready", remote=cluster.nats, inflight=cluster.stt_remote_inflight,
             pool=engine.pool, answer_deadline_s=cfg.answer_deadline_s,
             live_deadline_s=cfg.live_deadline_s)
    return engine


async def ensure_tts(ctx: AppContext) -> TtsEngine:
    """Load the Piper voice once, with the on-disk prompt cache under the data directory."""
    return await _once(ctx, "tts", _build_tts)


async def _build_tts(ctx: AppContext) -> TtsEngine:
    from helpers.speech.prompt_cache import PromptCache
    from helpers.speech.tts import TtsEngine, TtsSettings

    cfg = ctx.config.tts
    def load() -> TtsEngine:
        cache = PromptCache(ctx.data_dir / "prompt-cache", max_bytes=cfg.cache_mb * 2**20)
        return TtsEngine(
            cfg.voice or None, cache=cache,
            settings=TtsSettings(length_scale=cfg.length_scale), threads=1,
            models=ctx.services.models,
        )

    tts = await asyncio.to_thread(load)
    log.info("tts_ready", voice=str(tts.voice_path), rate=tts.sample_rate)
    return tts


async def ensure_jobs(
    ctx: AppContext,
    *,
    steps: Iterable[str] | None = None,
    listener: bool = True,
    workers: int | None = None,
) -> PostCallJobs:
    """Start the post-call job workers (archives, peaks, transcript, summary).

    A server's (the defaults): it submits its own recordings, and runs the jobs in-process
    unless ``postcall.workers_in_server`` is false (then it only queues them).
    ``audiosocket worker`` passes its ``--steps``, ``listener=False`` and the workers."""

    async def build(c: AppContext) -> PostCallJobs:
        return await _build_jobs(c, steps=steps, listener=listener, workers=workers)

    return await _once(ctx, "jobs", build)


async def _build_jobs(
    ctx: AppContext,
    *,
    steps: Iterable[str] | None = None,
    listener: bool = True,
    workers: int | None = None,
) -> PostCallJobs:
    from helpers.postcall.archive import ArchiveSettings
    from helpers.postcall.jobs import PostCallJobs
    from helpers.postcall.summary_models import load_summarizer

    cfg = ctx.config.postcall
    shared = ctx.services
    store = await ensure_store(ctx, own_calls=listener)
    search = [_REPO_MODELS, ctx.data_dir / "models"]
    if workers is None:
        workers = _SERVER_WORKERS if cfg.workers_in_server else 0

    async def stt() -> SttEngine:
        return await ensure_stt(ctx)

    wakeup = None
    if store.listen_url is not None:
        from helpers.store.pg_listen import JobWakeups

        # PostgreSQL: idle workers wake at the commit of a new job (LISTEN/NOTIFY), not at
        # their next poll; SQLite has no such signal between processes, so they poll.
        wakeup = JobWakeups(store.listen_url)
    jobs = PostCallJobs(
        store, ctx.shared_dir,  # archives and peaks beside the recordings, on every node
        archive=ArchiveSettings(aac_bitrate=cfg.aac_bitrate, mp3_bitrate=cfg.mp3_bitrate,
                                listen_filter=cfg.listen_filter, aecho=cfg.aecho),
        ffmpeg=shared.ffmpeg,
        stt=stt,
        summarizer=lambda: load_summarizer(cfg.summary_model or None, search_dirs=search,
                                           ai=shared.ai, models=shared.models),
        workers=workers,
        node=ctx.config.node,
        lease_s=ctx.config.cluster.job_lease_s,
        steps=steps,
        listener=listener,
        wakeup=wakeup,
    )
    await jobs.start()
    return jobs


async def _ensure_live(ctx: AppContext) -> LiveHub:
    return install_live(ctx)


#: What builds each :data:`~audiosocket.root.app.Need` (run in ``NEEDS`` order).
_BUILDERS: dict[Need, Callable[[AppContext], Awaitable[object]]] = {
    "store": ensure_store,
    "live": _ensure_live,
    "stt": ensure_stt,
    "tts": ensure_tts,
    "jobs": ensure_jobs,
}
SERVICE_NAMES: tuple[Need, ...] = NEEDS


async def provide(ctx: AppContext, needs: Iterable[Need]) -> None:
    """Build the engines an app declares it needs (each once; those already in
    ``ctx.services`` are kept), in dependency order; ``ctx.services`` becomes a new frozen
    ``Services`` holding them. mypy checks the names of this repository's apps; a user's
    app is checked here: an unknown name is a :class:`ConfigError` naming it."""
    wanted: set[str] = set(needs)
    unknown = sorted(wanted - set(NEEDS))
    if unknown:
        raise ConfigError(
            f"app: needs unknown service(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(SERVICE_NAMES)}"
        )
    for name in NEEDS:
        if name in wanted:
            await _BUILDERS[name](ctx)


async def close_services(ctx: AppContext) -> None:
    """Stop engines and flush the store, in dependency order."""
    services = ctx.services
    if services.jobs is not None:
        await services.jobs.aclose()
    stt = services.stt
    if stt is not None:
        await asyncio.to_thread(stt.stop)
    if services.tts is not None:
        services.tts.close()
    store = services.store
    if store is not None:
        await asyncio.to_thread(store.close)
