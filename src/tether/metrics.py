"""Prometheus metrics of a tether server (and its hub), read at scrape time.

The counters are plain numbers on objects that exist anyway (each connection counts its
messages and bytes, the server its handshakes and closes: see
:mod:`tether.asyncio.stats`); nothing here runs per message. A scrape walks the open
connections once, for the gauges (connections by route, unsent bytes, deflate contexts).

In code, register a collector with ``prometheus_client`` (``pip install 'tether[metrics]'``)::

    from prometheus_client import REGISTRY
    from tether.metrics import TetherCollector

    REGISTRY.register(TetherCollector(server, hub=hub))

From the command line, ``--metrics`` serves ``/metrics`` on the server's own port
(``--metrics-port`` on another one). docs/operations.md lists every metric.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import __version__
from .asyncio.stats import Histogram

if TYPE_CHECKING:
    from .asyncio.server import Server
    from .hub import Hub
    from .protocol.http11 import Request, Response

__all__ = ["TetherCollector", "LoopLag", "MissingExtra", "require_prometheus",
           "metrics_handler"]

EXTRA_HINT = "pip install 'tether[metrics]'"


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says what to install."""


def require_prometheus() -> Any:
    """The ``prometheus_client`` module.

    Raises:
        MissingExtra: it is not installed.
    """
    try:
        import prometheus_client
    except ImportError:
        raise MissingExtra(f"metrics need prometheus_client: {EXTRA_HINT}") from None
    return prometheus_client


class LoopLag:
    """Measures how late the event loop runs a timer: every ``interval`` seconds, a callback
    scheduled ``interval`` ahead records how much later than that it ran. High values mean
    something blocks the loop (a slow callback, a synchronous call) and every connection
    waits for it.

    Args:
        interval: seconds between samples (one timer; nothing else runs).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.histogram = Histogram()
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start sampling on the running loop."""
        if self._handle is None:
            self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.perf_counter() + self.interval
        self._handle = loop.call_later(self.interval, self._sample, loop)

    def _sample(self, loop: asyncio.AbstractEventLoop) -> None:
        self.histogram.observe(max(0.0, time.perf_counter() - self._due))
        self._schedule(loop)


class TetherCollector:
    """A ``prometheus_client`` collector: ``REGISTRY.register(TetherCollector(server))``.

    Args:
        server: the :class:`~tether.asyncio.server.Server` to report on.
        hub: its :class:`~tether.hub.Hub`, if it runs one (the ``tether_hub_*`` metrics).
        loop_lag: a started :class:`LoopLag` (``tether_event_loop_lag_seconds``).

    Raises:
        MissingExtra: ``prometheus_client`` is not installed.
    """

    def __init__(self, server: Server, hub: Hub | None = None,
                 loop_lag: LoopLag | None = None) -> None:
        self._prom = require_prometheus()
        self.server = server
        self.hub = hub
        self.loop_lag = loop_lag

    def describe(self) -> list[Any]:
        return []  # the names are only known from collect(); nothing to check at register

    def collect(self) -> Iterator[Any]:
        core = self._prom.metrics_core
        server = self.server
        stats = server.stats
        from .accel import IMPLEMENTATION

        info = core.InfoMetricFamily("tether_build", "tether's version and speed path")
        info.add_metric([], {"version": __version__, "implementation": IMPLEMENTATION})
        yield info

        # One pass over the open connections, for everything that is read off them.
        # Every route shows, open connections or not (a series that vanishes at 0 is hard
        # to alert on).
        router = server.router
        by_route: dict[str, int] = dict.fromkeys(
            router.websocket_routes if router is not None else (), 0)
        if router is None or router.default is not None:
            by_route["*"] = 0
        opening = len(server.handshakes)
        messages_in = stats.messages_received
        messages_out = stats.messages_sent
        bytes_in = stats.bytes_received
        bytes_out = stats.bytes_sent
        buffered_sum = 0
        buffered_max = 0
        deflate = 0
        for ws in list(server.connections):
            if ws in server.handshakes:
                continue
            by_route[ws.route] = by_route.get(ws.route, 0) + 1
            messages_in += ws.messages_received
            messages_out += ws.messages_sent
            bytes_in += ws.bytes_received
            bytes_out += ws.bytes_sent
            buffered = ws.buffered_amount
            buffered_sum += buffered
            if buffered > buffered_max:
                buffered_max = buffered
            if ws.protocol.extension is not None:
                deflate += 1

        gauge = core.GaugeMetricFamily("tether_connections",
                                       "Open WebSocket connections, by route",
                                       labels=["route"])
        for route, n in sorted(by_route.items()):
            gauge.add_metric([route], n)
        yield gauge
        yield core.GaugeMetricFamily(
            "tether_connections_opening",
            "Connections in their opening handshake (or answered and not closed yet)",
            value=opening)

        counter = core.CounterMetricFamily(
            "tether_handshakes", "WebSocket handshakes by outcome (upgraded, refused, "
            "timeout, dropped) and HTTP status (0: none was sent)",
            labels=["outcome", "status"])
        for (outcome, status), n in sorted(stats.handshakes.items()):
            counter.add_metric([outcome, str(status)], n)
        yield counter
        counter = core.CounterMetricFamily(
            "tether_http_requests", "Plain HTTP requests answered (pages, health checks, "
            "metrics, 404), by status", labels=["status"])
        for status, n in sorted(stats.http_requests.items()):
            counter.add_metric([str(status)], n)
        yield counter
        counter = core.CounterMetricFamily(
            "tether_closes", "Closed WebSocket connections by close code (as the browser "
            "reports it; 1006: no close frame; 0: other codes past the first 64) and by who "
            "sent the first close frame", labels=["code", "initiator"])
        for (code, initiator), n in sorted(stats.closes.items()):
            counter.add_metric([str(code), initiator], n)
        yield counter

        yield core.CounterMetricFamily("tether_messages_received",
                                       "WebSocket messages received", value=messages_in)
        yield core.CounterMetricFamily("tether_messages_sent",
                                       "WebSocket messages sent", value=messages_out)
        yield core.CounterMetricFamily("tether_received_bytes",
                                       "Bytes received on WebSocket connections "
                                       "(handshakes and frames, as read)", value=bytes_in)
        yield core.CounterMetricFamily("tether_sent_bytes",
                                       "Bytes sent on WebSocket connections "
                                       "(handshakes and frames, as written)", value=bytes_out)
        yield core.GaugeMetricFamily("tether_buffered_bytes",
                                     "Bytes accepted for sending and not yet handed to the "
                                     "kernel, summed over connections", value=buffered_sum)
        yield core.GaugeMetricFamily("tether_buffered_bytes_max",
                                     "The largest number of unsent bytes of one connection "
                                     "(the slowest client)", value=buffered_max)
        counter = core.CounterMetricFamily(
            "tether_slow_consumers", "Connections closed for falling behind, by the policy "
            "that cut them off", labels=["policy"])
        for policy, n in sorted(stats.slow_consumers.items()):
            counter.add_metric([policy], n)
        yield counter
        yield core.GaugeMetricFamily("tether_deflate_contexts",
                                     "Open connections with permessage-deflate (each holds "
                                     "zlib contexts)", value=deflate)
        yield self._histogram("tether_ping_rtt_seconds",
                              "Heartbeat round trips (ping to pong)", stats.ping_rtt)
        if self.loop_lag is not None:
            yield self._histogram("tether_event_loop_lag_seconds",
                                  "How late the event loop ran a timer",
                                  self.loop_lag.histogram)
        if self.hub is not None:
            yield from self._hub_metrics(self.hub)

    def _histogram(self, name: str, documentation: str, histogram: Histogram | None = None,
                   *, label: str | None = None,
                   by_label: dict[str, Histogram] | None = None) -> Any:
        """A histogram family: one ``histogram``, or one per value of ``label``."""
        family = self._prom.metrics_core.HistogramMetricFamily(
            name, documentation, labels=[label] if label else None)
        series = sorted(by_label.items()) if by_label is not None else [(None, histogram)]
        for value, one in series:
            assert one is not None
            family.add_metric([value] if value is not None else [],
                              [(_le(bound), n) for bound, n in one.cumulative()], one.sum)
        return family

    def _hub_metrics(self, hub: Hub) -> Iterator[Any]:
        core = self._prom.metrics_core
        topics = hub.topics()
        stats = hub.stats
        yield core.GaugeMetricFamily("tether_hub_topics", "Topics with local subscribers",
                                     value=len(topics))
        yield core.GaugeMetricFamily("tether_hub_subscribers",
                                     "Local subscriptions, over every topic",
                                     value=sum(topics.values()))
        yield core.CounterMetricFamily("tether_hub_deliveries",
                                       "Message frames handed to subscribers (live, held "
                                       "then flushed, replayed)", value=stats.delivered)
        yield core.CounterMetricFamily("tether_hub_dropped",
                                       "Messages skipped for slow subscribers (drop policy)",
                                       value=stats.dropped)
        yield core.CounterMetricFamily("tether_hub_publishes",
                                       "Messages stored by this hub", value=stats.publishes)
        yield core.CounterMetricFamily("tether_hub_dedup_hits",
                                       "Publishes recognised as repeats (a resend after a "
                                       "lost ack) and not stored again",
                                       value=stats.dedup_hits)
        counter = core.CounterMetricFamily(
            "tether_hub_resumes", "Subscribes that resumed from a seq, by outcome: exact, "
            "gap (some messages no longer kept), reset (another epoch)", labels=["outcome"])
        for outcome in ("exact", "gap", "reset"):
            counter.add_metric([outcome], stats.resumes.get(outcome, 0))
        yield counter
        counter = core.CounterMetricFamily(
            "tether_hub_backend_errors", "Backend calls that failed (backend unavailable), "
            "by call", labels=["call"])
        for call, n in sorted(stats.backend_errors.items()):
            counter.add_metric([call], n)
        yield counter
        yield self._histogram("tether_hub_backend_seconds",
                              "How long backend calls took, by call", label="call",
                              by_label=stats.backend_seconds)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def metrics_handler(registry: Any) -> Any:
    """An HTTP route handler (``router.add_http("/metrics", ...)``) answering with the
    registry's metrics in the Prometheus text format."""
    prom = require_prometheus()
    from .protocol.http11 import Headers, Response

    def handler(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, Headers([("Allow", "GET, HEAD"), ("Content-Length", "0")]))
        body = prom.generate_latest(registry)
        headers = Headers([("Content-Type", prom.CONTENT_TYPE_LATEST),
                           ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store")])
        return Response(200, headers, b"" if request.method == "HEAD" else body)

    return handler
