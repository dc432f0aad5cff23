"""The parts an app is composed of, instead of a chain of subclasses.

An app (a :class:`sessions.compose.Composed` session) is a list of parts. Each part is a
consumer of the call's stream: it hears each inbound frame (``hear``), each outbound one
(``sent``), or a block of both from the C media path (``take``), says whether it can take
blocks now (``ready``), and finishes when the call ends (``end``). A part that speaks
(``Speaker``) feeds the outbound stream through the call's playout. The built-in apps:

- ``record``: :class:`~sessions.parts.recording.Recording`;
- ``transcribe``: ``Recording`` + :class:`~sessions.parts.transcriber.Transcriber`;
- ``ivr``: ``Recording`` + ``Transcriber`` + :class:`~sessions.parts.message.MessageTap`,
  driven by :class:`~sessions.parts.flow_runner.FlowRunner`, speaking through
  :class:`~sessions.parts.speaker.Speaker` (every session has one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

from audiosocket.media import Event, Run

if TYPE_CHECKING:
    from audiosocket.media import MediaBlock
    from audiosocket.root.app import Need

__all__ = ["Part", "needs_of"]


def needs_of(*parts: type[Part]) -> tuple[Need, ...]:
    """An app's needs: the union of its parts' (in order, once each)."""
    out: list[Need] = []
    for part in parts:
        out.extend(n for n in part.needs if n not in out)
    return tuple(out)


class Part:
    """One consumer of a call's audio. Every method runs on the event loop; none may block."""

    #: The shared engines this part uses (see ``Session.needs``).
    needs: ClassVar[tuple[Need, ...]] = ()

    #: On the C path, hand the call back frame by frame at the first frame of sound (parts
    #: that detect speech).
    wake_on_sound = False

    def hear(self, pcm: bytes, tick: int) -> None:
        """An inbound frame of the call's rate, read when the clock was at ``tick``."""

    def sent(self, slot: int, pcm: bytes | None) -> None:
        """The outbound frame of ``slot`` (None: silence)."""

    def take(self, block: MediaBlock) -> None:
        """A block from the C path's tape. By default each frame, in the order the Python
        path delivers them; a part that can take the steady case at once overrides it."""
        for sent, tick, pcm in block.events():
            if sent:
                self.sent(tick, pcm)
            else:
                self.hear(pcm, tick)

    def take_runs(self, block: MediaBlock, run: Callable[[Run], bool]) -> None:
        """The block's steady runs to ``run`` (True: taken at once), and the rest, and any
        run it declines, frame by frame through ``hear``/``sent`` in the Python path's
        order."""
        for seg in block.segments():
            if isinstance(seg, Run):
                if run(seg):
                    continue
                events: Iterable[Event] = seg.events()
            else:
                events = (seg,)
            for sent, tick, pcm in events:
                if sent:
                    self.sent(tick, pcm)
                else:
                    self.hear(pcm, tick)

    def ready(self) -> bool:
        """Whether this part can take the call's audio in blocks from now on."""
        return True

    async def end(self, reason: str) -> None:
        """The call is over (parts end in reverse order: the transcript before the file)."""
