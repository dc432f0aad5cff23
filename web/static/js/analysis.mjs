// Pure audio checks used by the validator worker (no DOM, no ONNX): level, clipping,
// resampling and the energy-based speech heuristic that stands in when Silero is absent.

export const SILENCE_DBFS = -55;   // the server's validate_audio threshold
export const CLIP_LEVEL = 0.999;   // |x| at or above this counts as clipped
export const CLIP_FAIL = 0.001;    // over 0.1 % clipped samples: refuse
export const CLIP_WARN = 0.0001;   // over 0.01 %: accept with a warning
export const MIN_RATE = 8000;      // telephony; anything lower cannot carry speech well
export const MIN_SPEECH_S = 0.4;   // at least this much speech somewhere in the file

const db = (x) => (x > 0 ? 20 * Math.log10(x) : -Infinity);

/** Peak and RMS (dBFS) and the fraction of clipped samples. */
export function levels(samples) {
  let peak = 0, sum = 0, clipped = 0;
  for (let i = 0; i < samples.length; i++) {
    const a = Math.abs(samples[i]);
    if (a > peak) peak = a;
    sum += a * a;
    if (a >= CLIP_LEVEL) clipped++;
  }
  const n = Math.max(1, samples.length);
  return { peakDb: db(peak), rmsDb: db(Math.sqrt(sum / n)), clippedRatio: clipped / n };
}

/**
 * Resample mono float audio to `dst` Hz: box-filter averaging when going down (an
 * anti-alias filter good enough for VAD), linear interpolation when going up.
 */
export function resample(samples, src, dst) {
  if (src === dst) return samples;
  const ratio = src / dst;
  const out = new Float32Array(Math.floor(samples.length / ratio));
  if (ratio > 1) {
    for (let i = 0; i < out.length; i++) {
      const a = Math.floor(i * ratio), b = Math.min(samples.length, Math.floor((i + 1) * ratio));
      let s = 0;
      for (let j = a; j < b; j++) s += samples[j];
      out[i] = b > a ? s / (b - a) : 0;
    }
  } else {
    for (let i = 0; i < out.length; i++) {
      const p = i * ratio, j = Math.floor(p), f = p - j;
      const x0 = samples[j] || 0, x1 = samples[Math.min(j + 1, samples.length - 1)] || 0;
      out[i] = x0 + (x1 - x0) * f;
    }
  }
  return out;
}

function percentile(sorted, q) {
  if (!sorted.length) return -Infinity;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/**
 * Energy heuristic on 16 kHz audio: speech is loud in bursts (syllables and pauses give a
 * wide spread of frame energies) and its voiced frames cross zero far less often than
 * noise does. White noise has flat energy and a zero-crossing rate near 0.5; silence has
 * no energy. Returns {speechSeconds, dynamicDb, frames}.
 */
export function energySpeech(x16) {
  const N = 480; // 30 ms at 16 kHz
  const frames = [];
  for (let i = 0; i + N <= x16.length; i += N) {
    let e = 0, z = 0;
    for (let j = i; j < i + N; j++) {
      e += x16[j] * x16[j];
      if (j > i && (x16[j] >= 0) !== (x16[j - 1] >= 0)) z++;
    }
    frames.push({ db: 10 * Math.log10(e / N + 1e-12), zcr: z / N });
  }
  const sorted = frames.map((f) => f.db).sort((a, b) => a - b);
  const floor = percentile(sorted, 0.1), top = percentile(sorted, 0.9);
  const dynamicDb = top - floor;
  const gate = Math.max(floor + 10, -50);
  let speechFrames = 0;
  if (dynamicDb >= 12) {
    for (const f of frames) if (f.db > gate && f.zcr < 0.25) speechFrames++;
  }
  return { speechSeconds: (speechFrames * N) / 16000, dynamicDb, frames: frames.length };
}
