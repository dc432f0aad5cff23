// Upload page: check a file locally (decode here, analyse in the worker) and send it only
// when every check passes. The server validates again; this only saves a pointless upload.
import { el, formatDuration, getJSON } from "./common.mjs";

const $ = (id) => document.getElementById(id);
const fileInput = $("file");
const send = $("send");
const worker = new Worker("/static/js/validator.worker.mjs", { type: "module" });
// Whisper runs in a worker of its own, created only when the server has the model.
let asrWorker = null;
let asrAvailable = false;
let current = 0; // which validation is the latest (a newer file makes older results moot)
let limits = { max_bytes: 50 * 1024 * 1024, min_seconds: 0.5, max_seconds: 3 * 3600, accepted_suffixes: [], enabled: true };
let accepted = null; // the File that passed, and only that one may be sent
let seq = 0;
const pending = new Map();
// Resolved once the limits and the probes are in (init below).
let markReady;
const ready = new Promise((resolve) => { markReady = resolve; });
// Listen from the first moment: a file picked while init() still waits for the server used
// to be ignored, as the listener came after those awaits. Its check starts once init is done.
fileInput.addEventListener("change", () => {
  ready.then(() => { if (fileInput.files[0]) validate(fileInput.files[0]); });
});

worker.onmessage = (ev) => {
  const cb = pending.get(ev.data.id);
  if (cb) { pending.delete(ev.data.id); cb(ev.data); }
};

function ask(msg, transfer = [], target = worker) {
  const id = ++seq;
  return new Promise((resolve) => { pending.set(id, resolve); target.postMessage({ ...msg, id }, transfer); });
}

function startAsrWorker() {
  asrWorker = new Worker("/static/js/asr.worker.mjs", { type: "module" });
  asrWorker.onmessage = worker.onmessage;
  return asrWorker;
}

/** The sample rate the container states (WAV, FLAC, MP3), or null: decodeAudioData hides it. */
export function sniffRate(buf) {
  const b = new Uint8Array(buf);
  const dv = new DataView(buf);
  const str = (o, n) => String.fromCharCode(...b.subarray(o, o + n));
  if (b.length >= 12 && str(0, 4) === "RIFF" && str(8, 4) === "WAVE") {
    for (let o = 12; o + 8 <= b.length;) {
      const size = dv.getUint32(o + 4, true);
      if (str(o, 4) === "fmt " && o + 16 <= b.length) return dv.getUint32(o + 12, true);
      o += 8 + size + (size & 1);
    }
    return null;
  }
  if (b.length >= 22 && str(0, 4) === "fLaC") return (b[18] << 12) | (b[19] << 4) | (b[20] >> 4);
  let o = 0;
  if (str(0, 3) === "ID3" && b.length > 10) o = 10 + ((b[6] << 21) | (b[7] << 14) | (b[8] << 7) | b[9]);
  for (; o + 4 <= Math.min(b.length, 1 << 16); o++) {
    if (b[o] === 0xff && (b[o + 1] & 0xe0) === 0xe0) {
      const version = (b[o + 1] >> 3) & 3, layer = (b[o + 1] >> 1) & 3, idx = (b[o + 2] >> 2) & 3;
      if (version === 1 || layer === 0 || idx === 3) continue;
      const base = [44100, 48000, 32000][idx];
      return version === 3 ? base : version === 2 ? base / 2 : base / 4;
    }
  }
  return null;
}

function show(title, cls, checks, note = "") {
  $("verdict").hidden = false;
  const t = $("verdict-title");
  t.textContent = title;
  t.className = cls;
  $("checks").replaceChildren(...checks.map((c) =>
    el("li", { class: c.status, dataset: { check: c.id } }, el("strong", {}, c.label), c.detail ? " — " + c.detail : "")));
  $("result").textContent = note;
}

async function validate(file) {
  const me = ++current;
  accepted = null;
  $("transcript").hidden = true;
  send.disabled = true;
  document.body.dataset.verdict = "checking";
  show("Checking " + file.name + "…", "", []);
  const early = [];
  if (file.size > limits.max_bytes) early.push({ id: "size", status: "fail", label: "Too large", detail: `${(file.size / 1048576).toFixed(1)} MB; at most ${(limits.max_bytes / 1048576).toFixed(0)} MB` });
  else early.push({ id: "size", status: "pass", label: "Size", detail: `${(file.size / 1048576).toFixed(2)} MB` });
  if (file.type && !file.type.startsWith("audio/") && file.type !== "video/webm" && file.type !== "application/octet-stream") {
    early.push({ id: "type", status: "fail", label: "Not audio", detail: file.type });
  }
  if (early.some((c) => c.status === "fail")) return finish(false, early);
  let samples, rate, sniffed;
  try {
    const buf = await file.arrayBuffer();
    sniffed = sniffRate(buf);
    // Decode at the file's own rate when we know it, so clipping is measured on the real
    // samples; OfflineAudioContext accepts 3 kHz..768 kHz.
    rate = sniffed && sniffed >= 3000 && sniffed <= 768000 ? sniffed : 48000;
    const ctx = new OfflineAudioContext(1, 1, rate);
    const audio = await ctx.decodeAudioData(buf);
    samples = new Float32Array(audio.length);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const ch = audio.getChannelData(c);
      for (let i = 0; i < ch.length; i++) samples[i] += ch[i] / audio.numberOfChannels;
    }
    // Let Whisper load while the validator works (from the browser cache after the first time).
    if (asrAvailable) ask({ type: "load" }, [], asrWorker);
  } catch (err) {
    early.push({ id: "decode", status: "fail", label: "Does not decode", detail: String(err && err.message || err) });
    return finish(false, early);
  }
  // The validator gets the samples (transferred); Whisper, if any, a copy of them.
  const forAsr = asrAvailable ? samples.slice(0, Math.ceil(rate * 31)) : null;
  const res = await ask({ type: "analyse", samples, rate, sniffedRate: sniffed, limits }, [samples.buffer]);
  if (me !== current) return;
  if (res.type === "error") {
    early.push({ id: "analyse", status: "fail", label: "Check failed", detail: res.error });
    return finish(false, early);
  }
  const checks = [...early, ...res.checks];
  if (!res.accepted || !forAsr) return finish(res.accepted, checks, file, res);
  // The file passed: now what is said in it (the verdict waits for it).
  show("Transcribing " + file.name + "…", "", [...checks,
    { id: "transcript", status: "off", label: "Transcript", detail: "Whisper is listening… (the first time, the model loads: ~150 MB)" }]);
  document.body.dataset.verdict = "transcribing";
  const asr = await ask({ type: "transcribe", samples: forAsr, rate, keywords: $("keywords").value }, [forAsr.buffer], asrWorker);
  if (me !== current) return;
  return finish(res.accepted && asrVerdict(asr, checks), checks, file, res, asr);
}

/** Add the transcript lines to ``checks``; false when the expected keywords are not heard. */
function asrVerdict(asr, checks) {
  if (asr.type === "error" || !asr.available) {
    checks.push({ id: "transcript", status: "warn", label: "Transcript unavailable", detail: asr.error || "Whisper failed" });
    return true; // our own failure is no reason to refuse the user's file
  }
  const timing = `Whisper tiny.en, ${(asr.ms / 1000).toFixed(1)} s` + (asr.loadMs ? ` (+${(asr.loadMs / 1000).toFixed(1)} s load)` : "");
  checks.push({ id: "transcript", status: asr.text ? "pass" : "warn", label: "Transcript",
    detail: (asr.text ? `“${asr.text}”` : "nothing recognised") + (asr.truncated ? " (first 30 s)" : "") + ` — ${timing}` });
  $("transcript").textContent = asr.text;
  $("transcript").hidden = !asr.text;
  if (!asr.keywords.length) return true;
  if (asr.heard.length) {
    checks.push({ id: "keywords", status: "pass", label: "On topic", detail: "heard: " + asr.heard.join(", ") });
    return true;
  }
  checks.push({ id: "keywords", status: "fail", label: "Off topic", detail: "none of the expected keywords heard: " + asr.keywords.join(", ") });
  return false;
}

function finish(ok, checks, file = null, res = null, asr = null) {
  const ms = res ? res.ms + (asr && asr.ms ? asr.ms : 0) : 0;
  const when = res ? ` (${ms} ms, speech check: ${res.engine === "silero" ? "Silero VAD" : "energy heuristic"}${asr && asr.available ? ", transcript: Whisper" : ""})` : "";
  show(ok ? "Accepted" : "Rejected", ok ? "accepted" : "rejected", checks,
    ok ? "Ready to upload." + when : "Not uploaded: fix the problems above." + when);
  accepted = ok ? file : null;
  send.disabled = !ok || !limits.enabled;
  document.body.dataset.verdict = ok ? "accepted" : "rejected";
}

async function upload(ev) {
  ev.preventDefault();
  const file = accepted;
  if (!file || file !== fileInput.files[0]) return; // only the file that passed
  send.disabled = true;
  $("result").textContent = "Uploading…";
  document.body.dataset.verdict = "uploading";
  const resp = await fetch("/api/uploads", {
    method: "POST",
    body: file,
    credentials: "same-origin",
    headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
  });
  const body = await resp.json().catch(() => ({}));
  if (resp.ok) {
    $("result").replaceChildren("Uploaded (", formatDuration(body.duration), body.skipped ? ", already imported" : ", processing", "): ",
      el("a", { href: body.url, id: "new-call" }, "open the call"));
    document.body.dataset.verdict = "uploaded";
  } else {
    $("result").textContent = `The server refused it: ${body.detail || resp.status}${body.reason ? " (" + body.reason + ")" : ""}`;
    document.body.dataset.verdict = "refused";
  }
}

async function init() {
  try {
    limits = await getJSON("/api/uploads");
  } catch { /* keep the defaults; the server checks anyway */ }
  $("min-s").textContent = String(limits.min_seconds);
  $("max-s").textContent = formatDuration(limits.max_seconds);
  $("max-mb").textContent = String(Math.round(limits.max_bytes / 1048576));
  if (!limits.enabled) $("vad-state").textContent = "Uploads are off on this server (post-call jobs are not running).";
  const probe = await ask({ type: "probe" });
  $("vad-state").textContent = (limits.enabled ? "" : $("vad-state").textContent + " ") + (probe.vad
    ? "Speech check: Silero VAD (ONNX Runtime Web, WASM), in this browser."
    : "Silero VAD check off (assets not installed: run scripts/web-assets.sh); using an energy heuristic.");
  document.body.dataset.vad = probe.vad ? "silero" : "off";
  // Whisper only when the server has the model (it says so: probing for the files would log
  // a 404 on every load where it is absent) and the vendored transformers.js.
  if (limits.browser_asr) {
    const asrProbe = await ask({ type: "probe" }, [], startAsrWorker());
    asrAvailable = Boolean(asrProbe.available);
  }
  if (asrAvailable) {
    $("asr-state").textContent = "Transcript check: Whisper tiny.en (transformers.js), in this browser; the model (~150 MB) is downloaded once, then cached.";
    $("keywords-row").hidden = false;
  } else {
    $("asr-state").textContent = limits.browser_asr
      ? "Transcript check off: the browser Whisper did not load."
      : "Transcript check off: the browser Whisper is not installed on this server (make web-model builds it).";
    if (asrWorker) asrWorker.terminate();
    asrWorker = null;
  }
  document.body.dataset.asr = asrAvailable ? "whisper" : "off";
  // New keywords change the verdict: check the chosen file again.
  $("keywords").addEventListener("change", () => { if (fileInput.files[0]) validate(fileInput.files[0]); });
  $("form").addEventListener("submit", upload);
  markReady();
  document.body.dataset.ready = "1";
}

init();
