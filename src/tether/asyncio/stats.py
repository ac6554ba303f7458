"""What a server counts: plain numbers, updated where things happen, read when scraped.

No lock and no metrics library on the hot path. A connection counts its own messages and
bytes on attributes it already has (``messages_received``, ``bytes_sent``...); when it closes,
they are added to its server's :class:`ServerStats`, so a total is what closed connections
added plus what open ones hold now. :mod:`tether.metrics` turns these into Prometheus
metrics at scrape time; nothing here imports ``prometheus_client``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence

__all__ = ["Histogram", "ServerStats", "LATENCY_BUCKETS", "MAX_CLOSE_CODES"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histograms: ping round trips, event-loop lag,
backend calls."""

MAX_CLOSE_CODES = 64
"""Distinct close codes counted one by one; codes seen after that are counted as 0
("other"), so a peer cycling through codes cannot grow a server's memory or a scrape."""


class Histogram:
    """Counts of observations per bucket (``le`` upper bounds, as Prometheus has them), their
    sum and count. ``observe()`` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, observations <= le)`` per bound, then ``(inf, count)``."""
        out = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out


class ServerStats:
    """The counters of one :class:`~tether.asyncio.server.Server`.

    Attributes:
        handshakes: requests to a WebSocket route by ``(outcome, status)``: ``("upgraded",
            101)``, ``("refused", 403)``..., ``("timeout", 0)`` (the request never came whole
            within ``open_timeout``), ``("dropped", 0)`` (pushed out by
            ``max_pending_handshakes``).
        http_requests: plain HTTP requests answered by an HTTP route, by status.
        closes: closed WebSocket connections by ``(code, initiator)``: the code as the
            browser reports it (1006 without a close frame), and who sent the first close
            frame ("client", "server", or "none").
        slow_consumers: connections closed for falling behind, by the policy that cut them
            ("broadcast", "hub", "terminal", ...).
        messages_received, messages_sent, bytes_received, bytes_sent: of the connections
            already closed (open ones hold their own).
        ping_rtt: heartbeat round trips, in seconds.
    """

    __slots__ = ("handshakes", "http_requests", "closes", "slow_consumers",
                 "messages_received", "messages_sent", "bytes_received", "bytes_sent",
                 "ping_rtt")

    def __init__(self) -> None:
        self.handshakes: Counter[tuple[str, int]] = Counter()
        self.http_requests: Counter[int] = Counter()
        self.closes: Counter[tuple[int, str]] = Counter()
        self.slow_consumers: Counter[str] = Counter()
        self.messages_received = 0
        self.messages_sent = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.ping_rtt = Histogram()

    def count_close(self, code: int, initiator: str) -> None:
        closes = self.closes
        key = (code, initiator)
        if key not in closes and len(closes) >= MAX_CLOSE_CODES:
            key = (0, initiator)
        closes[key] += 1
