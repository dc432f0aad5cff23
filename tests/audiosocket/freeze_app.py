"""A deliberately broken app for the watchdog tests: key 9 blocks the event loop.

``FREEZE_S`` (environment, default 600) is how long; it stands for any app or library call
that blocks the loop by mistake (or a deadlock inside one).
"""

from __future__ import annotations

import os
import time

from sessions.record import RecordSession


class FreezeOnNine(RecordSession):
    """Records like the ``record`` app; pressing 9 freezes the whole server."""

    name = "freeze"

    def on_dtmf(self, digit: str) -> None:
        if digit == "9":
            time.sleep(float(os.environ.get("FREEZE_S", "600")))
