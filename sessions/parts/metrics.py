"""Metrics of the apps: speaking, barge-in, IVR outcomes, webhooks."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SAY_FIRST_FRAME = Histogram(
    "audiosocket_say_first_frame_seconds",
    "Time from say() to the prompt's first frame on the wire",
    ["cached"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0),
)
BARGE_INS = Counter("audiosocket_barge_ins_total", "Prompts cut short by the caller", ["by"])
IVR_RESULTS = Counter("audiosocket_ivr_results_total", "IVR calls by result", ["flow", "result"])
IVR_INPUTS = Counter(
    "audiosocket_ivr_inputs_total", "Menu inputs by kind and outcome", ["kind", "outcome"]
)
WEBHOOKS = Counter("audiosocket_ivr_webhooks_total", "IVR webhook POSTs by outcome", ["outcome"])
TRANSCRIPT_SEGMENTS = Counter(
    "audiosocket_transcript_segments_total", "Live transcript segments stored"
)
