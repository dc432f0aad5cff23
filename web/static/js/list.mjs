// The call list: filters and search mirrored in the URL, pagination, live calls refreshed.
import { el, formatDuration, formatTime, getJSON, snippetNode } from "./common.mjs";

const PAGE = 50;
const POLL_MS = 5000; // live calls change by the second; 5 s keeps the load trivial
const FIELDS = ["q", "since", "until", "app", "end_reason", "ivr_result", "has_summary"];

const form = document.getElementById("filters");
const tbody = document.querySelector("#calls tbody");
const status = document.getElementById("status");
const prev = document.getElementById("prev");
const next = document.getElementById("next");
const range = document.getElementById("range");

let offset = Number(new URLSearchParams(location.search).get("offset") || 0) || 0;
let timer = null;
let seq = 0; // answers to superseded requests are dropped

function fillForm() {
  const params = new URLSearchParams(location.search);
  for (const name of FIELDS) {
    const input = form.elements.namedItem(name);
    if (input) input.value = params.get(name) || "";
  }
}

/** The API query for the current form: dates become local-midnight ISO bounds. */
function apiParams() {
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    const value = (form.elements.namedItem(name).value || "").trim();
    if (!value) continue;
    if (name === "since") params.set("since", new Date(value + "T00:00:00").toISOString());
    else if (name === "until") {
      const d = new Date(value + "T00:00:00");
      d.setDate(d.getDate() + 1); // the "to" day is included
      params.set("until", d.toISOString());
    } else params.set(name, value);
  }
  return params;
}

function pageParams() {
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    const value = (form.elements.namedItem(name).value || "").trim();
    if (value) params.set(name, value);
  }
  if (offset) params.set("offset", String(offset));
  return params;
}

function row(call) {
  const link = el("a", { href: `/calls/${call.uuid}` }, formatTime(call.started_at));
  const started = el("td", { class: "num" }, link);
  const duration = call.live
    ? el("td", { class: "num" }, el("span", { class: "badge live" }, "live"), " ",
        formatDuration((Date.now() - new Date(call.started_at).getTime()) / 1000))
    : el("td", { class: "num" }, formatDuration(call.duration));
  const summary = el("td", {}, call.summary_title || el("span", { class: "note" }, "—"));
  if (call.snippet) summary.append(el("div", { class: "snippet" }, snippetNode(call.snippet)));
  return el("tr", { dataset: { uuid: call.uuid }, class: call.live ? "live" : null },
    started, duration, el("td", {}, call.app), el("td", {}, call.end_reason || "—"), summary);
}

async function load({ quiet = false } = {}) {
  const mine = ++seq;
  const params = apiParams();
  params.set("limit", String(PAGE));
  params.set("offset", String(offset));
  if (!quiet) status.textContent = "Loading…";
  let body;
  try {
    body = await getJSON("/api/calls?" + params);
  } catch (err) {
    if (mine === seq) status.textContent = "Could not load calls: " + err.message;
    return;
  }
  if (mine !== seq) return;
  tbody.replaceChildren(...body.items.map(row));
  const q = params.get("q");
  if (!body.total) status.textContent = q ? `No call mentions “${q}”.` : "No calls match.";
  else status.textContent = q ? `${body.total} call${body.total === 1 ? "" : "s"} mention “${q}”.` : "";
  const last = Math.min(offset + body.items.length, body.total);
  range.textContent = body.total ? `${offset + 1}–${last} of ${body.total}` : "";
  prev.disabled = offset <= 0;
  next.disabled = offset + PAGE >= body.total;
  schedule(body.items.some((c) => c.live) || offset === 0);
}

/** Poll while the page is visible and something could change (live calls, or page 1). */
function schedule(wanted) {
  clearTimeout(timer);
  if (wanted && document.visibilityState === "visible") {
    timer = setTimeout(() => load({ quiet: true }), POLL_MS);
  }
}

function navigate() {
  history.replaceState(null, "", "/?" + pageParams());
  load();
}

form.addEventListener("submit", (ev) => { ev.preventDefault(); offset = 0; navigate(); });
form.addEventListener("reset", () => { setTimeout(() => { offset = 0; navigate(); }, 0); });
form.addEventListener("change", (ev) => { if (ev.target.name !== "q") { offset = 0; navigate(); } });
prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); navigate(); });
next.addEventListener("click", () => { offset += PAGE; navigate(); });
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") load({ quiet: true });
});

fillForm();
load();
