// One call: player (MP3, M4A fallback) with waveform, voicemail, clickable two-sided
// transcript, summary, IVR.
import { el, formatDuration, formatTime, getJSON } from "./common.mjs";

const uuid = location.pathname.split("/").filter(Boolean).pop();
const $ = (id) => document.getElementById(id);
const audio = $("audio");
const canvas = $("wave");
const status = $("status");

let peaks = null;      // {duration, data: [[min, max], ...]}
let segments = [];     // transcript rows: {start, end, node}
let current = -1;      // index of the highlighted segment

function fact(dl, name, value) {
  dl.append(el("dt", {}, name), el("dd", {}, value));
}

function renderHead(call) {
  $("title").textContent = call.summary?.title || `Call ${call.uuid.slice(0, 8)}`;
  const dl = $("facts");
  if (call.live) fact(dl, "Status", el("span", { class: "badge live" }, "live"));
  fact(dl, "Started", formatTime(call.started_at));
  fact(dl, "Ended", call.live ? "—" : formatTime(call.ended_at));
  fact(dl, "Duration", formatDuration(call.duration));
  fact(dl, "App", call.app);
  fact(dl, "End reason", call.end_reason || "—");
  if (call.caller) fact(dl, "Caller", call.caller);
  fact(dl, "Sample rate", `${call.rate} Hz`);
  fact(dl, "Id", call.uuid);
  const pending = Object.entries(call.jobs || {}).filter(([, s]) => s !== "done");
  if (pending.length) fact(dl, "Post-call jobs", pending.map(([k, s]) => `${k}: ${s}`).join(", "));
  $("head").hidden = false;
}

function renderPlayer(call) {
  const rec = call.recordings || {};
  // MP3 first (echo-filtered, plays everywhere), then the AAC archive, then the raw WAV.
  const src = rec.mp3 || rec.m4a || rec.wav;
  const links = $("downloads");
  for (const fmt of ["mp3", "m4a", "wav"]) {
    if (rec[fmt]) links.append(el("a", { href: rec[fmt], download: `${call.uuid}.${fmt}` }, `Download ${fmt.toUpperCase()}`));
  }
  if (!src) {
    links.prepend(el("span", { class: "note" }, "No recording yet. "));
    $("player").hidden = false;
    audio.hidden = true;
    canvas.hidden = true;
    return;
  }
  audio.addEventListener("error", () => {
    // The MP3 failed to load or decode: fall back to the M4A once.
    if (rec.m4a && !audio.src.endsWith(rec.m4a)) audio.src = rec.m4a;
  });
  audio.src = src;
  $("player").hidden = false;
  if (rec.peaks) {
    getJSON(rec.peaks).then((p) => { peaks = p; draw(); }).catch(() => { canvas.hidden = true; });
  } else canvas.hidden = true;
}

function totalDuration() {
  if (Number.isFinite(audio.duration) && audio.duration > 0) return audio.duration;
  return peaks?.duration || 0;
}

function draw() {
  if (!peaks || canvas.hidden) return;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const data = peaks.data || [];
  const scale = 2 ** ((peaks.bits || 8) - 1) - 1;
  const mid = h / 2;
  const played = totalDuration() ? (audio.currentTime / totalDuration()) * w : 0;
  const per = data.length / w; // buckets per pixel column
  for (let x = 0; x < w; x++) {
    const a = Math.floor(x * per), b = Math.max(a + 1, Math.floor((x + 1) * per));
    let lo = 0, hi = 0;
    for (let i = a; i < b && i < data.length; i++) {
      if (data[i][0] < lo) lo = data[i][0];
      if (data[i][1] > hi) hi = data[i][1];
    }
    ctx.fillStyle = x < played ? "#1f6feb" : "#9aa7b5";
    const top = mid - (hi / scale) * mid, bottom = mid - (lo / scale) * mid;
    ctx.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
}

function seek(t) {
  const total = totalDuration();
  audio.currentTime = Math.max(0, total ? Math.min(t, total) : t);
  updateTime();
}

function updateTime() {
  $("time").textContent = `${formatDuration(audio.currentTime)} / ${formatDuration(totalDuration())}`;
  $("play").textContent = audio.paused ? "Play" : "Pause";
  highlight();
  draw();
}

function highlight() {
  const t = audio.currentTime;
  let idx = -1;
  for (let i = 0; i < segments.length; i++) {
    if (t >= segments[i].start && t < segments[i].end) { idx = i; break; }
  }
  if (idx === current) return;
  if (current >= 0) segments[current].node.classList.remove("current");
  current = idx;
  if (idx >= 0) {
    const node = segments[idx].node;
    node.classList.add("current");
    if (!audio.paused) revealInList(node, $("transcript"));
  }
}

/** Scroll ``box`` (and only it) so ``node`` is visible. scrollIntoView also scrolls the page,
 * which pushed the player off screen whenever playback reached a line below the fold. */
function revealInList(node, box) {
  const b = box.getBoundingClientRect();
  const n = node.getBoundingClientRect();
  if (n.top < b.top) box.scrollTop -= b.top - n.top;
  else if (n.bottom > b.bottom) box.scrollTop += n.bottom - b.bottom;
}

/** Both sides, as the API orders them (by start): the caller's recognised speech and what
 * the server said (prompt and say text, known, not recognised), each labelled. */
function renderTranscript(call) {
  const list = $("transcript");
  segments = (call.transcript || []).map((s) => {
    const speaker = s.speaker === "server" ? "server" : "caller";
    const who = speaker === "server" ? "System" : "Caller";
    const node = el("li", { tabindex: "0", class: speaker, dataset: { start: s.start, end: s.end, speaker },
      title: "Play from here" },
      el("span", { class: "ts" }, formatDuration(s.start)),
      el("span", { class: `who ${speaker}` }, who),
      el("span", { class: "text" }, s.text,
        s.interrupted ? el("span", { class: "cut", title: "Cut short (barge-in or hang-up)" }, " — cut short") : null));
    const go = () => { seek(s.start); audio.play().catch(() => {}); };
    node.addEventListener("click", go);
    node.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); go(); } });
    list.append(node);
    return { start: s.start, end: s.end, node };
  });
  if (!segments.length) list.append(el("li", { class: "note" }, call.live ? "The call is live; the transcript follows." : "No transcript."));
  $("transcript-card").hidden = false;
}

/** Voicemail left through an IVR record node: its own player (the WAV, Range-served) and
 * its transcript beside it (stacked on a phone). */
function renderMessages(call) {
  const messages = call.messages || [];
  if (!messages.length) return;
  const box = $("messages");
  for (const m of messages) {
    const player = el("audio", { controls: true, preload: "metadata", src: m.url, class: "message-audio" });
    const facts = [`${formatDuration(m.seconds)}`];
    if (m.start != null) facts.push(`left ${formatDuration(m.start)} into the call`);
    if (m.stopped_by) facts.push(`ended by ${STOPPED[m.stopped_by] || m.stopped_by}`);
    const text = m.transcript == null
      ? el("p", { class: "note" }, call.live ? "Being transcribed…" : "No transcript.")
      : el("blockquote", { class: "message-text" }, m.transcript || "(no words recognised)");
    box.append(el("article", { class: "message", dataset: { name: m.name } },
      el("div", { class: "message-player" }, el("h3", {}, m.name), player,
        el("p", { class: "note" }, facts.join(" · "))),
      el("div", { class: "message-transcript" }, text)));
  }
  $("voicemail").hidden = false;
}

const STOPPED = { terminator: "the caller's key", silence: "silence", max_seconds: "the time limit" };

function renderSummary(call) {
  const s = call.summary;
  if (!s) return;
  $("summary-title").textContent = s.title;
  $("summary-text").textContent = s.text;
  const badge = $("method");
  if (s.method === "flan-t5") {
    badge.textContent = "AI · Flan-T5";
    badge.classList.add("ai");
    $("method-note").textContent = `Written by the ${s.model || "Flan-T5"} model from the transcript; check it against the recording.`;
  } else {
    badge.textContent = "Extractive";
    badge.classList.add("extractive");
    $("method-note").textContent = "Sentences picked from the transcript as they were said (no model installed).";
  }
  $("summary").hidden = false;
}

function renderIvr(call) {
  const ivr = call.ivr;
  if (!ivr) return;
  $("ivr-path").replaceChildren(...(ivr.path || []).map((step) =>
    el("li", {}, typeof step === "string" ? step : JSON.stringify(step))));
  $("ivr-result").textContent = ivr.result || "—";
  const vars = $("ivr-vars");
  for (const [k, v] of Object.entries(ivr.variables || {})) fact(vars, k, typeof v === "string" ? v : JSON.stringify(v));
  $("ivr").hidden = false;
}

function wire() {
  $("play").addEventListener("click", () => { if (audio.paused) audio.play().catch(() => {}); else audio.pause(); });
  $("back").addEventListener("click", () => seek(audio.currentTime - 10));
  $("fwd").addEventListener("click", () => seek(audio.currentTime + 10));
  $("speed").addEventListener("change", (ev) => { audio.playbackRate = Number(ev.target.value); });
  for (const ev of ["timeupdate", "play", "pause", "loadedmetadata", "seeked", "durationchange"]) {
    audio.addEventListener(ev, updateTime);
  }
  canvas.addEventListener("click", (ev) => {
    const rect = canvas.getBoundingClientRect();
    seek(((ev.clientX - rect.left) / rect.width) * totalDuration());
  });
  new ResizeObserver(draw).observe(canvas);
  $("delete").addEventListener("click", async () => {
    if (!confirm("Delete this call and all its recordings?")) return;
    const resp = await fetch(`/api/calls/${uuid}`, { method: "DELETE", credentials: "same-origin" });
    if (resp.ok) location.assign("/");
    else status.textContent = "Delete failed: " + ((await resp.json().catch(() => ({}))).detail || resp.status);
  });
}

async function main() {
  let call;
  try {
    call = await getJSON(`/api/calls/${encodeURIComponent(uuid)}`);
  } catch (err) {
    status.textContent = err.status === 404 ? "No such call." : "Could not load the call: " + err.message;
    return;
  }
  document.title = `${call.summary?.title || "Call " + call.uuid.slice(0, 8)} · AudioSocket`;
  status.textContent = "";
  wire();
  renderHead(call);
  renderPlayer(call);
  renderMessages(call);
  renderSummary(call);
  renderIvr(call);
  renderTranscript(call);
  if (!call.live) $("danger").hidden = false;
  updateTime();
  document.body.dataset.ready = "1"; // for tests and scripts: everything is rendered
}

main();
