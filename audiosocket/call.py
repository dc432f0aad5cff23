"""The call: what the server knows of one AudioSocket connection, and the interface it hands
to the session (app) that runs on it."""

from __future__ import annotations

import asyncio
import time
import uuid as _uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from audiosocket.clock import Playback, Playout
from audiosocket.protocol import FRAME_MS

__all__ = ["END_REASONS", "Call", "CallIds"]

#: Every call ends with exactly one of these (the label of ``audiosocket_calls_ended_total``).
END_REASONS = (
    "remote_closed",  # the peer closed the socket: how Asterisk hangs up
    "remote_reset",  # the connection was reset or broke
    "remote_hangup",  # the peer sent a hang-up frame (non-Asterisk peers)
    "app_hangup",  # the app hung up
    "app_error",  # an app hook raised
    "protocol_error",  # a malformed frame
    "max_duration",  # the call hit max_duration_s
    "inactivity",  # nothing either way for inactivity_timeout_s
    "write_stalled",  # the peer stopped reading our frames
    "overload",  # refused: max_calls reached
    "duplicate_uuid",  # refused: a live (not yet ended) call has this UUID
    "shutdown",  # the server stopped
)


class CallIds:
    """Call ids already used, so that a reused AudioSocket UUID gets an id of its own.

    Dialplans with a fixed UUID send the same one on every call; the id names the call's
    row, files and URLs, so a second call under the first one's id would overwrite it. Kept
    in memory because the id is chosen on the event loop, where the store may not be read
    (rule 1). Ids are held as 64-bit hashes in a sorted array (8 bytes a call): a hash
    collision only gives a new UUID a fresh id, which is harmless.
    """

    #: Ids added since the last merge into the sorted array; the merge is one O(n) insert.
    MERGE_AT = 65_536

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._sorted = np.unique(np.fromiter((hash(i) for i in ids), dtype=np.int64))
        self._recent: set[int] = set()

    def __contains__(self, call_id: object) -> bool:
        h = hash(call_id)
        if h in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, h))
        return i < len(self._sorted) and int(self._sorted[i]) == h

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def add(self, call_id: str) -> None:
        """Mark ``call_id`` as used."""
        self._recent.add(hash(call_id))
        if len(self._recent) >= self.MERGE_AT:
            new = np.unique(np.fromiter(self._recent, dtype=np.int64))
            self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)
            self._recent.clear()


class Call:
    """One live call. Sessions use: ``uuid``, ``id``, ``rate``, ``peer``, ``tick``/``time``
    (the call's timeline from the shared clock), ``play``, ``feed``, ``clear``, ``hangup``.

    ``uuid`` is the AudioSocket UUID the call arrived with; ``id`` is the call's own id, which
    names its store rows, files and URLs: the UUID itself unless an earlier call had it.
    """

    def __init__(
        self,
        call_uuid: _uuid.UUID,
        playout: Playout,
        *,
        peer: str,
        app: str,
        end: Callable[[str], None],
        call_id: str | None = None,
    ) -> None:
        self.uuid = call_uuid
        self.id = call_id or str(call_uuid)
        self.playout = playout
        self.peer = peer
        self.app = app
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.inbound_rate: int | None = None
        self.ulaw = False
        self.end_reason: str | None = None
        self.ended_at: float | None = None
        self.frames_in = 0  # frames taken by the server's fast path are added once a second
        self.audio_bytes_in = 0
        self.dtmf_in = 0
        self._end = end
        #: Free-form data an app wants stored with the call (IVR path, variables...).
        self.meta: dict[str, Any] = {}
        self.closed: asyncio.Event = asyncio.Event()
        #: Set by the server while the app takes its audio in blocks from the C path: ask
        #: for frame-by-frame delivery again (a listen-in starts, for one).
        self.media_wake: Callable[[], None] | None = None

    def wake_media(self) -> None:
        """Deliver this call's audio frame by frame from now on (the app's ``media_ready``
        decides when it may go back to blocks)."""
        wake = self.media_wake
        if wake is not None:
            wake()

    # -- the timeline --------------------------------------------------------------------

    @property
    def rate(self) -> int:
        """The call's rate: what the peer sends, and what we send back."""
        return self.playout.rate

    @property
    def frame_bytes(self) -> int:
        """Bytes of one 20 ms frame at the call's rate."""
        return self.playout.frame_size

    @property
    def tick(self) -> int:
        """Ticks of the shared clock since the UUID arrived."""
        self.playout.sync_counters()
        return self.playout.ticks

    @property
    def time(self) -> float:
        """Seconds since the UUID arrived, on the clock's timeline."""
        self.playout.sync_counters()
        return self.playout.ticks * FRAME_MS / 1000

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    # -- actions -------------------------------------------------------------------------

    def play(self, pcm: bytes, *, silence_after: int = 0, shared: bool = False) -> Playback:
        """Queue a clip at the call's rate (then ``silence_after`` bytes of silence); await
        the result for playback-complete. ``shared``: other calls play this very object
        too (a cached prompt), so its frames are made once for all of them."""
        return self.playout.play(pcm, silence_after=silence_after, shared=shared)

    def play_parts(self, parts: Sequence[tuple[bytes, int]], *, shared: bool = False) -> Playback:
        """:meth:`play` of ``(pcm, silence_after)`` parts as one clip (one completion)."""
        return self.playout.play_parts(parts, shared=shared)

    def feed(self, pcm: bytes) -> None:
        """Queue live audio (no padding, no completion event), held at the
        ``live_latency_ms`` target: what is queued beyond it is dropped oldest first and
        counted, so a stall never leaves a lasting delay. A clip to be heard whole is
        :meth:`play`'s job."""
        self.playout.feed(pcm)

    def clear(self) -> int:
        """Drop queued audio; silence goes out at the next tick."""
        return self.playout.clear()

    def hangup(self, reason: str = "app_hangup") -> None:
        """End the call: a ``00 00 00`` frame, then the socket is closed."""
        self._end(reason)
