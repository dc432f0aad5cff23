"""Prometheus metrics of the core (calls, frames, protocol errors, the clock).

Hot paths (a frame in, a frame out) count in plain ints on the call and add them here in
batches, so a thousand calls cost no per-frame metric lock.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

ACTIVE_CALLS = Gauge("audiosocket_active_calls", "Calls in progress")
CALLS_STARTED = Counter("audiosocket_calls_started_total", "Calls whose UUID arrived", ["app"])
CALLS_ENDED = Counter("audiosocket_calls_ended_total", "Calls ended, by end reason", ["reason"])
NON_CALLS = Counter(
    "audiosocket_non_calls_total",
    "Connections that ended before a UUID arrived",
    ["reason"],
)
FRAMES_IN = Counter("audiosocket_frames_in_total", "Frames received, by kind", ["kind"])
FRAMES_OUT = Counter("audiosocket_frames_out_total", "Frames sent, by kind", ["kind"])
BYTES_IN = Counter("audiosocket_audio_bytes_in_total", "Audio payload bytes received")
PROTOCOL_ERRORS = Counter(
    "audiosocket_protocol_errors_total", "Frames rejected by the decoder, by type", ["type"]
)
PEER_ERROR_FRAMES = Counter(
    "audiosocket_peer_error_frames_total", "0xFF error frames from non-Asterisk peers"
)
TICK_LATENESS = Histogram(
    "audiosocket_tick_lateness_seconds",
    "How late each 20 ms clock tick ran after its deadline",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5),
)
TICK_DURATION = Histogram(
    "audiosocket_tick_duration_seconds",
    "Time spent writing one tick's frames for all calls",
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05),
)
CLOCK_RESYNCS = Counter(
    "audiosocket_clock_resyncs_total", "Ticks skipped because the clock fell > 200 ms behind"
)
UNDERRUNS = Counter(
    "audiosocket_playout_underruns_total",
    "Silent ticks inside a playback or a live stream (echo): its next frame was not ready",
)
LIVE_DROPPED = Counter(
    "audiosocket_live_dropped_frames_total",
    "Oldest frames of a live stream (echo) dropped to bring its latency back to the target",
)
PLAYOUT_DROPPED = Counter(
    "audiosocket_playout_dropped_frames_total",
    "Outbound frames dropped because a call's playout buffer was full",
)
ULAW_DETECTED = Counter(
    "audiosocket_ulaw_calls_total",
    "Calls that sent 160-byte mu-law frames in kind 0x10 (Dial without c(slin))",
)
WRITE_STALLS = Counter(
    "audiosocket_write_stalls_total",
    "Calls ended because the peer stopped reading our frames",
)
LINGER_TIMEOUTS = Counter(
    "audiosocket_linger_timeouts_total",
    "Connections we closed whose peer had not closed its side within the linger time",
)
NATIVE_LINES = Gauge(
    "audiosocket_native_lines", "Calls whose media the C path (audiosocket._wire) carries"
)
NATIVE_EVENTS = Counter(
    "audiosocket_native_events_total",
    "Times the C media path handed a call back to the Python path, by cause",
    ["event"],
)
SESSION_ERRORS = Counter(
    "audiosocket_session_errors_total", "Exceptions raised by app hooks", ["hook"]
)
GC_PAUSES = Histogram(
    "audiosocket_gc_pause_seconds",
    "Time the event loop stood still in Python's cyclic garbage collector, by generation",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)


def watch_gc() -> Callable[[str, dict[str, int]], None]:
    """Time every collection into ``GC_PAUSES`` (a pause is a late tick for every call).

    Returns the callback installed in ``gc.callbacks``, so a caller can remove it.
    """
    started = [0.0]
    by_gen = [GC_PAUSES.labels(generation=str(g)) for g in range(3)]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            by_gen[min(info["generation"], 2)].observe(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    return on_gc


@functools.cache
def frames_in(kind: int) -> Counter:
    """``FRAMES_IN`` for one frame kind. ``labels()`` hashes and formats its arguments on
    every call (~2 µs); the clock's once-a-second flush asks a thousand times a second."""
    return FRAMES_IN.labels(kind=f"0x{kind:02x}")


@functools.cache
def frames_out(kind: int) -> Counter:
    """``FRAMES_OUT`` for one frame kind (see :func:`frames_in`)."""
    return FRAMES_OUT.labels(kind=f"0x{kind:02x}")


@functools.cache
def native_event(name: str) -> Counter:
    """``NATIVE_EVENTS`` for one event (see :func:`frames_in`): playback marks come by the
    hundred a second."""
    return NATIVE_EVENTS.labels(event=name)
