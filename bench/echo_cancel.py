"""Echo cancellation of the listening copy, on a simulated telephone line echo.

Caller speech and our prompts are Piper speech (the bundled voice, at 8 kHz). The caller's
leg is the caller plus the line echo of our prompts: bulk delay, a short dispersive line
response, echo return loss (ERL) below our level, background noise, and G.711 mu-law
quantisation of the whole leg, as a real line does. The call alternates prompts alone
(echo only), the caller alone, and the caller talking over a prompt (double talk).

Printed per condition (delay x ERL):

* ERLE: echo reduction in the echo-only stretches, 10 log10(raw / cleaned), for FFmpeg's
  ``anlms`` (time-domain NLMS), our MDF linear filter alone (no suppressor), and the
  product canceller (MDF + double-talk control + residual suppressor, warm start), and
  for the finished MP3 listening copy (caller leg; its levelling gain is taken out by
  comparing the echo to the caller's own speech level before and after).
* WER of the caller's utterances through the bundled Whisper tiny.en: clean reference (the
  line without echo), raw (with echo), cancelled, and the MP3 listening copy.

    .venv/bin/python bench/echo_cancel.py               # 9 conditions, about 3 minutes
    .venv/bin/python bench/echo_cancel.py --quick       # 3 conditions
    .venv/bin/python bench/echo_cancel.py --cost        # wall time of the MP3 step per filter
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from speech_fixtures import synth_speech  # noqa: E402

from helpers import spawn  # noqa: E402
from helpers.audio import pcm_to_float, resample_float, write_wav  # noqa: E402
from helpers.ffmpeg import ffmpeg_binary  # noqa: E402
from helpers.postcall.archive import ArchiveSettings, archive_mp3  # noqa: E402
from helpers.postcall.echo_cancel import AecSettings, cancel_wav  # noqa: E402
from helpers.speech.stt import WhisperBackend  # noqa: E402
from helpers.tools.wer import word_errors  # noqa: E402

RATE = 8000
PROMPTS = [
    "Welcome to the demo line. Press one or say sales, press two or say support.",
    "Thank you. Please hold while I look up your account and your most recent order.",
    "Your order was shipped yesterday and should arrive on Monday before noon.",
    "Is there anything else I can help you with today? You can also press zero.",
    "I am sorry, I did not catch that. Please say it again after the tone.",
    "Your call is important to us. The next available agent will be with you shortly.",
]
CALLER = [
    "Hi, I am calling about the invoice I received last week.",
    "My account number is four five seven two one.",
    "The package never arrived at my house on Friday.",
    "Can I change the delivery address to my office instead?",
    "I would like to speak to someone in the billing department please.",
    "No, that is everything, thank you very much for your help.",
]


@dataclass
class Call:
    """One simulated call: the legs, and where the caller speaks and where echo is alone."""

    mic: np.ndarray
    ref: np.ndarray
    clean: np.ndarray  # the caller's leg without echo (same noise and mu-law)
    utterances: list[tuple[int, int, str]]
    echo_only: np.ndarray  # boolean mask


def mulaw(x: np.ndarray) -> np.ndarray:
    """G.711 mu-law encode and decode (8-bit quantisation that follows the signal level)."""
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu)
    y = np.round(y * 127.5) / 127.5
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def build_call(delay_ms: float, erl_db: float, seed: int) -> Call:
    rng = np.random.default_rng(seed)
    prompts = [0.5 * pcm_to_float(synth_speech(t, RATE)) for t in PROMPTS]
    caller = [0.35 * pcm_to_float(synth_speech(t, RATE, length_scale=1.15)) for t in CALLER]
    gap = np.zeros(int(0.6 * RATE))
    ref_parts: list[np.ndarray] = []
    near_parts: list[np.ndarray] = []
    utterances: list[tuple[int, int, str]] = []
    alone: list[tuple[int, int]] = []
    pos = 0

    def add(r: np.ndarray, n: np.ndarray) -> None:
        nonlocal pos
        m = max(r.size, n.size)
        ref_parts.append(np.pad(r, (0, m - r.size)))
        near_parts.append(np.pad(n, (0, m - n.size)))
        pos += m

    for i, (p, c) in enumerate(zip(prompts, caller, strict=True)):
        alone.append((pos, pos + p.size))
        add(p, np.zeros(0))  # a prompt with the caller silent: echo only
        add(gap, gap)
        if i % 2 == 0:
            utterances.append((pos, pos + c.size, CALLER[i]))
            add(np.zeros(0), c)  # the caller alone
        else:
            lead = int(0.8 * RATE)  # double talk: the caller talks over the next prompt
            q = prompts[(i + 2) % len(prompts)]
            utterances.append((pos + lead, pos + lead + c.size, CALLER[i]))
            add(q, np.concatenate((np.zeros(lead), c)))
        add(gap, gap)
    ref = np.concatenate(ref_parts)
    near = np.concatenate(near_parts)
    d = int(delay_ms * RATE / 1000)
    h = np.zeros(d + 40)
    h[d] = 1.0
    h[d + 1:] = 0.25 * rng.standard_normal(39) * np.exp(-np.arange(39) / 6.0)
    echo = np.convolve(ref, h)[: ref.size]
    echo *= np.sqrt(np.mean(ref**2) / np.mean(echo**2)) * 10 ** (-erl_db / 20)
    noise = 10 ** (-62 / 20) * rng.standard_normal(ref.size)
    mic = mulaw(near + echo + noise)
    clean = mulaw(near + noise)
    mask = np.zeros(ref.size, bool)
    tail = d + 40 + int(0.15 * RATE)  # the echo outlasts the prompt by the path length
    for a, b in alone:
        mask[a + int(0.3 * RATE): b + tail] = True
    for a, b, _ in utterances:
        mask[a - int(0.05 * RATE): b + int(0.1 * RATE)] = False
    return Call(mic, ref, clean, utterances, mask)


def write_stereo(path: Path, left: np.ndarray, right: np.ndarray) -> Path:
    pcm = np.round(np.clip(np.stack((left, right), 1) * 32768, -32768, 32767)).astype("<i2")
    write_wav(path, pcm.tobytes(), RATE, channels=2)
    return path


def read_left(path: Path) -> np.ndarray:
    import wave

    with wave.open(str(path)) as wf:
        raw = wf.readframes(wf.getnframes())
        return np.frombuffer(raw, "<i2").reshape(-1, wf.getnchannels())[:, 0] / 32768.0


def anlms(src: Path, out: Path) -> np.ndarray:
    """FFmpeg's anlms, reference (right) against the caller leg (left). The settings are the
    best of a small sweep here (mu 0.1-0.9, eps 0.01-1; ``out_mode=o`` is the cancelled leg)."""
    graph = ("[0:a]channelsplit=channel_layout=stereo[l][r];"
             "[r][l]anlms=order=1100:mu=0.1:eps=1:out_mode=o[e]")
    cmd = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-i", str(src),
           "-filter_complex", graph, "-map", "[e]", "-f", "s16le", str(out)]
    done = spawn.run(cmd, timeout_s=120)
    if done.returncode:
        raise RuntimeError(done.stderr_tail.decode())
    return pcm_to_float(out.read_bytes()).astype(np.float64)


def decode_left(path: Path) -> np.ndarray:
    """The caller leg (left) of an archive, decoded by FFmpeg at the call's rate."""
    cmd = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(path), "-ac", "2",
           "-ar", str(RATE), "-f", "s16le", "-"]
    done = spawn.run(cmd, timeout_s=120, capture_stdout=True)
    if done.returncode:
        raise RuntimeError(done.stderr_tail.decode())
    return np.frombuffer(done.stdout, "<i2").reshape(-1, 2)[:, 0] / 32768.0


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(x * x) + 1e-20))


def transcribe(stt: WhisperBackend, leg: np.ndarray, utts: list[tuple[int, int, str]]
               ) -> tuple[int, int]:
    errs = words = 0
    for a, b, text in utts:
        seg = leg[max(0, a - int(0.2 * RATE)): b + int(0.3 * RATE)].astype(np.float32)
        hyp = stt.recognize(resample_float(seg, RATE, 16000)).text
        e, n = word_errors(text, hyp)
        errs += e
        words += n
    return errs, words


async def cost(minutes: float = 5.0, rounds: int = 3) -> None:
    """Wall time of the whole MP3 step for each ``listen_filter``, interleaved."""
    call = build_call(60, 10, seed=0)
    reps = int(minutes * 60 * RATE / call.mic.size) + 1
    n = int(minutes * 60 * RATE)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = write_stereo(tmp / "long.wav", np.tile(call.mic, reps)[:n],
                           np.tile(call.ref, reps)[:n])
        times: dict[str, list[float]] = {"aec": [], "aecho": [], "none": []}
        for _ in range(rounds):
            for name, runs in times.items():
                t0 = time.perf_counter()
                await archive_mp3(src, tmp / f"{name}.mp3", ArchiveSettings(listen_filter=name))
                runs.append(time.perf_counter() - t0)
        for name, runs in times.items():
            print(f"{name:6} {minutes:g}-minute 8 kHz call: MP3 step "
                  + ", ".join(f"{t:.2f}" for t in runs) + " s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3 conditions instead of 9")
    ap.add_argument("--cost", action="store_true",
                    help="only time archive_mp3 on a 5-minute call, per listen_filter")
    args = ap.parse_args()
    if args.cost:
        asyncio.run(cost())
        return
    conds = [(d, e) for d in (20, 60, 120) for e in (6, 10, 15)]
    if args.quick:
        conds = [(20, 6), (60, 10), (120, 15)]
    stt = WhisperBackend(cpu_threads=2)
    totals = {k: [0, 0] for k in ("clean", "raw", "aec", "mp3")}
    print("| delay | ERL | anlms | MDF linear | canceller | MP3 copy | WER clean | raw | "
          "cancelled | MP3 copy | AEC CPU s per call minute |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i, (delay, erl) in enumerate(conds):
            call = build_call(delay, erl, seed=i)
            src = write_stereo(tmp / f"c{i}.wav", call.mic, call.ref)
            m = call.echo_only
            raw_e = db(call.mic[m])
            lms = anlms(src, tmp / f"n{i}.raw")
            cancel_wav(src, tmp / f"l{i}.wav", AecSettings(suppress_db=0.0))
            linear = read_left(tmp / f"l{i}.wav")
            t0 = time.process_time()  # CPU time: the machine is shared, wall time is noise
            cancel_wav(src, tmp / f"a{i}.wav")
            aec_s = time.process_time() - t0
            aec = read_left(tmp / f"a{i}.wav")
            mp3_path = tmp / f"m{i}.mp3"
            asyncio.run(archive_mp3(src, mp3_path))
            mp3 = decode_left(mp3_path)
            mp3 = np.pad(mp3, (0, max(0, call.mic.size - mp3.size)))[: call.mic.size]
            speech = np.zeros(call.mic.size, bool)
            for a, b, _ in call.utterances:
                speech[a:b] = True
            # Echo relative to the caller's own speech: immune to the copy's levelling gain.
            mp3_erle = (raw_e - db(call.mic[speech])) - (db(mp3[m]) - db(mp3[speech]))
            row = [raw_e - db(lms[m]), raw_e - db(linear[m]), raw_e - db(aec[m]), mp3_erle]
            wers = {}
            for key, leg in (("clean", call.clean), ("raw", call.mic), ("aec", aec),
                             ("mp3", mp3)):
                e, n = transcribe(stt, leg, call.utterances)
                totals[key][0] += e
                totals[key][1] += n
                wers[key] = 100 * e / n
            minutes = call.mic.size / RATE / 60
            print(f"| {delay} ms | {erl} dB | " + " | ".join(f"{v:.1f} dB" for v in row)
                  + " | " + " | ".join(f"{wers[k]:.1f}%" for k in ("clean", "raw", "aec", "mp3"))
                  + f" | {aec_s / minutes:.2f} |", flush=True)
    print()
    print("WER over all conditions: " + ", ".join(
        f"{k} {100 * e / n:.1f}% ({e}/{n})" for k, (e, n) in totals.items()))


if __name__ == "__main__":
    main()
