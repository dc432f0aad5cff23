"""Voice activity detection: cut a call's inbound audio into utterances for STT.

webrtcvad (the ``webrtcvad-wheels`` package) classifies each 20 ms frame; a small state
machine turns the per-frame decisions into utterances. The cost per frame is one webrtcvad
call and a few list operations (numpy only once per utterance, to refine its end), so a
thousand calls fit easily in one process.
webrtcvad supports 8, 16, 32 and 48 kHz; other call rates are resampled to 16 kHz (with a
streaming soxr resampler) for the decision only; utterances always carry the call's own
audio at the call's own rate.

Silero VAD is not built (an optional second backend is left for later).

Timeline: frame ``tick`` covers ``[tick * 0.02, (tick + 1) * 0.02)`` seconds of the call.
``Utterance.start`` / ``end`` are the detected speech onset and offset on that timeline;
``pcm`` begins ``pcm_start`` seconds into the call (the pre-roll before ``start``) and runs a
little past ``end`` (a short post-roll), which is what Whisper should hear.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from itertools import repeat
from typing import Any

import numpy as np
import soxr
import webrtcvad

from helpers.ai import ModelCache
from helpers.audio import resample_pcm

__all__ = ["FRAME_MS", "Utterance", "VadSegmenter", "voiced_ms"]

FRAME_MS = 20
FRAME_S = FRAME_MS / 1000.0
_NATIVE_RATES = (8000, 16000, 32000, 48000)
#: Audio arriving up to this many ticks after the previous audio is jitter and placed right
#: after it; later, the gap is silence. The recorder's JITTER_SLOTS, so lines and the
#: recording agree.
JITTER_TICKS = 3
_POST_ROLL_MS = 200  # audio kept after the last voiced frame: word endings are often unvoiced
_TRIM_DB = 25.0  # offset refinement: frames this far below the speech level are not speech
_MAX_HANGOVER = 15  # frames (300 ms): webrtcvad's own hangover is about 12 at mode 2
#: After this many frames of digital silence (all-zero PCM) in a row webrtcvad's state is a
#: fixed point: its hangover is spent and its filters have decayed, so a further zero frame
#: changes nothing and is unvoiced. Measured: after 10 zero frames, 300 random speech/noise
#: sequences at 8, 16, 32 and 48 kHz and every mode gave the same decisions whether or not
#: up to 200 more zeros were fed (tests/helpers/test_vad.py checks it). Past it zero frames
#: are not given to webrtcvad at all, which lets a silent caller's audio be taken in bulk.
ZERO_SETTLE = 16


@dataclass(frozen=True)
class Utterance:
    """One stretch of caller speech, ready for STT.

    ``start``/``end``: speech onset and offset in seconds on the call's timeline.
    ``cut``: True when the speech hit ``max_utterance_s`` and continues in the next utterance.
    ``pcm_start``: timeline time of the first sample of ``pcm`` (onset minus pre-roll).
    ``voiced_ms``: how much of ``pcm`` the VAD classified as speech (None: unknown).
    """

    pcm: bytes
    rate: int
    start: float
    end: float
    cut: bool = False
    pcm_start: float = 0.0
    voiced_ms: float | None = None

    @property
    def duration(self) -> float:
        """Seconds of audio in ``pcm``."""
        return len(self.pcm) / 2 / self.rate


SILERO_WINDOW = 512  # samples at 16 kHz: 32 ms
SILERO_CONTEXT = 64


def silero_session(models: ModelCache) -> Any:
    """The Silero VAD v6 ONNX model that faster-whisper ships in its wheel, loaded once per
    ``models`` (the process's cache: ONNX Runtime sessions are safe to run from several
    threads)."""

    def load() -> Any:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        path = str(files("faster_whisper").joinpath("assets", "silero_vad_v6.onnx"))
        return onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"], sess_options=opts
        )

    return models.get(("silero", "v6"), load)


class SileroClassifier:
    """Streaming Silero VAD for one call: 20 ms frames in, a speech decision per frame.

    Silero judges 32 ms windows at 16 kHz and carries an LSTM state between them, so frames
    are resampled to 16 kHz, gathered into windows, and each frame gets the probability of
    the latest window (at most 32 ms old). About 60× the cost of webrtcvad per second of
    audio: the choice where accuracy matters more than cost (noisy lines, music on hold).
    """

    def __init__(self, rate: int, threshold: float = 0.5, *,
                 models: ModelCache | None = None) -> None:
        self._np = np
        self.threshold = threshold
        # The server passes the process's model cache; None (a script, a test) loads the
        # model for this classifier alone.
        self._session = silero_session(models if models is not None else ModelCache())
        self._resampler = None if rate == 16000 else _Resampler(rate)
        self._buf = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(SILERO_CONTEXT, dtype=np.float32)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self.probability = 0.0

    def is_speech(self, frame: bytes) -> bool:
        """Add one 20 ms frame; True when the latest window's speech probability passes."""
        np = self._np
        pcm16 = b"".join(self._resampler.frames(frame)) if self._resampler else frame
        if pcm16:
            samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
            self._buf = np.concatenate([self._buf, samples])
        while self._buf.size >= SILERO_WINDOW:
            window, self._buf = self._buf[:SILERO_WINDOW], self._buf[SILERO_WINDOW:]
            x = np.concatenate([self._context, window])[None, :]
            prob, self._h, self._c = self._session.run(
                None, {"input": x, "h": self._h, "c": self._c}
            )
            self._context = window[-SILERO_CONTEXT:]
            self.probability = float(np.asarray(prob).reshape(-1)[0])
        return self.probability >= self.threshold


class _Resampler:
    """Streaming resampler to 16 kHz for rates webrtcvad does not take."""

    def __init__(self, rate: int) -> None:
        self._np = np
        self._stream = soxr.ResampleStream(rate, 16000, 1, dtype="int16", quality="HQ")
        self._buf = b""

    def frames(self, pcm: bytes) -> list[bytes]:
        out = self._stream.resample_chunk(self._np.frombuffer(pcm, dtype="<i2"))
        self._buf += self._np.asarray(out, dtype="<i2").tobytes()
        frames = []
        while len(self._buf) >= 640:
            frames.append(self._buf[:640])
            self._buf = self._buf[640:]
        return frames


class VadSegmenter:
    """Turn 20 ms frames of one call into :class:`Utterance` objects.

    Speech starts when ``start_frames`` of the last ``2 * start_frames`` frames are voiced;
    ``on_speech_start(t)`` fires at that moment (``t`` = onset on the timeline; used for
    barge-in). Speech ends after ``end_silence_ms`` of unvoiced frames. Utterances shorter
    than ``min_speech_ms`` (onset to offset) are discarded; speech longer than
    ``max_utterance_s`` (counting the pre-roll) or ``max_utterance_bytes`` is cut and
    continues as a new utterance; the pre-roll is at most a quarter of those bytes, so at
    192 kHz one call's VAD holds a few MB, not ``max_utterance_s`` × 384 kB/s.
    Not thread-safe: one segmenter per call, driven from one thread (the event loop).
    """

    def __init__(
        self,
        rate: int,
        *,
        aggressiveness: int = 2,
        pre_roll_ms: int = 300,
        end_silence_ms: int = 600,
        min_speech_ms: int = 250,
        max_utterance_s: float = 15.0,
        max_utterance_bytes: int = 4 * 2**20,
        start_frames: int = 3,
        on_speech_start: Callable[[float], None] | None = None,
        engine: str = "webrtc",
        silero_threshold: float = 0.5,
        models: ModelCache | None = None,
    ) -> None:
        if engine not in ("webrtc", "silero"):
            raise ValueError(f"VAD engine {engine!r}: use webrtc or silero")
        if rate <= 0 or (rate * FRAME_MS) % 1000:
            raise ValueError(f"rate {rate} does not give whole 20 ms frames")
        if not 0 <= aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        if start_frames < 1:
            raise ValueError("start_frames must be >= 1")
        self.rate = rate
        self.frame_bytes = rate * FRAME_MS // 1000 * 2
        self._vad = webrtcvad.Vad(aggressiveness)
        self._resampler = None if rate in _NATIVE_RATES else _Resampler(rate)
        self._resampled_voiced = False
        self._silero = (SileroClassifier(rate, silero_threshold, models=models)
                        if engine == "silero" else None)
        self._silence = bytes(self.frame_bytes)
        self._quiet = (self._silence, False)  # a ring entry of digital silence
        self.on_speech_start = on_speech_start
        self.start_frames = start_frames
        self._start_window = 2 * start_frames
        # The look-back must cover the start window, else the onset frames would be lost.
        cap = max(2 * self._start_window, max_utterance_bytes // self.frame_bytes)
        self._pre_frames = max(min(pre_roll_ms // FRAME_MS, cap // 4), self._start_window)
        self._end_frames = max(1, end_silence_ms // FRAME_MS)
        self._min_frames = max(1, min_speech_ms // FRAME_MS)
        self._max_frames = max(
            self._pre_frames + 1, min(int(max_utterance_s * 1000) // FRAME_MS, cap)
        )
        self._post_frames = min(_POST_ROLL_MS // FRAME_MS, self._end_frames)
        # Idle state: recent frames and their decisions (pcm, voiced).
        self._ring: deque[tuple[bytes, bool]] = deque(maxlen=self._pre_frames)
        # Speech state.
        self._in_speech = False
        self._frames: list[bytes] = []
        self._first_tick = 0  # tick of _frames[0]
        self._onset_tick = 0  # first voiced tick of this utterance
        self._last_voiced = 0  # index into _frames of the last voiced frame
        self._voiced = 0  # voiced frames in _frames
        self._trailing = 0  # unvoiced frames since the last voiced one
        self._continued = False  # this utterance continues one cut at the maximum length
        self._next_tick = 0
        self._partial = b""  # the start of a frame cut short (Asterisk's file boundaries)
        self.frames_seen = 0
        #: Zero frames in a row given to the classifier (see ZERO_SETTLE).
        self.zero_run = 0
        # The shortcut is exact only for webrtcvad at its own rates (the fixed point was
        # measured there); Silero and resampled rates classify every frame.
        self._zero_ok = self._silero is None and self._resampler is None

    @property
    def in_speech(self) -> bool:
        """True between a speech onset and the end of that speech."""
        return self._in_speech

    # -- feeding -------------------------------------------------------------------------

    def push(self, pcm: bytes, tick: int) -> list[Utterance]:
        """Add audio that arrived while the clock was at ``tick``; return utterances that ended.

        ``pcm`` is one 20 ms frame or several (what arrived in one tick); frames of other
        sizes are cut into 20 ms frames and a remainder waits for the next audio. Placement
        follows the recorder's rule, so a line's time is where it is in the recording: audio
        goes right after the previous audio, and only when it arrives more than
        ``JITTER_TICKS`` later is the gap silence, with the burst right-aligned to end at
        ``tick`` (a network or loop stall delivers late what was sent in time; placing it at
        its arrival tick shifted the rest of the call's lines by the stall).
        """
        out: list[Utterance] = []
        fb = self.frame_bytes
        if self._partial:
            pcm = self._partial + pcm
            self._partial = b""
        whole = len(pcm) // fb
        if tick - JITTER_TICKS > self._next_tick:
            out.extend(self.silence_until(max(self._next_tick, tick - max(1, whole))))
        if whole == 1 and len(pcm) == fb:
            self._frame(pcm, self._next_tick, self._classify(pcm), out)
            return out
        for i in range(0, whole * fb, fb):
            frame = pcm[i : i + fb]
            self._frame(frame, self._next_tick, self._classify(frame), out)
        if len(pcm) > whole * fb:
            self._partial = pcm[whole * fb :]
        return out

    @property
    def next_tick(self) -> int:
        """The timeline slot the next frame of audio goes to (when it comes in time)."""
        return self._next_tick

    def push_frames(self, pcm: bytes, *, silent: bool = False) -> list[Utterance]:
        """Whole frames that arrived one per tick, in time, for the next slots (the steady
        case of ``push``: the same result as one ``push`` per frame). A run of digital
        silence while no speech is in progress and the classifier has settled
        (``ZERO_SETTLE``) is taken in O(1) numpy work instead of frame by frame; with
        ``silent`` (the caller knows ``pcm`` is all zero) in O(1) without numpy."""
        fb = self.frame_bytes
        if self._partial or len(pcm) % fb:
            raise ValueError("push_frames takes whole frames with nothing partial held")
        out: list[Utterance] = []
        m = len(pcm) // fb
        if m == 0:
            return out
        if silent and not self._in_speech and self._zero_ok and self.zero_run >= ZERO_SETTLE:
            self._skip_zeros(m)
            return out
        sound = np.asarray(np.frombuffer(pcm, dtype="<i2").reshape(m, fb // 2).any(axis=1))
        i = 0
        while i < m:
            if (
                not sound[i] and not self._in_speech and self._zero_ok
                and self.zero_run >= ZERO_SETTLE
            ):
                rest = np.flatnonzero(sound[i:])
                k = int(rest[0]) if len(rest) else m - i
                self._skip_zeros(k)
                i += k
                continue
            frame = pcm[i * fb : (i + 1) * fb]
            self._frame(frame, self._next_tick, self._classify(frame), out)
            i += 1
        return out

    def _skip_zeros(self, k: int) -> None:
        """What k rounds of _classify (all False, past the fixed point) and _frame (idle:
        the ring keeps the last frames) leave behind, at once."""
        # One C call: this runs once per silent call per block, a thousand calls a second.
        self._ring.extend(repeat(self._quiet, min(k, self._pre_frames)))
        self.frames_seen += k
        self.zero_run += k
        self._next_tick += k

    def silence_until(self, tick: int) -> list[Utterance]:
        """Nothing arrived before ``tick``: count the missing frames as silence.

        Digital silence is never voiced, so no VAD call is made; when no speech is in progress
        the gap is skipped in O(1), so a long quiet stretch costs nothing.
        """
        out: list[Utterance] = []
        while self._next_tick < tick:
            if not self._in_speech:
                # Idle: the gap wipes the start window; keep the ring's audio aligned by
                # adding silent frames, at most a ring's worth.
                self._ring.extend(repeat(self._quiet, min(tick - self._next_tick,
                                                          self._pre_frames)))
                self._next_tick = tick
                break
            self._frame(self._silence, self._next_tick, False, out)
        return out

    def flush(self, tick: int | None = None) -> Utterance | None:
        """Hang-up: return the speech in progress (if long enough) and reset.

        ``tick`` (optional) is the hang-up tick; speech in progress ends at its last voiced
        frame either way.
        """
        utt = None
        self._partial = b""
        if self._in_speech:
            utt = self._finish(cut=False)
        self._reset_idle()
        if tick is not None:
            self._next_tick = max(self._next_tick, tick)
        return utt

    # -- internals -----------------------------------------------------------------------

    def _classify(self, frame: bytes) -> bool:
        self.frames_seen += 1
        if frame == self._silence:
            self.zero_run += 1
            if self.zero_run > ZERO_SETTLE and self._zero_ok:
                return False
        else:
            self.zero_run = 0
        if self._silero is not None:
            return self._silero.is_speech(frame)
        if self._resampler is None:
            return bool(self._vad.is_speech(frame, self.rate))
        # The resampler hands out 16 kHz audio in bursts (at 96 and 192 kHz, several frames
        # every few calls): a call with none keeps the last decision, else those frames all
        # read as unvoiced and speech was never detected at those rates.
        voiced = self._resampled_voiced
        for f16 in self._resampler.frames(frame):
            voiced = bool(self._vad.is_speech(f16, 16000))
        self._resampled_voiced = voiced
        return voiced

    def _frame(self, frame: bytes, tick: int, voiced: bool, out: list[Utterance]) -> None:
        self._next_tick = tick + 1
        if not self._in_speech:
            self._ring.append((frame, voiced))
            if not voiced:
                return
            window = list(self._ring)[-self._start_window :]
            if sum(1 for _, v in window if v) < self.start_frames:
                return
            # Onset: the first voiced frame of the start window.
            first = next(i for i, (_, v) in enumerate(window) if v)
            ring = list(self._ring)
            onset_idx = len(ring) - len(window) + first
            self._in_speech = True
            self._frames = [f for f, _ in ring]
            self._first_tick = tick - len(ring) + 1
            self._onset_tick = self._first_tick + onset_idx
            self._voiced = sum(1 for _, v in ring[onset_idx:] if v)
            self._last_voiced = len(ring) - 1
            self._trailing = 0
            self._ring.clear()
            if self.on_speech_start is not None:
                self.on_speech_start(self._onset_tick * FRAME_S)
            return
        self._frames.append(frame)
        if voiced:
            self._voiced += 1
            self._last_voiced = len(self._frames) - 1
            self._trailing = 0
        else:
            self._trailing += 1
        if self._trailing >= self._end_frames:
            utt = self._finish(cut=False)
            self._reset_idle()
            if utt is not None:
                out.append(utt)
        elif len(self._frames) >= self._max_frames:
            utt = self._finish(cut=True)
            # Continue as a new utterance straight away: no pre-roll (the audio before is in
            # the cut one), no second on_speech_start (it is the same speech).
            self._frames = []
            self._first_tick = tick + 1
            self._onset_tick = tick + 1
            self._voiced = 0
            self._last_voiced = -1
            self._trailing = 0
            self._continued = True
            if utt is not None:
                out.append(utt)

    def _finish(self, *, cut: bool) -> Utterance | None:
        """Build the utterance from the frames so far (None when too short)."""
        if cut:
            last = len(self._frames) - 1
        else:
            if self._last_voiced < 0:
                return None
            last = self._last_voiced
        onset_idx = self._onset_tick - self._first_tick
        n_speech = last - onset_idx + 1
        # The minimum length screens out clicks and coughs; the tail of speech that was cut
        # at the maximum is the end of a real utterance (often its last word): keep it.
        if n_speech < self._min_frames and not self._continued:
            return None
        keep = len(self._frames) if cut else min(len(self._frames), last + 1 + self._post_frames)
        end_idx = last if cut else _trim_hangover(self._frames, onset_idx, last)
        return Utterance(
            pcm=b"".join(self._frames[:keep]),
            rate=self.rate,
            start=self._onset_tick * FRAME_S,
            end=(self._first_tick + end_idx + 1) * FRAME_S,
            cut=cut,
            pcm_start=self._first_tick * FRAME_S,
            voiced_ms=float(self._voiced * FRAME_MS),
        )

    def _reset_idle(self) -> None:
        self._in_speech = False
        self._continued = False
        self._frames = []
        self._ring.clear()
        self._voiced = 0
        self._trailing = 0
        self._last_voiced = -1


def _trim_hangover(frames: list[bytes], first: int, last: int) -> int:
    """Index of the real last speech frame, at most ``_MAX_HANGOVER`` frames before ``last``.

    webrtcvad keeps saying "speech" for ~250 ms after speech stops (its built-in hangover),
    so the offset is refined once per utterance: trailing frames more than ``_TRIM_DB`` below
    the utterance's speech level are taken off. This never moves the offset later, and on
    noisy audio (noise within ``_TRIM_DB`` of speech) it changes nothing.
    """
    speech = np.frombuffer(b"".join(frames[first : last + 1]), dtype="<i2").astype(np.float32)
    n = last - first + 1
    if n < 2:
        return last
    energy = (speech.reshape(n, -1) ** 2).mean(axis=1) + 1e-3
    level_db = 10 * np.log10(energy)
    floor = float(np.percentile(level_db, 90)) - _TRIM_DB
    idx = n - 1
    while idx > 0 and n - 1 - idx < _MAX_HANGOVER and level_db[idx] < floor:
        idx -= 1
    return first + idx


def voiced_ms(pcm: bytes, rate: int, aggressiveness: int = 2) -> float:
    """Milliseconds of ``pcm`` that webrtcvad calls speech (used as STT's VAD gate)."""
    vad = webrtcvad.Vad(aggressiveness)
    if rate not in _NATIVE_RATES:
        pcm = resample_pcm(pcm, rate, 16000)
        rate = 16000
    fb = rate * FRAME_MS // 1000 * 2
    n = 0
    for i in range(0, len(pcm) - fb + 1, fb):
        if vad.is_speech(pcm[i : i + fb], rate):
            n += 1
    return float(n * FRAME_MS)
