"""A rate limit for the log lines a peer can cause, kept apart from the server it serves."""

from __future__ import annotations

import asyncio
import time

import structlog

__all__ = ["PEER_LOG_BURST", "PEER_LOG_MAX_HOSTS", "PEER_LOG_WINDOW_S", "PeerLogLimit"]

log = structlog.get_logger("audiosocket.server")

#: Protocol warnings logged per peer host and window; the rest are summed up in one line.
PEER_LOG_BURST = 10
PEER_LOG_WINDOW_S = 60.0
#: Hosts tracked at once; past this, new hosts share one budget (a spray of addresses).
PEER_LOG_MAX_HOSTS = 1024


class PeerLogLimit:
    """Rate limit for the log lines a peer can cause (a fuzzer's 1 M frames wrote 30,000).

    Per peer host, the first ``burst`` lines of a ``window_s`` window are logged; the rest
    are counted and reported in one ``peer_log_suppressed`` line when the window ends.
    Only logging is limited: callers count every event in the metrics first.
    """

    def __init__(self, burst: int | None = None, window_s: float | None = None,
                 max_hosts: int | None = None) -> None:
        self.burst = PEER_LOG_BURST if burst is None else burst
        self.window_s = PEER_LOG_WINDOW_S if window_s is None else window_s
        self.max_hosts = PEER_LOG_MAX_HOSTS if max_hosts is None else max_hosts
        # host -> (window start, lines logged, suppressed count per event)
        self._hosts: dict[str, tuple[float, int, dict[str, int]]] = {}

    def allow(self, host: str, event: str) -> bool:
        """Whether to log ``event`` for ``host`` now; counts it as suppressed if not."""
        now = time.monotonic()
        if host not in self._hosts and len(self._hosts) >= self.max_hosts:
            for old in [h for h, (t0, _, sup) in self._hosts.items()
                        if now - t0 >= self.window_s and not sup]:
                del self._hosts[old]
            if len(self._hosts) >= self.max_hosts:
                host = "(other peers)"
        start, logged, suppressed = self._hosts.get(host, (now, 0, {}))
        if now - start >= self.window_s and not suppressed:
            start, logged = now, 0
        if logged < self.burst:
            self._hosts[host] = (start, logged + 1, suppressed)
            return True
        if not suppressed:  # the window's first suppressed line: report at its end
            asyncio.get_running_loop().call_later(
                max(0.0, start + self.window_s - now), self._report, host)
        suppressed[event] = suppressed.get(event, 0) + 1
        self._hosts[host] = (start, logged, suppressed)
        return False

    def _report(self, host: str) -> None:
        _, _, suppressed = self._hosts.pop(host, (0.0, 0, {}))
        if suppressed:
            log.warning("peer_log_suppressed", peer=host, suppressed=sum(suppressed.values()),
                        events=suppressed, window_s=self.window_s)
