// The live view: calls in progress from /api/live/events (Server-Sent Events), their IVR
// node and transcript as they happen, and listen-in through Web Audio.
import { el, formatDuration, getJSON } from "./common.mjs";

const list = document.getElementById("live-calls");
const status = document.getElementById("status");
const endedNote = document.getElementById("ended");
const bar = document.getElementById("listening");
const listenState = document.getElementById("listen-state");

const calls = new Map(); // uuid -> { data, card, dur, node, lines, button }
let skewMs = 0; // server clock minus ours, so durations tick right whatever our clock says
let listenIn = false;
let source = null;

function elapsed(call) {
  return (Date.now() + skewMs) / 1000 - call.started;
}

function lineItem(line) {
  return el("li", {}, el("span", { class: "ts" }, formatDuration(line.start)),
    el("span", {}, line.text));
}

function setNode(entry, node, path) {
  entry.node.textContent = node || "—";
  entry.node.title = (path || []).join(" → ");
  entry.nodeRow.hidden = !node;
}

function addCall(call) {
  if (calls.has(call.uuid)) return;
  const dur = el("span", { class: "dur" }, formatDuration(elapsed(call)));
  const node = el("strong", { class: "node" });
  const nodeRow = el("div", { class: "live-node" }, "IVR node ", node);
  const lines = el("ol", { class: "transcript live-lines", "aria-label": "Live transcript" });
  const canListen = listenIn && call.listenable;
  const button = el("button", {
    type: "button", class: "secondary listen", disabled: !canListen,
    title: canListen ? "Hear this call as it happens"
      : !listenIn ? "Listen-in is off on this server ([web] listen_in)"
        : "This call's audio stays on the C media path (echo app)",
  }, "Listen");
  button.addEventListener("click", () => listen(call.uuid));
  const card = el("li", { class: "card live-call", dataset: { uuid: call.uuid } },
    el("div", { class: "live-head" },
      el("span", { class: "badge live" }, "live"),
      el("strong", { class: "app" }, call.app),
      el("span", { class: "caller" }, call.caller),
      dur),
    nodeRow, lines,
    el("div", { class: "controls" }, button,
      el("a", { href: `/calls/${call.uuid}` }, "Call page")));
  const entry = { data: call, card, dur, node, nodeRow, lines, button };
  setNode(entry, call.node, call.path);
  for (const line of call.lines || []) lines.append(lineItem(line));
  calls.set(call.uuid, entry);
  list.append(card);
  showCount();
}

function showCount() {
  const n = calls.size;
  status.textContent = n ? `${n} call${n === 1 ? "" : "s"} in progress.` : "No calls in progress.";
}

function removeCall(uuid, info) {
  const entry = calls.get(uuid);
  if (!entry) return;
  entry.card.remove();
  calls.delete(uuid);
  showCount();
  if (info) {
    endedNote.replaceChildren("Call from ", entry.data.caller, " ended (",
      info.end_reason || "ended", ", ", formatDuration(info.duration), "): ",
      el("a", { href: `/calls/${uuid}` }, "in the call list"), ".");
  }
  if (player && player.uuid === uuid) stopListening("The call ended.");
}

const handlers = {
  snapshot(snap) {
    skewMs = snap.now * 1000 - Date.now();
    listenIn = Boolean(snap.listen_in);
    for (const uuid of [...calls.keys()]) removeCall(uuid, null);
    for (const call of snap.calls) addCall(call);
    showCount();
    document.body.dataset.ready = "1";
  },
  call_started(call) { addCall(call); },
  node(ev) {
    const entry = calls.get(ev.uuid);
    if (entry) setNode(entry, ev.node, ev.path);
  },
  line(ev) {
    const entry = calls.get(ev.uuid);
    if (!entry) return;
    entry.lines.append(lineItem(ev));
    entry.lines.scrollTop = entry.lines.scrollHeight; // the box scrolls, never the page
  },
  call_ended(ev) { removeCall(ev.uuid, ev); },
};

function connect() {
  source = new EventSource("/api/live/events");
  for (const [kind, fn] of Object.entries(handlers)) {
    source.addEventListener(kind, (msg) => fn(JSON.parse(msg.data)));
  }
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // Not an event stream (401, 503): ask the API why, then try again later.
      source = null;
      getJSON("/api/live").then(() => setTimeout(connect, 2000)).catch((err) => {
        status.textContent = "Live view unavailable: " + err.message;
        setTimeout(connect, 5000);
      });
    } else {
      status.textContent = "Reconnecting…"; // the snapshot on reconnect restores the list
    }
  });
}

setInterval(() => {
  for (const entry of calls.values()) entry.dur.textContent = formatDuration(elapsed(entry.data));
}, 1000);

// -- listen-in ---------------------------------------------------------------------------
// <audio> never starts on an open-ended WAV stream in Chromium, so the stream is read with
// fetch and scheduled in Web Audio, ahead of the clock by a small jitter buffer.

const LEAD_S = 0.12; // jitter buffer: network and tick jitter are far below this on a LAN
const MAX_AHEAD_S = 0.6; // beyond this the stream is behind (a stall): drop, catch up
let player = null;
window.listenStats = { chunks: 0, bytes: 0, skipped: 0, leadMs: [] };

async function listen(uuid) {
  stopListening("");
  const abort = new AbortController();
  const audio = new AudioContext();
  const me = { uuid, abort, audio };
  player = me;
  bar.hidden = false;
  listenState.textContent = "Connecting…";
  const stats = window.listenStats = { uuid, chunks: 0, bytes: 0, skipped: 0, leadMs: [] };
  let resp;
  try {
    resp = await fetch(`/api/calls/${uuid}/listen`, { signal: abort.signal, credentials: "same-origin" });
  } catch (err) {
    if (player === me) stopListening("Could not listen: " + err.message);
    return;
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch { /* not JSON */ }
    if (player === me) stopListening(`Could not listen (${resp.status}): ${detail}`);
    return;
  }
  const caller = calls.get(uuid)?.data.caller || uuid;
  listenState.textContent = `Listening to ${caller}`;
  const reader = resp.body.getReader();
  let head = new Uint8Array(0);
  let rate = 0;
  let carry = null; // an odd byte left over from the previous chunk
  let next = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || player !== me) break;
      let bytes = value;
      if (!rate) {
        const joined = new Uint8Array(head.length + bytes.length);
        joined.set(head); joined.set(bytes, head.length);
        if (joined.length < 44) { head = joined; continue; }
        rate = new DataView(joined.buffer).getUint32(24, true);
        bytes = joined.subarray(44);
      }
      if (carry) {
        const joined = new Uint8Array(bytes.length + 1);
        joined[0] = carry[0]; joined.set(bytes, 1);
        bytes = joined; carry = null;
      }
      if (bytes.length % 2) { carry = bytes.subarray(bytes.length - 1); bytes = bytes.subarray(0, bytes.length - 1); }
      if (!bytes.length) continue;
      const samples = new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
      const buffer = audio.createBuffer(1, samples.length, rate);
      const data = buffer.getChannelData(0);
      for (let i = 0; i < samples.length; i++) data[i] = samples[i] / 32768;
      const now = audio.currentTime;
      if (next < now + 0.01) next = now + LEAD_S; // (re)start with the jitter buffer
      if (next - now > MAX_AHEAD_S) { stats.skipped += 1; continue; }
      const src = audio.createBufferSource();
      src.buffer = buffer;
      src.connect(audio.destination);
      src.start(next);
      stats.leadMs.push(Math.round((next - now + (audio.outputLatency || 0)) * 1000));
      if (stats.leadMs.length > 500) stats.leadMs.shift();
      next += samples.length / rate;
      stats.chunks += 1;
      stats.bytes += bytes.length;
    }
  } catch (err) {
    if (player === me && err.name !== "AbortError") stopListening("Listening stopped: " + err.message);
    return;
  }
  if (player === me) stopListening("The call ended.");
}

function stopListening(message) {
  if (player) {
    player.abort.abort();
    player.audio.close().catch(() => {});
    player = null;
  }
  bar.hidden = !message;
  listenState.textContent = message;
  document.getElementById("stop").hidden = !!message;
}

document.getElementById("stop").addEventListener("click", () => stopListening(""));

connect();
