"""Per-call buffers are bounded in bytes, not only in seconds (192 kHz is 384 kB/s)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from audiosocket.playout import Playout
from helpers import recorder as rec
from helpers.speech.stt import Segment, SttCallback, SttDropped, SttEngine, SttOutcome
from helpers.speech.vad import Utterance, VadSegmenter
from tests.audiosocket.test_clock import FakeTransport
from tests.helpers.speech.test_stt import FakeBackend, _speechlike

FRAME_192K = 3840 * 2


def test_playout_holds_at_most_its_bytes_at_192khz() -> None:
    p = Playout(FakeTransport(), 192000, max_seconds=600.0, max_bytes=16 * 2**20)
    assert p.max_frames * p.frame_size <= 16 * 2**20
    for _ in range(p.max_frames + 100):
        p.feed(bytes(p.frame_size))
    assert p.queued_frames == p.max_frames
    # At 8 kHz the seconds still decide: 600 s is 9.6 MB.
    assert Playout(FakeTransport(), 8000, max_seconds=600.0).max_frames == 30000


def test_vad_utterances_and_preroll_are_bounded_in_bytes() -> None:
    # Speech-like sound that never pauses: cut at the maximum over and over.
    seg = VadSegmenter(192000, aggressiveness=0, max_utterance_s=15.0,
                       max_utterance_bytes=2**20, pre_roll_ms=60_000)
    audio = _speechlike(16.0, rate=192000)
    utts: list[Utterance] = []
    for tick in range(800):
        utts.extend(seg.push(audio[tick * FRAME_192K : (tick + 1) * FRAME_192K], tick))
        assert len(seg._ring) * FRAME_192K <= 2**20 // 4 + FRAME_192K
        assert len(seg._frames) * FRAME_192K <= 2**20
    assert utts and all(len(u.pcm) <= 2**20 for u in utts)


def test_stt_queue_drops_oldest_past_its_bytes() -> None:
    fake = FakeBackend()
    # Deadlines far away: this is about the byte bound alone (a busy machine's measured
    # real-time factor must not turn a byte drop into a deadline refusal).
    eng = SttEngine(backend=fake, workers=1, queue_capacity=50, queue_max_bytes=3 * 2**20,
                    live_deadline_s=3600.0)
    eng.start()
    fake.release.clear()  # the worker holds the next job
    dropped: list[int] = []
    lock = threading.Lock()

    def cb_for(i: int) -> SttCallback:
        def cb(seg: Segment | None, outcome: SttOutcome) -> None:
            if isinstance(outcome, SttDropped):
                with lock:
                    dropped.append(i)
        return cb

    big = bytes(2**20)  # ~2.7 s at 192 kHz
    # Declared voiced, so job 0 passes the VAD gate and the held backend keeps it: the worker
    # is then busy for the rest of the test (silence would be refused at once, and the worker
    # would take job 1 or 2 depending on timing).
    def utt() -> Utterance:
        return Utterance(big, 192000, 0.0, 1.0, voiced_ms=2000.0)

    assert eng.submit("c", utt(), cb_for(0))
    deadline = time.monotonic() + 30
    while fake.calls < 2 and time.monotonic() < deadline:  # the warm-up, then job 0
        time.sleep(0.005)
    assert fake.calls == 2 and eng.queue_depth == 0
    for i in range(1, 11):
        eng.submit("c", utt(), cb_for(i))
    assert eng.queue_depth == 3 and eng._queued_bytes == 3 * 2**20
    with lock:
        assert dropped == [1, 2, 3, 4, 5, 6, 7]  # oldest first
    fake.release.set()
    eng.stop()


def test_recorder_drops_inbound_far_ahead_of_the_clock(tmp_path: Path) -> None:
    # A peer sending faster than real time: the recorder keeps 2 s ahead, not the flood.
    writer = rec.RecorderWriter()
    r = rec.CallRecorder(tmp_path / "a.wav", 192000, writer=writer)
    frame = bytes(FRAME_192K)
    for _ in range(3000):  # 60 s of audio while the clock is at tick 10
        r.add_inbound(frame, 10)
    assert len(r._in) // r.frame_bytes <= 10 + rec.AHEAD_SLOTS + 1  # slots held
    r.close()
    assert writer.flush()
    assert rec.wav_seconds(tmp_path / "a.wav") <= (10 + rec.AHEAD_SLOTS + 1) * 0.02
