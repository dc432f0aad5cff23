"""The ``ivr`` app: runs a flow file (``sessions/flows/demo.yaml`` by default) on each call.

A combination of parts: :class:`~sessions.parts.recording.Recording`,
:class:`~sessions.parts.transcriber.Transcriber` and
:class:`~sessions.parts.message.MessageTap` hear the call; the session's
:class:`~sessions.parts.speaker.Speaker` speaks (prompts pre-warmed into the prompt cache at
start-up); :class:`~sessions.parts.flow_runner.FlowRunner` runs the flow, with keys from
``on_dtmf`` and answers from the transcriber.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import structlog

from audiosocket.config import ConfigError
from sessions.compose import Composed
from sessions.parts import needs_of
from sessions.parts.flow import Flow, FlowError, load_flows
from sessions.parts.flow_runner import (
    DEMO_FLOWS,
    MESSAGE_MAX_BYTES,
    MESSAGE_STT_WAIT_S,
    FlowRunner,
    beep,
)
from sessions.parts.message import MessageTap
from sessions.parts.recording import Recording
from sessions.parts.transcriber import Transcriber
from sessions.record import recording_for

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.live import LiveCall
    from audiosocket.root.app import AppContext, Need
    from helpers.speech.stt import Segment

__all__ = ["DEMO_FLOWS", "MESSAGE_MAX_BYTES", "MESSAGE_STT_WAIT_S", "IvrSession", "beep"]


class IvrSession(Composed):
    """Flow-driven IVR. The flow is ``ivr.flow`` from ``ivr.flows_dir``."""

    name = "ivr"
    needs: ClassVar[tuple[Need, ...]] = (*needs_of(Recording, Transcriber), "tts")
    #: The flow this process runs (loaded once, in ``prepare``): the app's own state.
    flow: ClassVar[Flow]

    @classmethod
    async def prepare(cls, ctx: AppContext) -> None:
        await super().prepare(ctx)
        tts = ctx.services.tts
        if tts is None:
            raise RuntimeError("ivr: the TTS engine was not built before prepare() (needs)")
        cfg = ctx.config.ivr
        directory = Path(cfg.flows_dir) if cfg.flows_dir else DEMO_FLOWS
        try:
            flows = load_flows(directory)
        except FlowError as exc:
            raise ConfigError(f"ivr: {exc}") from exc
        if cfg.flow not in flows:
            raise ConfigError(
                f"ivr.flow: no flow named {cfg.flow!r} in {directory} "
                f"(found: {', '.join(sorted(flows)) or 'none'})"
            )
        flow = flows[cfg.flow]
        cls.flow = flow
        # Pre-warm every fixed prompt at the usual call rates: a prompt then costs nothing.
        count = await tts.prewarm(flow.prompts(), (8000, 16000))
        structlog.get_logger("audiosocket.ivr").info(
            "flow_ready", flow=flow.name, nodes=len(flow.nodes), prompts_cached=count
        )

    def __init__(self, call: Call, ctx: AppContext) -> None:
        super().__init__(call, ctx)
        self.stt = ctx.services.stt
        self.store = ctx.services.store
        self.speaker.protect_s = ctx.config.ivr.barge_in_protect_ms / 1000
        self.recording_part = recording_for(call, ctx, self.log)
        self.transcriber = Transcriber(
            call, ctx.config.stt, stt=self.stt, store=self.store,
            live=self.recording_part.live, listener=self, log=self.log,
        )
        self.message = MessageTap(lambda: self.transcriber.in_speech)
        self.parts += [self.recording_part, self.transcriber, self.message]
        self.runner = FlowRunner(
            type(self).flow, call, speaker=self.speaker, transcriber=self.transcriber,
            message=self.message, ivr_cfg=ctx.config.ivr, data_dir=ctx.shared_dir,
            store=self.store, stt=self.stt, live=self.recording_part.live, log=self.log,
        )

    @property
    def live(self) -> LiveCall | None:
        return self.recording_part.live

    @property
    def variables(self) -> dict[str, object]:
        return self.runner.variables

    @property
    def path(self) -> list[str]:
        return self.runner.path

    @property
    def result(self) -> str | None:
        return self.runner.result

    # -- hooks ---------------------------------------------------------------------------

    async def on_start(self) -> None:
        await self.runner.run()

    def on_dtmf(self, digit: str) -> None:
        self.runner.key(digit)

    async def on_end(self, reason: str) -> None:
        self.runner.save()
        await super().on_end(reason)
        self.runner.save()  # speech transcribed after the hang-up
        await self.runner.finish()

    # -- what the transcriber tells the app (TranscriptListener) -------------------------

    def on_speech_start(self, at: float) -> None:
        self.speaker.speech_started(at)

    def on_transcript(self, seg: Segment) -> None:
        self.runner.answer(seg.text)

    def on_dropped(self, reason: str) -> None:
        # An answer the engine could not hear in time: say so now (the menu counts it as an
        # attempt and asks again) instead of leaving the caller in silence until the timeout.
        if not self.message.recording:
            self.runner.dropped(reason)

    def transcript_lines(self, seg: Segment) -> list[Segment]:
        # An answer is matched whole ("Hi. Sales, please." is one input, not a miss and then
        # a match); a message being left is split into sentence lines like any speech.
        return seg.lines() if self.message.recording else [seg]

    def stt_deadline_s(self) -> float:
        """Speech here is an answer the flow waits on (a message being left is not)."""
        stt = self.ctx.config.stt
        return float(stt.live_deadline_s if self.message.recording else stt.answer_deadline_s)
