"""The flow runner: what the IVR does on a call, node by node, as a part of the app.

Prompts spoken with the call's :class:`~sessions.parts.speaker.Speaker`, menus answered by a
key or by speech (lines from the :class:`~sessions.parts.transcriber.Transcriber`), digit
collection, message recording (:class:`~sessions.parts.message.MessageTap`), variables,
webhooks and a result. The path the call took, its variables and its result are stored with
the call (``ivr`` in the API). Inputs: keys (``key``) and answers (``answer``) come from the
app's hooks; a key pressed during a prompt cuts it short (DTMF barge-in), as does speech once
the protection window has passed (when the node allows barge-in).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from helpers.audio import write_wav
from sessions.parts.flow import Flow, Gather, Menu, Node, Record, Webhook
from sessions.parts.matching import match_choice
from sessions.parts.message import MessageTap
from sessions.parts.metrics import IVR_INPUTS, IVR_RESULTS, WEBHOOKS
from sessions.parts.speaker import Speaker
from sessions.parts.transcriber import Transcriber

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.config import IvrConfig
    from audiosocket.live import LiveCall
    from helpers.speech.stt import SttEngine
    from helpers.store.db import CallStore

__all__ = ["DEMO_FLOWS", "MESSAGE_MAX_BYTES", "MESSAGE_STT_WAIT_S", "FlowRunner", "beep"]

DEMO_FLOWS = Path(__file__).resolve().parent.parent / "flows"
#: A menu timeout is extended while the caller is still speaking, up to this much.
SPEECH_GRACE_S = 8.0
#: A recorded message holds at most its ``max_seconds`` of audio and at most this many bytes
#: (16 MiB: 43 s at 192 kHz), even from a peer sending faster than real time.
MESSAGE_MAX_BYTES = 16 * 2**20
#: At hang-up, wait at most this long for a message's transcript.
MESSAGE_STT_WAIT_S = 60.0
_VAR = re.compile(r"\{(\w+)\}")


def beep(rate: int, seconds: float = 0.25, freq: float = 1000.0) -> bytes:
    """The record tone, with 5 ms ramps so it does not click."""
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * freq * t)
    ramp = min(len(t) // 2, int(rate * 0.005))
    env = np.ones_like(tone)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[-ramp:] = np.linspace(1, 0, ramp)
    return (tone * env * 32767).astype("<i2").tobytes()


class FlowRunner:
    """Runs one flow on one call with the parts it is given."""

    def __init__(
        self,
        flow: Flow,
        call: Call,
        *,
        speaker: Speaker,
        transcriber: Transcriber,
        message: MessageTap,
        ivr_cfg: IvrConfig,
        data_dir: Path,
        store: CallStore | None,
        stt: SttEngine | None,
        live: LiveCall | None,
        log: Any,
    ) -> None:
        self.flow = flow
        self.call = call
        self.speaker = speaker
        self.transcriber = transcriber
        self.message = message
        self.ivr_cfg = ivr_cfg
        self.data_dir = data_dir
        self.store = store
        self.stt = stt
        self.live = live
        self.log = log
        self.variables: dict[str, Any] = {}
        self.path: list[str] = []
        self.digits: list[str] = []
        self.speech: list[str] = []
        self.result: str | None = None
        self._inputs: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        #: A prompt is playing that an input cuts short (``_prompt``).
        self._prompting = False
        self._message_tasks: set[asyncio.Task[None]] = set()

    @property
    def rate(self) -> int:
        return self.call.rate

    # -- inputs --------------------------------------------------------------------------

    def key(self, digit: str) -> None:
        """A key press: an input, and a barge-in on a prompt that allows one."""
        self.digits.append(digit)
        if self.speaker.barge_in_after is not None:
            self.speaker.interrupt("dtmf")
        self._put("dtmf", digit)

    def answer(self, text: str) -> None:
        """A line the caller said (whole: an answer is matched as one input)."""
        self.speech.append(text)
        self._put("speech", text)

    def dropped(self, reason: str) -> None:
        """An answer the engine could not hear in time: an attempt that failed."""
        self._put("dropped", reason)

    def _put(self, kind: str, value: str) -> None:
        self._inputs.put_nowait((kind, value))
        if self._prompting:
            # The prompt stops at the next tick and its ``say`` returns; the input stays
            # queued for the node that asked.
            self._prompting = False
            self.speaker.interrupt("input")

    async def _next_input(self, timeout: float) -> tuple[str, str] | None:
        """The next key or utterance; waits past ``timeout`` while the caller is speaking."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hard = deadline + SPEECH_GRACE_S
        while True:
            left = deadline - loop.time()
            if left <= 0:
                if self.transcriber.transcribing and loop.time() < hard:
                    left = 0.1  # the caller is mid-sentence or Whisper is still busy
                else:
                    return None
            try:
                async with asyncio.timeout(left):
                    return await self._inputs.get()
            except TimeoutError:
                continue

    # -- speaking with interruption --------------------------------------------------------

    def fill(self, text: str) -> str:
        """``{var}`` placeholders from the call's variables."""
        return _VAR.sub(lambda m: str(self.variables.get(m.group(1), "")), text)

    async def _prompt(self, text: str | None, *, barge_in: bool) -> None:
        """Speak a prompt; returns early when an input arrives (the input stays queued).

        The input cuts the prompt from ``_put`` itself: no task beside ``say`` waits for it
        (a waiter task and ``asyncio.wait`` per prompt were a measurable share of the loop
        at a thousand IVR calls, for a wake-up that is nearly never needed)."""
        if not text:
            return
        if not self._inputs.empty():
            return  # type-ahead: the caller already answered
        self._prompting = True
        try:
            await self.speaker.say(self.fill(text), barge_in=barge_in)
        finally:
            self._prompting = False

    # -- the flow ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the flow from its start node to a hang-up (or the end of the call)."""
        node: Node | None = self.flow.nodes[self.flow.start]
        try:
            while node is not None:
                node = await self._run_node(node)
        finally:
            self.save()
        if not self.call.ended:
            self.log.info("ivr_done", result=self.result, path=self.path)
            self.call.hangup("app_hangup")

    async def _run_node(self, node: Node) -> Node | None:
        self.path.append(node.name)
        self.save()
        for key, value in node.set.items():
            self.variables[key] = self.fill(value)
        for text in node.say:
            await self.speaker.say(self.fill(text), barge_in=node.barge_in)
        if node.play:
            await self.speaker.play_file(self._resolve(node.play), barge_in=node.barge_in)
        if node.webhook:
            await self._webhook(node.webhook)
        target: str | None
        if node.menu:
            target = await self._menu(node.menu)
            if target is None:
                self.result = "no_choice"
                IVR_RESULTS.labels(flow=self.flow.name, result=self.result).inc()
                return None
        elif node.gather:
            await self._gather(node.gather)
            target = node.gather.next
        elif node.record:
            await self._record(node.record)
            target = node.record.next
        elif node.goto:
            target = node.goto
        else:
            self.result = node.hangup or "done"
            IVR_RESULTS.labels(flow=self.flow.name, result=self.result).inc()
            return None
        return self.flow.nodes[target]

    def _resolve(self, name: str) -> Path:
        base = Path(self.ivr_cfg.flows_dir) if self.ivr_cfg.flows_dir else DEMO_FLOWS
        return base / name

    async def _menu(self, menu: Menu) -> str | None:
        failure = "no_input"
        for attempt in range(menu.retries + 1):
            if attempt:
                await self._prompt(menu.retry_prompt or self.flow.sorry, barge_in=True)
            await self._prompt(menu.prompt, barge_in=menu.barge_in)
            got = await self._next_input(menu.timeout)
            if got is None:
                failure = "no_input"
                IVR_INPUTS.labels(kind="none", outcome="timeout").inc()
                self.log.info("menu_timeout", attempt=attempt + 1)
                continue
            kind, value = got
            if kind == "dropped":
                failure = "no_match"
                IVR_INPUTS.labels(kind="speech", outcome="dropped").inc()
                self.log.warning("menu_answer_dropped", reason=value, attempt=attempt + 1)
                continue
            if kind == "dtmf":
                choice = next((c for c in menu.choices if c.key == value), None)
            else:
                choice = match_choice(value, menu.choices)
            if choice is None:
                failure = "no_match"
                IVR_INPUTS.labels(kind=kind, outcome="invalid").inc()
                self.log.info("menu_invalid", kind=kind, value=value, attempt=attempt + 1)
                continue
            IVR_INPUTS.labels(kind=kind, outcome="match").inc()
            self.log.info("menu_choice", kind=kind, value=value, goto=choice.goto)
            if menu.var:
                self.variables[menu.var] = choice.goto
            self.variables["last_input"] = f"{kind}:{value}"
            return choice.goto
        return menu.no_input if failure == "no_input" else menu.no_match

    async def _gather(self, g: Gather) -> None:
        await self._prompt(g.prompt, barge_in=True)
        digits = ""
        timeout = g.timeout
        while not g.count or len(digits) < g.count:
            got = await self._next_input(timeout)
            if got is None:
                break
            kind, value = got
            if kind != "dtmf":
                continue  # speech while collecting digits is ignored
            if g.terminator and value == g.terminator:
                break
            digits += value
            timeout = g.inter_digit_timeout
        self.variables[g.var] = digits
        self.log.info("gathered", var=g.var, digits=digits)

    async def _record(self, r: Record) -> None:
        await self._prompt(r.prompt, barge_in=False)
        if r.beep:
            await self.call.play(beep(self.rate))
        while not self._inputs.empty():  # keys pressed before the tone do not stop it
            self._inputs.get_nowait()
        # What is taped so far goes to the app now, before the message starts (so none of
        # it is in the message), and the message is heard frame by frame: a silent caller's
        # last block would otherwise still be on the tape when the message stops.
        self.call.wake_media()
        self.message.start(min(int(r.max_seconds * self.rate) * 2, MESSAGE_MAX_BYTES))
        start = self.call.time
        self.message.last_voice = start
        stopped = "max_seconds"
        try:
            while self.call.time - start < r.max_seconds and not self.call.ended:
                try:
                    async with asyncio.timeout(0.1):
                        kind, value = await self._inputs.get()
                    if kind == "dtmf" and value == r.terminator:
                        stopped = "terminator"
                        break
                except TimeoutError:
                    pass
                quiet = self.call.time - max(self.message.last_voice, start)
                if quiet >= r.silence_seconds and not self.transcriber.in_speech:
                    stopped = "silence"
                    break
        finally:
            pcm = self.message.stop()
        path = self.data_dir / "messages" / f"{self.call.id}-{r.var}.wav"

        def save() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_wav(path, pcm, self.rate)

        await asyncio.to_thread(save)
        seconds = len(pcm) / 2 / self.rate
        relative = str(path.relative_to(self.data_dir))
        self.variables[r.var] = relative
        self.variables[f"{r.var}_seconds"] = round(seconds, 2)
        self.log.info("message_recorded", path=str(path), seconds=round(seconds, 2),
                      stopped_by=stopped)
        if self.store is not None:
            self.store.save_message(self.call.id, r.var, relative, round(seconds, 3),
                                    start=round(start, 3), stopped_by=stopped)
            # Transcribed beside the flow (the caller is not kept waiting for Whisper), at
            # post-call priority: live answers of other callers go first.
            task = asyncio.create_task(self._transcribe_message(r.var, pcm))
            self._message_tasks.add(task)
            task.add_done_callback(self._message_tasks.discard)

    async def _transcribe_message(self, name: str, pcm: bytes) -> None:
        """Transcribe a saved message with the shared engine (in a thread) and store it."""
        if self.stt is None or self.store is None or not pcm:
            return
        try:
            result = await asyncio.to_thread(self.stt.transcribe, pcm, self.rate)
        except Exception:
            self.log.exception("message_transcribe_failed", message=name)
            return
        self.store.set_message_transcript(self.call.id, name, result.text)
        self.log.info("message_transcribed", message=name, text=result.text,
                      rejected=result.rejected)

    async def _webhook(self, hook: Webhook) -> None:
        body = {"call": self.call.id, "audiosocket_uuid": str(self.call.uuid), "path": self.path,
                "variables": self.variables, "digits": "".join(self.digits),
                "speech": self.speech}
        try:
            timeout = aiohttp.ClientTimeout(total=hook.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                self.fill(hook.url), json=body
            ) as resp:
                self.variables["webhook_status"] = resp.status
                WEBHOOKS.labels(outcome=str(resp.status // 100) + "xx").inc()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.variables["webhook_status"] = "error"
            WEBHOOKS.labels(outcome="error").inc()
            self.log.warning("webhook_failed", url=hook.url, error=str(exc) or type(exc).__name__)

    def save(self) -> None:
        """The path, variables and result: on the call (its meta), the live view, the store."""
        self.call.meta["ivr"] = {"path": self.path, "variables": self.variables,
                                 "result": self.result}
        if self.live is not None:
            self.live.set_path(self.path)
        store = self.store
        if store is not None:
            variables = {**self.variables, "digits": "".join(self.digits),
                         "speech": list(self.speech)}
            plain = json.loads(json.dumps(variables, default=str))
            store.set_ivr(self.call.id, list(self.path), plain, self.result)

    async def finish(self) -> None:
        """At hang-up: the messages' transcripts, bounded like the live transcript's wait;
        a message still untranscribed after it keeps its audio and shows without text."""
        if self._message_tasks:
            _, late = await asyncio.wait(set(self._message_tasks), timeout=MESSAGE_STT_WAIT_S)
            if late:
                self.log.warning("message_transcripts_timed_out", pending=len(late))
