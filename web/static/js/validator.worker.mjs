// The upload validator's Web Worker: every check on the decoded samples runs here, off the
// page's main thread. The page decodes (OfflineAudioContext is not available in workers)
// and transfers a mono Float32Array; we answer with a verdict and one line per check.
//
// Speech detection uses Silero VAD v5 through ONNX Runtime Web (WASM, single thread), both
// served from /static/vendor/ (installed by scripts/web-assets.sh from npm). Without them
// the energy heuristic in analysis.mjs is used and the verdict says the VAD check is off.
import { CLIP_FAIL, CLIP_WARN, MIN_RATE, MIN_SPEECH_S, SILENCE_DBFS, energySpeech, levels, resample } from "./analysis.mjs";

const VENDOR = "/static/vendor/";
const FRAME = 512;        // Silero v5 at 16 kHz: 32 ms frames
const CONTEXT = 64;       // ... each preceded by the last 64 samples of the previous one
const THRESHOLD = 0.5;
const ENOUGH_SPEECH_S = 2; // stop scanning once this much speech is found (long files)

let vadPromise = null;

/** Load ONNX Runtime Web and the Silero model once; resolves to null when unavailable. */
function loadVad() {
  if (!vadPromise) {
    vadPromise = (async () => {
      try {
        const ort = await import(VENDOR + "ort/ort.wasm.min.mjs");
        ort.env.wasm.wasmPaths = VENDOR + "ort/";
        ort.env.wasm.numThreads = 1; // no cross-origin isolation, so no SharedArrayBuffer
        ort.env.wasm.proxy = false;
        ort.env.logLevel = "error";
        const resp = await fetch(VENDOR + "vad/silero_vad_v5.onnx");
        if (!resp.ok) throw new Error(`model: HTTP ${resp.status}`);
        const session = await ort.InferenceSession.create(new Uint8Array(await resp.arrayBuffer()),
          { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
        return { ort, session, error: null };
      } catch (err) {
        return { ort: null, session: null, error: String(err && err.message || err) };
      }
    })();
  }
  return vadPromise;
}

/** Seconds of speech by Silero over 16 kHz audio (early exit after ENOUGH_SPEECH_S). */
async function sileroSpeech(vad, x16) {
  const { ort, session } = vad;
  let state = new ort.Tensor("float32", new Float32Array(2 * 128), [2, 1, 128]);
  const sr = new ort.Tensor("int64", BigInt64Array.from([16000n]), []);
  let context = new Float32Array(CONTEXT);
  let speechFrames = 0, frames = 0, maxProb = 0;
  for (let i = 0; i + FRAME <= x16.length; i += FRAME) {
    const input = new Float32Array(CONTEXT + FRAME);
    input.set(context, 0);
    input.set(x16.subarray(i, i + FRAME), CONTEXT);
    context = x16.slice(i + FRAME - CONTEXT, i + FRAME);
    const out = await session.run({ input: new ort.Tensor("float32", input, [1, input.length]), state, sr });
    state = out.stateN;
    const p = out.output.data[0];
    if (p > maxProb) maxProb = p;
    frames++;
    if (p >= THRESHOLD) speechFrames++;
    if ((speechFrames * FRAME) / 16000 >= ENOUGH_SPEECH_S) break;
  }
  return { speechSeconds: (speechFrames * FRAME) / 16000, frames, maxProb };
}

async function analyse({ samples, rate, limits, sniffedRate }) {
  const started = performance.now();
  const checks = [];
  const add = (id, status, label, detail = "") => checks.push({ id, status, label, detail });
  add("decode", "pass", "Decodes", `${samples.length.toLocaleString()} samples at ${rate} Hz`);

  const duration = samples.length / rate;
  if (duration < limits.min_seconds) add("duration", "fail", "Too short", `${duration.toFixed(2)} s; at least ${limits.min_seconds} s`);
  else if (duration > limits.max_seconds) add("duration", "fail", "Too long", `${Math.round(duration)} s; at most ${limits.max_seconds} s`);
  else add("duration", "pass", "Duration", `${duration.toFixed(2)} s`);

  if (sniffedRate == null) add("rate", "off", "Sample rate", "not stated by this container; decoded at " + rate + " Hz");
  else if (sniffedRate < MIN_RATE) add("rate", "fail", "Sample rate too low", `${sniffedRate} Hz; at least ${MIN_RATE} Hz`);
  else add("rate", "pass", "Sample rate", `${sniffedRate} Hz`);

  const lv = levels(samples);
  const silent = !(lv.rmsDb >= SILENCE_DBFS);
  if (silent) add("level", "fail", "Silent", `level ${Number.isFinite(lv.rmsDb) ? lv.rmsDb.toFixed(0) : "−∞"} dBFS (needs > ${SILENCE_DBFS})`);
  else add("level", "pass", "Level", `RMS ${lv.rmsDb.toFixed(1)} dBFS, peak ${lv.peakDb.toFixed(1)} dBFS`);

  const pct = (lv.clippedRatio * 100).toFixed(3) + " % of samples at full scale";
  if (lv.clippedRatio > CLIP_FAIL) add("clipping", "fail", "Clipped", pct);
  else if (lv.clippedRatio > CLIP_WARN) add("clipping", "warn", "Some clipping", pct);
  else add("clipping", "pass", "No clipping", pct);

  let engine = "energy";
  if (silent) {
    add("speech", "fail", "No speech", "nothing to hear");
  } else {
    const x16 = resample(samples, rate, 16000);
    const vad = await loadVad();
    if (vad.session) {
      engine = "silero";
      const r = await sileroSpeech(vad, x16);
      const detail = `Silero VAD: ${r.speechSeconds.toFixed(2)} s of speech (max p=${r.maxProb.toFixed(2)})`;
      add("speech", r.speechSeconds >= MIN_SPEECH_S ? "pass" : "fail", r.speechSeconds >= MIN_SPEECH_S ? "Speech" : "No speech", detail);
    } else {
      const r = energySpeech(x16);
      const detail = `energy heuristic: ${r.speechSeconds.toFixed(2)} s speech-like, ${r.dynamicDb.toFixed(0)} dB spread`;
      add("speech", r.speechSeconds >= MIN_SPEECH_S ? "pass" : "fail", r.speechSeconds >= MIN_SPEECH_S ? "Speech (heuristic)" : "No speech (heuristic)", detail);
      add("vad", "off", "Silero VAD check off", vad.error ? `assets not available: ${vad.error}` : "assets not installed");
    }
  }
  const accepted = !checks.some((c) => c.status === "fail");
  return { accepted, checks, engine, ms: Math.round(performance.now() - started) };
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  try {
    if (msg.type === "probe") {
      const vad = await loadVad();
      self.postMessage({ type: "probe", id: msg.id, vad: Boolean(vad.session), error: vad.error });
    } else if (msg.type === "analyse") {
      self.postMessage({ type: "result", id: msg.id, ...(await analyse(msg)) });
    }
  } catch (err) {
    self.postMessage({ type: "error", id: msg.id, error: String(err && err.message || err) });
  }
};
