"""Post-call archiving with FFmpeg: AAC (.m4a) for retention and an MP3 listening copy.

The listening copy (``listen_filter``) is by default echo-*cancelled*: the caller's leg is
cleaned of the line echo of our prompts by :mod:`helpers.postcall.echo_cancel` (run as a child
process), then denoised and levelled by FFmpeg. The retention AAC is never filtered.

Commands are *built* with ``ffmpeg-python`` and *run* by :mod:`helpers.spawn` (vfork, never
fork: see there why), so we can cap how many run at once, time them out, kill them and keep
only the tail of their stderr.

Guarantees:

* An archive appears at its destination only complete and verified: FFmpeg writes to a hidden
  temporary name in the same directory (``.name.partial.ext``), the result is decoded again
  and its duration checked against the WAV, and only then ``os.replace`` moves it into place
  (atomic on one filesystem). A killed, failed, timed-out or cancelled FFmpeg leaves nothing
  behind at the destination and its temporary file is deleted.
* At most ``n`` FFmpeg processes (default 2) run at once in the whole process, whichever
  event loop or thread starts them: the composition root makes one :class:`FFmpegCap(n)
  <FFmpegCap>` and every archive call of the server is given it (``cap=``).
* Durations are measured without ffprobe (imageio-ffmpeg ships none): the archive is decoded
  to the null muxer and the last ``time=`` FFmpeg reports is taken.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg
import structlog
from prometheus_client import Counter, Gauge, Histogram

from helpers import spawn
from helpers.ffmpeg import FFmpegError, ffmpeg_binary
from helpers.postcall import echo_cancel

__all__ = [
    "ArchiveResult",
    "ArchiveSettings",
    "ArchiveVerifyError",
    "FFmpegCap",
    "archive_aac",
    "archive_mp3",
    "probe_duration",
    "verify_archive",
    "wav_duration",
]

log = structlog.get_logger(__name__)

FFMPEG_PROCESSES = Gauge("audiosocket_ffmpeg_processes", "FFmpeg processes running now")
FFMPEG_SECONDS = Histogram(
    "audiosocket_ffmpeg_seconds",
    "Wall time of one FFmpeg run",
    ["step"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
LISTEN_COPIES = Counter(
    "audiosocket_listening_copies_total",
    "MP3 listening copies published, by the filter they got "
    "(aec_skipped: the canceller could not read the recording; denoised only)",
    ["filter"],
)

#: How far an archive's decoded duration may stray from the WAV's. FFmpeg's AAC encoder
#: writes an edit list that hides its 1024-sample priming, and LAME's Xing/LAME header lets
#: the decoder drop encoder delay and padding, so both decode to the WAV's length within a
#: frame; ``time=`` itself is printed to 10 ms.
DURATION_TOLERANCE_S = 0.1

#: Bytes of FFmpeg's stderr kept for error messages (the end is where the reason is).
STDERR_TAIL = 4096

LISTEN_FILTERS = ("aec", "aecho", "none")
#: Gain limits of the levelling: a near-silent leg is not pumped up into audible hiss.
_MAX_BOOST_DB = 18.0
_MAX_CUT_DB = -12.0
_AEC_SCRIPT = Path(echo_cancel.__file__).resolve()

_AECHO_RE = re.compile(r"^[0-9.]+:[0-9.]+:[0-9.|]+:[0-9.|]+$")
_TIME_RE = re.compile(rb"time=\s*(-?)(\d+):(\d\d):(\d\d(?:\.\d+)?)")
_DURATION_RE = re.compile(rb"Duration:\s*(\d+):(\d\d):(\d\d(?:\.\d+)?)")


@dataclass(frozen=True)
class ArchiveSettings:
    """Encoder settings for the two archive formats."""

    aac_bitrate: str = "32k"
    mp3_bitrate: str = "48k"
    # The MP3 listening copy: "aec" cancels the line echo of our prompts in the caller's leg,
    # then denoises and levels; "aecho" is FFmpeg's echo *effect* (adds echo; kept only as
    # an explicit choice); "none" encodes the recording as it is.
    listen_filter: str = "aec"
    aecho: str = "0.8:0.88:60:0.4"  # in_gain:out_gain:delays:decays (ms; '|' for several taps)
    listen_level_dbfs: float = -20.0  # "aec": active speech level each leg is brought to
    mp3_rate: int | None = None  # None keeps the recording's rate (8 kHz is legal MPEG-2.5)
    timeout_s: float = 300
    verify: bool = True  # decode the result and compare durations before it is published
    # FFmpeg's default AAC coder ("twoloop") took 6.9 s for a 5-minute 8 kHz call here, the
    # "fast" coder 0.8 s, at the same size; on narrowband telephone speech the slower
    # search buys nothing audible. See docs/BENCHMARKS.md.
    aac_coder: str = "fast"


@dataclass(frozen=True)
class ArchiveResult:
    """A published archive: where, how big, how long (decoded), and how long it took."""

    path: Path
    bytes: int
    duration: float
    seconds: float


class ArchiveVerifyError(FFmpegError):
    """The archive could not be decoded or its duration does not match the source WAV."""


# --------------------------------------------------------------------------- process cap


class _ProcessCap:
    """A counting semaphore shared by every thread and event loop in the process.

    Why not ``asyncio.Semaphore``: it binds to one loop, and post-call jobs may run on
    several (the server's, a worker thread's, each pytest test's). Why not a
    ``threading.BoundedSemaphore`` acquired through ``asyncio.to_thread``: a cancelled waiter
    leaves its thread blocked in ``acquire()``, which later takes a permit nobody releases,
    and each waiter parks an executor thread. Here a waiter is just a future on its own loop;
    ``release`` hands the permit straight to the oldest waiter (FIFO, so no starvation) with
    ``call_soon_threadsafe``. Popping a waiter *is* the hand-over, so a waiter cancelled at
    the same moment finds itself gone from the queue and passes the permit on.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._lock = threading.Lock()
        self._limit = limit
        self._active = 0
        self._waiters: collections.deque[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]
        ] = collections.deque()

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        with self._lock:
            self._limit = limit
            # A raised limit admits waiters now; a lowered one takes effect as permits return.
            while self._waiters and self._active < self._limit:
                self._active += 1
                self._grant_locked()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._active < self._limit and not self._waiters:
                self._active += 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            await fut
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove((loop, fut))
                    granted = False
                except ValueError:
                    granted = True  # release() handed us the permit as we were cancelled
            if granted:
                self.release()
            raise

    def release(self) -> None:
        with self._lock:
            if self._waiters and self._active <= self._limit:
                self._grant_locked()  # the permit moves on; _active is unchanged
            else:
                self._active -= 1

    def _grant_locked(self) -> None:
        """Give one permit (already counted in ``_active``) to the oldest live waiter."""
        while self._waiters:
            loop, fut = self._waiters.popleft()
            try:
                loop.call_soon_threadsafe(_resolve, fut)
                return
            except RuntimeError:
                continue  # that waiter's loop is closed: it will never run; try the next
        self._active -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class FFmpegCap(_ProcessCap):
    """How many FFmpeg processes (and echo-canceller children) may run at once, and which
    run now. One per process, made by the composition root and passed to every archive
    call (``cap=``); a call given none makes its own (a standalone script or test)."""

    def __init__(self, limit: int = 2) -> None:
        super().__init__(limit)
        self._stats_lock = threading.Lock()
        self._running: set[int] = set()
        self._max_seen = 0

    def stats(self) -> tuple[int, int]:
        """``(running now, most seen running at once since the last reset)``."""
        with self._stats_lock:
            return len(self._running), self._max_seen

    def reset_max(self) -> None:
        """Reset the max-seen counter to the number running now (tests, benchmarks)."""
        with self._stats_lock:
            self._max_seen = len(self._running)

    def running_pids(self) -> list[int]:
        """PIDs of the FFmpeg processes run under this cap now (for tests and admin)."""
        with self._stats_lock:
            return list(self._running)

    def track(self, pid: int) -> None:
        with self._stats_lock:
            self._running.add(pid)
            self._max_seen = max(self._max_seen, len(self._running))
        FFMPEG_PROCESSES.inc()

    def untrack(self, pid: int) -> None:
        with self._stats_lock:
            self._running.discard(pid)
        FFMPEG_PROCESSES.dec()


# --------------------------------------------------------------------------- running FFmpeg


async def _run_ffmpeg(
    cmd: list[str], *, step: str, timeout_s: float, cap: FFmpegCap, tail: int = STDERR_TAIL
) -> bytes:
    """Run one FFmpeg under the process cap; return the tail of its stderr.

    Raises :class:`FFmpegError` on a non-zero exit, a signal or a timeout. On timeout or
    cancellation the process is killed and reaped before we return, so no orphan remains.
    """
    async with cap.slot():
        started = time.perf_counter()
        try:
            done = await spawn.run_async(
                cmd, timeout_s=timeout_s, tail=tail, on_start=cap.track, on_exit=cap.untrack
            )
        except spawn.SpawnTimeout as exc:
            raise FFmpegError(
                f"ffmpeg ({step}) timed out after {timeout_s:g} s",
                _decode_tail(exc.stderr_tail, tail),
            ) from None
        finally:
            FFMPEG_SECONDS.labels(step=step).observe(time.perf_counter() - started)
        rc = done.returncode
        if rc != 0:
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited {rc}"
            raise FFmpegError(f"ffmpeg ({step}) {how}", _decode_tail(done.stderr_tail, tail))
        return done.stderr_tail


def _decode_tail(buf: bytes | bytearray, tail: int) -> str:
    return bytes(buf[-tail:]).decode("utf-8", "replace")


def _partial_path(dst: Path) -> Path:
    """Hidden sibling of ``dst`` (same dir, so ``os.replace`` is atomic); keeps the suffix
    so FFmpeg still picks the muxer from it."""
    return dst.with_name(f".{dst.stem}.partial{dst.suffix}")


def _compile(stream: Any) -> list[str]:
    cmd: list[str] = stream.compile(cmd=ffmpeg_binary())
    return cmd


async def _archive(
    src_wav: Path, dst: Path, stream_for: Any, step: str, settings: ArchiveSettings,
    cap: FFmpegCap,
) -> ArchiveResult:
    started = time.perf_counter()
    src_wav = Path(src_wav)
    dst = Path(dst)
    if not src_wav.is_file():
        raise FileNotFoundError(src_wav)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_path(dst)
    src_duration = await _source_duration(src_wav, settings.timeout_s, cap)
    cmd = _compile(stream_for(src_wav, tmp, src_duration))
    try:
        await _run_ffmpeg(cmd, step=step, timeout_s=settings.timeout_s, cap=cap)
        if settings.verify:
            duration = await _check_duration(tmp, src_duration, settings.timeout_s, cap)
        else:
            duration = src_duration
        size = tmp.stat().st_size
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    seconds = time.perf_counter() - started
    log.info("archived", step=step, path=str(dst), bytes=size, duration=round(duration, 3),
             seconds=round(seconds, 3))
    return ArchiveResult(path=dst, bytes=size, duration=duration, seconds=seconds)


async def archive_aac(
    src_wav: str | Path, dst_m4a: str | Path, settings: ArchiveSettings | None = None, *,
    cap: FFmpegCap | None = None,
) -> ArchiveResult:
    """Encode a recording to AAC in MP4 (.m4a) for retention; publish it atomically.

    Both channels are kept (left caller, right us): this is the copy of record, and
    separate legs are what a later re-transcription or dispute needs.
    ``+faststart`` moves the index to the front so the portal can stream it with Range.
    """
    s = settings or ArchiveSettings()

    def build(src: Path, tmp: Path, _duration: float) -> Any:
        return (
            ffmpeg.input(str(src))
            .output(str(tmp), f="mp4", acodec="aac", audio_bitrate=s.aac_bitrate,
                    aac_coder=s.aac_coder, movflags="+faststart", vn=None)
            .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")
            .overwrite_output()  # a stale partial from a crashed run may be there
        )

    return await _archive(Path(src_wav), Path(dst_m4a), build, "aac", s, cap or FFmpegCap())


async def archive_mp3(
    src_wav: str | Path, dst_mp3: str | Path, settings: ArchiveSettings | None = None, *,
    cap: FFmpegCap | None = None,
) -> ArchiveResult:
    """Encode the listening copy of a recording to MP3; publish it atomically.

    Stereo is kept rather than mixed to mono: caller and agent stay separable (a reviewer
    can mute one leg), and LAME's joint stereo costs little for two mostly-alternating
    voices. With ``listen_filter="aec"`` (default) the caller's leg is echo-cancelled
    against ours, denoised (``afftdn``) and both legs are levelled (a constant gain each,
    then a peak limiter); see :func:`_aec_mp3`. ``"aecho"`` applies FFmpeg's echo effect,
    ``"none"`` no filter. Output is cut to the recording's duration (``-t``) so that filter
    tails never shift the two timelines apart.
    """
    s = settings or ArchiveSettings()
    cap = cap or FFmpegCap()
    if s.listen_filter not in LISTEN_FILTERS:
        raise ValueError(f"listen_filter must be one of {LISTEN_FILTERS}, got {s.listen_filter!r}")
    if s.listen_filter == "aec":
        return await _aec_mp3(Path(src_wav), Path(dst_mp3), s, cap)
    audio_filter: Any = None
    if s.listen_filter == "aecho":
        if not _AECHO_RE.match(s.aecho):
            raise ValueError(f"aecho must be in_gain:out_gain:delays:decays, got {s.aecho!r}")
        in_gain, out_gain, delays, decays = s.aecho.split(":")

        def audio_filter(audio: Any) -> Any:
            return audio.filter(
                "aecho", in_gain=in_gain, out_gain=out_gain, delays=delays, decays=decays
            )

    res = await _archive(Path(src_wav), Path(dst_mp3),
                         _mp3_builder(s, audio_filter, None), "mp3", s, cap)
    LISTEN_COPIES.labels(filter=s.listen_filter).inc()
    return res


def _mp3_builder(s: ArchiveSettings, audio_filter: Any, source: Path | None) -> Any:
    """``stream_for`` of an MP3 encode: ``source`` (default: the recording) through
    ``audio_filter`` (a function of an ffmpeg-python stream, or None)."""

    def build(src: Path, tmp: Path, duration: float) -> Any:
        audio = ffmpeg.input(str(source or src)).audio
        if audio_filter is not None:
            audio = audio_filter(audio)
        out_kwargs: dict[str, Any] = {
            "f": "mp3", "acodec": "libmp3lame", "audio_bitrate": s.mp3_bitrate,
            "t": f"{duration:.6f}",
        }
        if s.mp3_rate:
            out_kwargs["ar"] = s.mp3_rate
        return (
            ffmpeg.output(audio, str(tmp), **out_kwargs)
            .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")
            .overwrite_output()
        )

    return build


async def _aec_mp3(src: Path, dst: Path, s: ArchiveSettings, cap: FFmpegCap) -> ArchiveResult:
    """The echo-cancelled listening copy.

    1. :mod:`helpers.postcall.echo_cancel` runs as a child process (under the same cap as FFmpeg,
       killed on timeout or cancellation) and writes a hidden cleaned WAV beside ``dst``,
       reporting each leg's active speech level.
    2. FFmpeg encodes that WAV: caller leg ``volume`` then ``afftdn``, our leg ``volume``,
       joined again, then ``alimiter`` (peaks only: no automatic gain that would lift
       residual echo or noise between words).

    A recording the canceller cannot read (not 16-bit PCM, a broken header) is still
    encoded, from the original, denoised and unlevelled, and logged.
    """
    if not await asyncio.to_thread(src.is_file):
        raise FileNotFoundError(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    clean = dst.with_name(f".{dst.stem}.clean.partial.wav")
    try:
        levels: list[float | None] | None = None
        # -I: the script's own folder (helpers/postcall/) must not shadow modules numpy imports.
        cmd = [sys.executable, "-I", str(_AEC_SCRIPT), str(src), str(clean)]
        # The canceller's time grows with the call (about 0.7 CPU s per minute at 8 kHz,
        # more at 48 kHz): allow 10 s a minute on top, or a 3-hour call could never finish.
        minutes = await _source_duration(src, s.timeout_s, cap) / 60.0
        try:
            err = await _run_ffmpeg(cmd, step="aec", timeout_s=s.timeout_s + 10.0 * minutes,
                                    cap=cap)
            levels = _aec_levels(err)
        except FFmpegError as exc:
            if "timed out" in str(exc) or "killed" in str(exc):
                raise
            log.warning("echo_cancel_skipped", path=str(src), error=exc.stderr.strip()[-300:])
        if levels is None:
            res = await _archive(src, dst, _mp3_builder(s, _denoise, None), "mp3", s, cap)
            LISTEN_COPIES.labels(filter="aec_skipped").inc()
            return res
        gains = [_level_gain(lv, s.listen_level_dbfs) for lv in levels]
        res = await _archive(src, dst, _mp3_builder(s, _clean_chain(gains), clean), "mp3", s,
                             cap)
        LISTEN_COPIES.labels(filter="aec").inc()
        return res
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(clean.unlink)


def _aec_levels(stderr_tail: bytes) -> list[float | None] | None:
    for line in reversed(stderr_tail.decode("utf-8", "replace").splitlines()):
        if line.startswith(echo_cancel.STATS_MARK):
            levels: list[float | None] = json.loads(line[len(echo_cancel.STATS_MARK):])["levels"]
            return levels
    return None


def _level_gain(level: float | None, target: float) -> float:
    """Constant gain (dB) bringing a leg's active level to ``target``; 0 for a silent leg."""
    if level is None:
        return 0.0
    return round(min(_MAX_BOOST_DB, max(_MAX_CUT_DB, target - level)), 2)


def _denoise(audio: Any) -> Any:
    # tn=1 tracks the noise floor: telephone noise changes with the line during a call.
    return audio.filter("afftdn", nr=12, nf=-50, tn=1)


def _limit(audio: Any) -> Any:
    # level=0: no auto-gain; latency=1: the limiter's look-ahead does not shift the audio.
    return audio.filter("alimiter", limit=0.89, level=0, latency=1)


def _clean_chain(gains: list[float]) -> Any:
    def chain(audio: Any) -> Any:
        if len(gains) == 1:
            return _limit(_denoise(audio.filter("volume", f"{gains[0]}dB")))
        legs = audio.filter_multi_output("channelsplit", channel_layout="stereo")
        caller = _denoise(legs.stream(0).filter("volume", f"{gains[0]}dB"))
        ours = legs.stream(1).filter("volume", f"{gains[1]}dB")
        return _limit(ffmpeg.filter([caller, ours], "join", inputs=2, channel_layout="stereo"))

    return chain


# --------------------------------------------------------------------------- durations


def wav_duration(path: str | Path) -> float:
    """Duration of a PCM WAV from its header (frames / rate). Blocking but instant."""
    with wave.open(str(path), "rb") as wf:
        return wf.getnframes() / float(wf.getframerate())


async def _source_duration(src_wav: Path, timeout_s: float, cap: FFmpegCap) -> float:
    """The recording's duration: from its WAV header, or decoded by FFmpeg when the header
    cannot be parsed (FFmpeg is more forgiving, and if it cannot read the file either, its
    stderr explains why in the FFmpegError)."""
    try:
        return await asyncio.to_thread(wav_duration, src_wav)
    except (wave.Error, EOFError, ZeroDivisionError):
        return await probe_duration(src_wav, timeout_s=timeout_s, cap=cap)


def _hms(h: bytes, m: bytes, s: bytes) -> float:
    return int(h) * 3600 + int(m) * 60 + float(s)


async def probe_duration(
    path: str | Path, *, timeout_s: float = 120.0, cap: FFmpegCap | None = None
) -> float:
    """Decoded duration of any file FFmpeg reads, in seconds, without ffprobe.

    Runs ``ffmpeg -i path -f null -`` and takes the last ``time=`` progress report: that is
    what was actually decoded, unlike the container's ``Duration:`` (an estimate from the
    header or bitrate, wrong for truncated files). Falls back to ``Duration:`` only if no
    progress was printed. Raises :class:`FFmpegError` if the file cannot be decoded.
    """
    cmd = _compile(
        ffmpeg.input(str(path))
        .output("-", f="null", vn=None)
        # -stats with -loglevel info: the progress line (and its time=) is what we parse.
        .global_args("-nostdin", "-hide_banner", "-stats", "-loglevel", "info")
    )
    err = await _run_ffmpeg(cmd, step="probe", timeout_s=timeout_s, tail=16384,
                            cap=cap or FFmpegCap())
    times = _TIME_RE.findall(err)
    if times:
        sign, h, m, s = times[-1]
        return 0.0 if sign else _hms(h, m, s)
    dur = _DURATION_RE.search(err)
    if dur:
        return _hms(*dur.groups())
    raise FFmpegError(f"could not read a duration for {path}", _decode_tail(err, STDERR_TAIL))


async def _check_duration(
    archive: Path, expected: float, timeout_s: float, cap: FFmpegCap
) -> float:
    try:
        got = await probe_duration(archive, timeout_s=timeout_s, cap=cap)
    except FFmpegError as exc:
        raise ArchiveVerifyError(f"{archive} is not decodable", exc.stderr) from exc
    if abs(got - expected) > DURATION_TOLERANCE_S:
        raise ArchiveVerifyError(
            f"{archive} decodes to {got:.3f} s but the recording is {expected:.3f} s"
        )
    return got


async def verify_archive(
    src_wav: str | Path, archive: str | Path, *, cap: FFmpegCap | None = None
) -> float:
    """Check ``archive`` decodes to the WAV's duration (±0.1 s); return its decoded duration.

    Raises :class:`ArchiveVerifyError` when it does not decode or the lengths differ.
    """
    cap = cap or FFmpegCap()
    expected = await _source_duration(Path(src_wav), 300.0, cap)
    return await _check_duration(Path(archive), expected, timeout_s=300.0, cap=cap)
