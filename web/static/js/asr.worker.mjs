// The upload page's optional transcript check, in its own Web Worker (loading Whisper takes
// seconds and must neither block the page nor delay the validator's answer).
//
// transformers.js (vendored into /static/vendor/transformers/ by scripts/web-assets.sh) runs
// a Whisper tiny.en that the server serves from /static/models/whisper-tiny.en/ (written by
// `audiosocket models build-web` or `models fetch-web`). Everything is local: remote models
// are off, and the WASM runtime comes from our vendor folder, never a CDN (the CSP forbids
// it anyway). The model files are kept in the browser's Cache API after the first load.
import { resample } from "./analysis.mjs";

const VENDOR = "/static/vendor/transformers/";
const MODELS = "/static/models/";
const MODEL_ID = "whisper-tiny.en";
// One Whisper window: enough to tell what a recording is about without making a long file
// wait minutes in a browser tab.
const MAX_SECONDS = 30;

let asrPromise = null;

/** Load transformers.js and the Whisper pipeline once; resolves to {asr, ms} or {error}. */
function loadAsr() {
  if (!asrPromise) {
    asrPromise = (async () => {
      const started = performance.now();
      try {
        const probe = await fetch(MODELS + MODEL_ID + "/config.json", { method: "HEAD" });
        if (!probe.ok) return { asr: null, error: "no model on this server (audiosocket models build-web)" };
        const T = await import(VENDOR + "transformers.min.js");
        T.env.allowLocalModels = true;
        T.env.allowRemoteModels = false;
        // A path, not a full URL: with a URL transformers.js skips the tokenizer files.
        T.env.localModelPath = MODELS;
        T.env.useBrowserCache = true; // ~150 MB: fetched once, then read from the Cache API
        // transformers.js would otherwise turn the WASM glue into a blob: module, which our
        // CSP (script-src 'self') refuses; the browser's HTTP cache still keeps the WASM.
        T.env.useWasmCache = false;
        const wasm = T.env.backends.onnx.wasm;
        wasm.wasmPaths = {
          mjs: VENDOR + "ort-wasm-simd-threaded.asyncify.mjs",
          wasm: VENDOR + "ort-wasm-simd-threaded.asyncify.wasm",
        };
        wasm.numThreads = 1; // no cross-origin isolation, so no SharedArrayBuffer threads
        wasm.proxy = false;
        const asr = await T.pipeline("automatic-speech-recognition", MODEL_ID, { device: "wasm", dtype: "fp32" });
        return { asr, error: null, loadMs: Math.round(performance.now() - started) };
      } catch (err) {
        return { asr: null, error: String(err && err.message || err) };
      }
    })();
  }
  return asrPromise;
}

/** Keywords the user typed (comma or newline separated), lower-cased, empty ones dropped. */
function parseKeywords(text) {
  return String(text || "").split(/[,\n;]/).map((k) => k.trim().toLowerCase()).filter(Boolean);
}

/** Words of a transcript, lower-cased, punctuation stripped (so "printer." matches "printer"). */
function normalise(text) {
  return " " + text.toLowerCase().replace(/[^\p{L}\p{N}' ]+/gu, " ").replace(/\s+/g, " ").trim() + " ";
}

async function transcribe({ samples, rate, keywords }) {
  const loaded = await loadAsr();
  if (!loaded.asr) return { available: false, error: loaded.error };
  const started = performance.now();
  const x16 = resample(samples, rate, 16000);
  const clip = x16.length > MAX_SECONDS * 16000 ? x16.subarray(0, MAX_SECONDS * 16000) : x16;
  const out = await loaded.asr(clip);
  const text = String(out.text || "").trim();
  const words = normalise(text);
  const wanted = parseKeywords(keywords);
  // A keyword matches on word boundaries; a phrase of several words matches as a phrase.
  const heard = wanted.filter((k) => words.includes(" " + normalise(k).trim() + " "));
  // The load time is reported with the first transcript only (later files reuse the model).
  const loadMs = loaded.loadMsReported ? 0 : loaded.loadMs;
  loaded.loadMsReported = true;
  return {
    available: true,
    text,
    truncated: clip.length < x16.length,
    keywords: wanted,
    heard,
    loadMs,
    ms: Math.round(performance.now() - started),
  };
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  try {
    if (msg.type === "probe") {
      // Cheap: only asks whether the model is served; the model loads on the first file.
      const resp = await fetch(MODELS + MODEL_ID + "/config.json", { method: "HEAD" });
      const vendor = resp.ok ? await fetch(VENDOR + "transformers.min.js", { method: "HEAD" }) : null;
      self.postMessage({ type: "probe", id: msg.id, available: Boolean(resp.ok && vendor && vendor.ok) });
    } else if (msg.type === "load") {
      const loaded = await loadAsr();
      self.postMessage({ type: "load", id: msg.id, available: Boolean(loaded.asr), error: loaded.error, loadMs: loaded.loadMs });
    } else if (msg.type === "transcribe") {
      self.postMessage({ type: "transcript", id: msg.id, ...(await transcribe(msg)) });
    }
  } catch (err) {
    self.postMessage({ type: "error", id: msg.id, error: String(err && err.message || err) });
  }
};
