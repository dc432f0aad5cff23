"""Line-echo cancellation for the listening copy: the caller's channel, cleaned of our prompts.

A recording holds both legs time-aligned (left = caller, right = what we sent), so the echo
of our prompts in the caller's leg can be *cancelled*: an adaptive filter learns the echo
path from the right channel to the left and subtracts its estimate.

:class:`EchoCanceller` is a partitioned-block frequency-domain adaptive filter (MDF, the
algorithm of Speex's ``mdf.c``, re-done in numpy):

* **Linear canceller.** Overlap-save blocks of ``N`` samples, ``K`` partitions covering
  ``tail_ms`` (delay plus line response), a constrained gradient per partition with a
  proportionate step (partitions holding the echo learn faster, so a 120 ms delay costs no
  convergence time).
* **Double talk.** The step is set per bin from the estimated share of *echo* in the error
  (a leak estimate by regression of error power on echo-estimate power): while the caller
  talks the error is mostly speech and the filter barely moves. A second, foreground filter
  produces the output and only takes the adapted weights when they are measurably better;
  when the adapted ones get worse (divergence in double talk) they are reset to it.
* **Residual echo suppressor.** What the linear filter leaves (misadjustment, G.711
  quantisation that follows the echo's envelope) is removed by a per-bin Wiener gain
  against ``leak × |echo estimate|²`` with a decaying hold, floored at ``-suppress_db``.

Offline use (:func:`cancel_wav`) first learns on the opening seconds and then starts again
from the beginning with what it learned, so the first prompt is cancelled as well as the
last. It reads and writes the WAV in blocks (a 3-hour call is never in memory at once) and
measures each channel's active speech level for the levelling that follows in FFmpeg.

The module needs only numpy and the standard library so that it runs as a child process
(``python helpers/postcall/echo_cancel.py in.wav out.wav``, started through :mod:`helpers.spawn` by
:mod:`helpers.postcall.archive`): the work is Python-heavy and must not compete with the server's
event loop for the GIL.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["STATS_MARK", "AecSettings", "EchoCanceller", "LevelMeter", "cancel_wav"]

#: Prefix of the stats line the child prints last on stderr.
STATS_MARK = "AEC_STATS "

_MIN_LEAK = 0.005
_VAR1_UPDATE = 0.5
_VAR2_UPDATE = 0.25
_VAR_BACKTRACK = 4.0
_SATURATION = 32000.0  # int16 units: a clipped microphone block is not linear, do not learn


@dataclass(frozen=True)
class AecSettings:
    """Tuning of the canceller (the default tail covers echo paths up to about 400 ms)."""

    tail_ms: float = 400.0  # longest echo path modelled: bulk delay plus line response
    frame_ms: float = 32.0  # block length (rounded to a power of two in samples)
    suppress_db: float = 30.0  # most the residual-echo suppressor removes per bin
    warmup_s: float = 20.0  # learn on this much of the start, then process from the start


def _frame_size(rate: int, frame_ms: float) -> int:
    return int(2 ** max(5, round(math.log2(max(1.0, rate * frame_ms / 1000.0)))))


class EchoCanceller:
    """Streaming MDF echo canceller with double-talk control and residual suppression.

    ``process(mic, ref)`` takes float blocks of any (equal) length in [-1, 1] and returns the
    cleaned microphone signal delayed by :attr:`latency` samples; ``flush()`` returns the
    rest, so that the outputs of all calls together are exactly as long as the inputs.
    """

    def __init__(self, rate: int, settings: AecSettings | None = None) -> None:
        s = settings or AecSettings()
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.settings = s
        n = _frame_size(rate, s.frame_ms)
        self.N = n
        self.K = max(1, math.ceil(s.tail_ms * rate / 1000.0 / n))
        bins = n + 1
        k = self.K
        self.W = np.zeros((k, bins), np.complex128)  # adapted (background) filter
        self.Wf = np.zeros((k, bins), np.complex128)  # foreground filter: makes the output
        self.X = np.zeros((k, bins), np.complex128)  # reference spectra, newest first
        self.power = np.zeros(bins)
        self.power_1 = np.zeros(bins)
        self.Eh = np.zeros(bins)
        self.Yh = np.zeros(bins)
        decay = math.exp(-2.4 / k)
        prop = 0.7 * decay ** np.arange(k)
        self.prop = 0.8 * prop / prop.sum()
        self.Pey = 1.0
        self.Pyy = 1.0
        self.leak = 1.0
        self.adapted = False
        self.sum_adapt = 0.0
        self.saturated = 0
        self.Davg1 = self.Davg2 = self.Dvar1 = self.Dvar2 = 0.0
        self.spec_average = n / rate
        self.beta0 = 2.0 * n / rate
        self.beta_max = 0.5 * n / rate
        # Residual-echo suppressor: sqrt-Hann analysis/synthesis over 2N with hop N.
        self.win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2 * n) / (2 * n)))
        self.gmin = 10 ** (-s.suppress_db / 20.0)
        # Residual over-estimate, decision-directed smoothing and hold decay per block. A 2x
        # over-estimate or 0.9-0.98 smoothing took 2-6 dB more off a caller in double talk
        # (tests' synthetic talkers) for echo-only reduction already past the target.
        self.res_over = 1.0
        self.dd = 0.5
        self.hold = 0.6
        self.ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
        self.reset_stream()

    # ------------------------------------------------------------------ stream state

    def reset_stream(self) -> None:
        """Start a new stream at sample 0 but keep what the filter learned (warm start)."""
        n = self.N
        self.X[:] = 0
        self.xwin = np.zeros(2 * n)
        self.last_e = np.zeros(n)
        self.last_y = np.zeros(n)
        self.ola = np.zeros(n)
        self.echo_psd = np.zeros(n + 1)
        self.prior_prev = np.zeros(n + 1)
        self.saturated = 0
        self._mic = np.zeros(0)
        self._ref = np.zeros(0)
        self._skip = n  # the suppressor's overlap-add delays the output by one block
        self._taken = 0
        self._given = 0

    @property
    def latency(self) -> int:
        """Samples by which :meth:`process` output lags its input (until :meth:`flush`)."""
        return self.N

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Feed equal-length float blocks; return the cleaned samples that are ready."""
        mic = np.asarray(mic, np.float64).ravel()
        ref = np.asarray(ref, np.float64).ravel()
        if mic.shape != ref.shape:
            raise ValueError(f"mic and ref differ in length: {mic.size} vs {ref.size}")
        self._taken += mic.size
        self._mic = np.concatenate((self._mic, mic * 32768.0))
        self._ref = np.concatenate((self._ref, ref * 32768.0))
        return self._drain()

    def flush(self) -> np.ndarray:
        """Return the rest of the output; total output length then equals total input."""
        pad = (-self._mic.size) % self.N + self.N
        self._mic = np.concatenate((self._mic, np.zeros(pad)))
        self._ref = np.concatenate((self._ref, np.zeros(pad)))
        return self._drain()

    def _drain(self) -> np.ndarray:
        n = self.N
        blocks = self._mic.size // n
        if blocks == 0:
            return np.zeros(0)
        outs = [self._block(self._mic[i * n:(i + 1) * n], self._ref[i * n:(i + 1) * n])
                for i in range(blocks)]
        self._mic = self._mic[blocks * n:]
        self._ref = self._ref[blocks * n:]
        out = np.concatenate(outs) / 32768.0
        if self._skip:
            cut = min(self._skip, out.size)
            out = out[cut:]
            self._skip -= cut
        out = out[: max(0, self._taken - self._given)]
        self._given += out.size
        return out

    # ------------------------------------------------------------------ one block

    def _block(self, d: np.ndarray, x: np.ndarray) -> np.ndarray:
        n = self.N
        self.xwin[:n] = self.xwin[n:]
        self.xwin[n:] = x
        self.X[1:] = self.X[:-1]
        self.X[0] = np.fft.rfft(self.xwin, norm="forward")
        Sxx = float(x @ x)

        Yf_spec = np.einsum("kb,kb->b", self.Wf, self.X)
        yf = np.fft.irfft(Yf_spec, norm="forward")[n:]
        Yb_spec = np.einsum("kb,kb->b", self.W, self.X)
        yb = np.fft.irfft(Yb_spec, norm="forward")[n:]
        ef = d - yf
        eb = d - yb
        Sff = float(ef @ ef)
        See = float(eb @ eb)
        diff = yf - yb
        Dbf = 10.0 + float(diff @ diff)

        # Foreground/background: take the adapted filter only when it is significantly
        # better; go back to the foreground when the adapted one got significantly worse.
        delta = Sff - See
        self.Davg1 = 0.6 * self.Davg1 + 0.4 * delta
        self.Davg2 = 0.85 * self.Davg2 + 0.15 * delta
        self.Dvar1 = 0.36 * self.Dvar1 + 0.16 * Sff * Dbf
        self.Dvar2 = 0.7225 * self.Dvar2 + 0.0225 * Sff * Dbf
        update = (delta * abs(delta) > Sff * Dbf
                  or self.Davg1 * abs(self.Davg1) > _VAR1_UPDATE * self.Dvar1
                  or self.Davg2 * abs(self.Davg2) > _VAR2_UPDATE * self.Dvar2)
        if update:
            self.Davg1 = self.Davg2 = self.Dvar1 = self.Dvar2 = 0.0
            self.Wf[:] = self.W
            # Cross-fade within the block so the switch of filters makes no click.
            e_out = ef * (1 - self.ramp) + eb * self.ramp
            y_out = yf * (1 - self.ramp) + yb * self.ramp
        else:
            if (-delta * abs(delta) > _VAR_BACKTRACK * Sff * Dbf
                    or -self.Davg1 * abs(self.Davg1) > _VAR_BACKTRACK * self.Dvar1
                    or -self.Davg2 * abs(self.Davg2) > _VAR_BACKTRACK * self.Dvar2):
                self.W[:] = self.Wf
                yb, eb, See = yf, ef, Sff
                Yb_spec = Yf_spec
                self.Davg1 = self.Davg2 = self.Dvar1 = self.Dvar2 = 0.0
            e_out, y_out = ef, yf

        self._adapt(d, eb, yb, See, Sxx)
        return self._suppress(e_out, y_out)

    def _adapt(self, d: np.ndarray, eb: np.ndarray, yb: np.ndarray, See: float,
               Sxx: float) -> None:
        n = self.N
        if not np.isfinite(See) or See > n * 1e9:
            self._reset_filter()  # diverged (it should not; never let it poison the output)
            return
        if np.max(np.abs(d)) >= _SATURATION:
            self.saturated = self.K + 1
        Syy = float(yb @ yb)
        Sey = float(eb @ yb)
        E = np.fft.rfft(np.concatenate((np.zeros(n), eb)), norm="forward")
        Y = np.fft.rfft(np.concatenate((np.zeros(n), yb)), norm="forward")
        Rf = E.real**2 + E.imag**2
        Yf = Y.real**2 + Y.imag**2
        Xf = self.X[0].real**2 + self.X[0].imag**2
        ss = 0.35 / self.K
        self.power = (1 - ss) * self.power + 1 + ss * Xf

        # Leak: how much of the error power moves with the echo estimate's power.
        Eh = Rf - self.Eh
        Yh = Yf - self.Yh
        Pey = float(Eh @ Yh)
        Pyy = math.sqrt(float(Yh @ Yh))
        Pey = Pey / Pyy if Pyy > 0 else 0.0
        sa = self.spec_average
        self.Eh = (1 - sa) * self.Eh + sa * Rf
        self.Yh = (1 - sa) * self.Yh + sa * Yf
        See_safe = max(See, 1.0)
        alpha = min(self.beta0 * Syy, self.beta_max * See_safe) / See_safe
        self.Pey = (1 - alpha) * self.Pey + alpha * Pey
        self.Pyy = max(1.0, (1 - alpha) * self.Pyy + alpha * Pyy)
        self.Pey = min(max(self.Pey, _MIN_LEAK * self.Pyy), self.Pyy)
        self.leak = self.Pey / self.Pyy

        RER = (0.0001 * Sxx + 3.0 * self.leak * Syy) / See_safe
        RER = min(max(RER, Sey * Sey / (1 + See_safe * Syy)), 0.5)
        if not self.adapted and self.sum_adapt > self.K and self.leak > 0.03:
            self.adapted = True
        if self.adapted:
            # Step per bin: the share of echo in the error (small in double talk).
            e = Rf + 1.0
            r = np.minimum(self.leak * Yf, 0.5 * e)
            r = 0.7 * r + 0.3 * RER * e
            self.power_1 = r / (e * (self.power + 10.0))
        else:
            rate = 0.0
            if Sxx > 2 * n * 1000.0:
                rate = min(0.25 * Sxx, 0.25 * See_safe) / See_safe
            self.power_1 = np.full(n + 1, rate) / (self.power + 10.0)
            self.sum_adapt += rate

        if self.saturated:
            self.saturated -= 1
            return
        if self.adapted:
            mag = np.sqrt(np.sum(self.W.real**2 + self.W.imag**2, axis=1)) * 1e3 + 1.0
            mag += 0.1 * mag.max()
            self.prop = 0.99 * mag / (mag.sum() + 1.0)
        grad = (self.power_1[None, :] * self.prop[:, None]) * np.conj(self.X) * E[None, :]
        self.W += grad
        # Constrain partitions to N taps (linear, not circular, convolution).
        w = np.fft.irfft(self.W, axis=1, norm="forward")
        w[:, n:] = 0.0
        self.W = np.fft.rfft(w, axis=1, norm="forward")

    def _reset_filter(self) -> None:
        self.W[:] = 0
        self.Wf[:] = 0
        self.power[:] = 0
        self.adapted = False
        self.sum_adapt = 0.0
        self.Pey = self.Pyy = 1.0
        self.leak = 1.0

    def _suppress(self, e: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Residual-echo suppression on [last block, this block]; returns the last block."""
        frame_e = np.concatenate((self.last_e, e)) * self.win
        frame_y = np.concatenate((self.last_y, y)) * self.win
        self.last_e = e
        self.last_y = y
        E = np.fft.rfft(frame_e)
        Y = np.fft.rfft(frame_y)
        Pe = E.real**2 + E.imag**2
        leak2 = min(1.0, self.res_over * self.leak)
        residual = leak2 * (Y.real**2 + Y.imag**2)
        # The line's own tail rings on after our speech stops: hold the estimate, decaying.
        self.echo_psd = np.maximum(self.hold * self.echo_psd, residual)
        post = Pe / (self.echo_psd + 1e-3)
        prior = self.dd * self.prior_prev + (1 - self.dd) * np.maximum(post - 1.0, 0.0)
        gain = np.maximum(prior / (1.0 + prior), self.gmin)
        gain = np.where(self.echo_psd < 1e-2, 1.0, gain)
        self.prior_prev = gain * gain * post
        out = np.fft.irfft(gain * E) * self.win
        block = self.ola + out[: self.N]
        self.ola = out[self.N:].copy()
        return block


class LevelMeter:
    """Active level of one channel in 20 ms frames, from a bounded 1 dB histogram."""

    def __init__(self, rate: int) -> None:
        self.frame = max(1, rate // 50)
        self.counts = np.zeros(121, np.int64)  # -120..0 dBFS
        self.power = np.zeros(121)
        self._rest = np.zeros(0)

    def add(self, x: np.ndarray) -> None:
        """Account float samples in [-1, 1]."""
        x = np.concatenate((self._rest, x))
        m = x.size // self.frame
        self._rest = x[m * self.frame:]
        if m == 0:
            return
        p = np.mean(x[: m * self.frame].reshape(m, self.frame) ** 2, axis=1)
        db = np.clip(np.round(10 * np.log10(p + 1e-12)), -120, 0).astype(int) + 120
        np.add.at(self.counts, db, 1)
        np.add.at(self.power, db, p)

    def active_dbfs(self) -> float | None:
        """Mean power of the frames within 25 dB of the loud end (95th percentile), in dBFS;
        ``None`` when there is nothing above -60 dBFS (silence: leave the gain alone)."""
        total = int(self.counts.sum())
        if total == 0:
            return None
        cum = np.cumsum(self.counts)
        p95 = int(np.searchsorted(cum, 0.95 * total)) - 120
        floor = max(-60, p95 - 25)
        sel = slice(floor + 120, 121)
        n = int(self.counts[sel].sum())
        if p95 < -60 or n == 0:
            return None
        return float(10 * np.log10(self.power[sel].sum() / n))


def cancel_wav(src: str | Path, dst: str | Path, settings: AecSettings | None = None,
               block_s: float = 2.0) -> dict[str, object]:
    """Write ``dst``: ``src`` with the echo of the right channel removed from the left one.

    ``src`` must be 16-bit PCM WAV, mono or stereo (mono and a silent right channel pass
    through unchanged). Returns the rate, channels, sample count and each output channel's
    active level in dBFS (``None``: silent) for levelling.
    """
    s = settings or AecSettings()
    with wave.open(str(src), "rb") as rf:
        ch, width, rate, total = (rf.getnchannels(), rf.getsampwidth(), rf.getframerate(),
                                  rf.getnframes())
        if width != 2 or ch not in (1, 2):
            raise ValueError(f"need 16-bit mono or stereo PCM, got {ch} ch of {8 * width} bit")
        aec = EchoCanceller(rate, s) if ch == 2 else None
        step = max(1, int(block_s * rate))
        if aec is not None and s.warmup_s > 0:
            remaining = min(total, int(s.warmup_s * rate))
            while remaining > 0:
                frames = _read(rf, min(step, remaining), ch)
                remaining -= frames.shape[0]
                if frames.shape[0] == 0:
                    break
                aec.process(frames[:, 0], frames[:, 1])
            aec.reset_stream()
            rf.rewind()
        meters = [LevelMeter(rate) for _ in range(ch)]
        with wave.open(str(dst), "wb") as wf:
            wf.setnchannels(ch)
            wf.setsampwidth(2)
            wf.setframerate(rate)
            # The canceller's output lags its input: right samples wait here for their left.
            right = np.zeros(0)
            while True:
                frames = _read(rf, step, ch)
                if frames.shape[0] == 0:
                    break
                if aec is None:
                    _write(wf, meters, [frames[:, 0]])
                    continue
                left = aec.process(frames[:, 0], frames[:, 1])
                right = np.concatenate((right, frames[:, 1]))
                _write(wf, meters, [left, right[: left.size]])
                right = right[left.size:]
            if aec is not None:
                left = aec.flush()
                _write(wf, meters, [left, right[: left.size]])
    return {"rate": rate, "channels": ch, "frames": total,
            "levels": [m.active_dbfs() for m in meters]}


def _write(wf: wave.Wave_write, meters: list[LevelMeter], chans: list[np.ndarray]) -> None:
    for meter, x in zip(meters, chans, strict=True):
        meter.add(x)
    wf.writeframes(_pcm(np.stack(chans, axis=1)))


def _read(rf: wave.Wave_read, frames: int, ch: int) -> np.ndarray:
    raw = rf.readframes(frames)
    return (np.frombuffer(raw, "<i2").astype(np.float64) / 32768.0).reshape(-1, ch)


def _pcm(x: np.ndarray) -> bytes:
    return bytes(np.round(np.clip(x * 32768.0, -32768, 32767)).astype("<i2").tobytes())


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: cancel ``src`` into ``dst``; print the stats line on stderr."""
    ap = argparse.ArgumentParser(description="Cancel the right channel's echo in the left.")
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--tail-ms", type=float, default=AecSettings.tail_ms)
    ap.add_argument("--suppress-db", type=float, default=AecSettings.suppress_db)
    ap.add_argument("--warmup-s", type=float, default=AecSettings.warmup_s)
    args = ap.parse_args(argv)
    settings = AecSettings(tail_ms=args.tail_ms, suppress_db=args.suppress_db,
                           warmup_s=args.warmup_s)
    try:
        stats = cancel_wav(args.src, args.dst, settings)
    except (ValueError, wave.Error, EOFError, OSError) as exc:
        print(f"echo_cancel: {args.src}: {exc}", file=sys.stderr)
        return 2
    print(STATS_MARK + json.dumps(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
