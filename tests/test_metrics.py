"""tether.metrics: each metric family moves as connections open, messages flow, clients are
cut off; read through prometheus_client's own text parser, as Prometheus would."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tether
from tether.asyncio.broadcast import broadcast
from tether.asyncio.router import Router
from tether.asyncio.stats import MAX_CLOSE_CODES, Histogram, ServerStats
from tether.hub import Hub, MemoryBackend
from tether.metrics import LoopLag, MissingExtra, TetherCollector

from .asyncio.conftest import UNIT, echo, run, until
from .asyncio.test_server import raw_request, upgrade

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of a scrape, parsed by prometheus_client's parser."""
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def registry_for(server: tether.Server, **options: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TetherCollector(server, **options))
    return registry


class TestConnectionsAndMessages:
    def test_connections_messages_bytes_and_closes(self) -> None:
        async def main() -> None:
            router = Router(default=echo)
            router.add_websocket("/chat", echo)
            async with tether.serve(router, "127.0.0.1", 0) as server:
                registry = registry_for(server)
                url = f"ws://127.0.0.1:{server.port_number}"
                before = scrape(registry)
                assert value(before, "tether_connections", route="/chat") == 0
                assert value(before, "tether_messages_received_total") == 0
                async with tether.connect(url + "/chat") as a, \
                        tether.connect(url + "/elsewhere?x=1") as b:
                    for i in range(3):
                        await a.send(f"message {i}")
                        assert await a.recv() == f"message {i}"
                    noise = os.urandom(1000)  # bytes on the wire: deflate cannot shrink it
                    await b.send(noise)
                    assert await b.recv() == noise
                    open_ = scrape(registry)
                    assert value(open_, "tether_connections", route="/chat") == 1
                    # A catch-all handler is one route, never the raw path.
                    assert value(open_, "tether_connections", route="*") == 1
                    assert value(open_, "tether_messages_received_total") == 4
                    assert value(open_, "tether_messages_sent_total") == 4
                    assert value(open_, "tether_received_bytes_total") > 1000
                    assert value(open_, "tether_sent_bytes_total") > 1000
                    assert value(open_, "tether_deflate_contexts") == 2  # both negotiated it
                    assert value(open_, "tether_handshakes_total",
                                 outcome="upgraded", status="101") == 2
                await until(lambda: not server.connections, what="closed")
                closed = scrape(registry)
                assert value(closed, "tether_connections", route="/chat") == 0
                # The totals survive the connections that made them.
                assert value(closed, "tether_messages_received_total") == 4
                assert value(closed, "tether_messages_sent_total") == 4
                assert value(closed, "tether_received_bytes_total") >= value(
                    open_, "tether_received_bytes_total")
                assert value(closed, "tether_closes_total", code="1000",
                             initiator="client") == 2
                assert value(closed, "tether_deflate_contexts") == 0

        run(main())

    def test_server_initiated_close_and_abnormal_close(self) -> None:
        async def closes_4001(ws: tether.WebSocket) -> None:
            await ws.close(4001, "bye")

        async def main() -> None:
            async with tether.serve(closes_4001, "127.0.0.1", 0) as server:
                registry = registry_for(server)
                async with tether.connect(f"ws://127.0.0.1:{server.port_number}") as ws:
                    with pytest.raises(tether.ConnectionClosed):
                        await ws.recv()
                # A client that vanishes without a close frame: 1006, nobody started it.
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port_number)
                writer.write(upgrade())
                await reader.readuntil(b"\r\n\r\n")
                writer.transport.abort()
                await until(lambda: not server.connections, what="closed")
                samples = scrape(registry)
                assert value(samples, "tether_closes_total", code="4001",
                             initiator="server") == 1
                assert value(samples, "tether_closes_total", code="1006",
                             initiator="server") + value(
                    samples, "tether_closes_total", code="1006", initiator="none") == 1

        run(main())


class TestHandshakes:
    def test_refusals_by_status(self) -> None:
        async def main() -> None:
            router = Router()
            router.add_websocket("/ws", echo)
            router.add_http("/page", lambda request: tether.Response(200))
            auth = tether.TokenAuth(["secret"])
            async with tether.serve(router, "127.0.0.1", 0, authenticate=auth,
                                    allowed_origins=["https://good.example"],
                                    max_header_bytes=1024) as server:
                registry = registry_for(server)
                port = server.port_number
                token = {"Authorization": "Bearer secret"}
                async with tether.connect(f"ws://127.0.0.1:{port}/ws",
                                          headers=list(token.items())):
                    pass
                cases = {
                    401: upgrade("/ws"),
                    403: upgrade("/ws", Origin="https://evil.example", **token),
                    404: upgrade("/nowhere", **token),
                    400: upgrade("/ws", **{"Sec-WebSocket-Key": "short"}, **token),
                    426: b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
                    431: upgrade("/ws", **{"X-Big": "a" * 2000}, **token),
                }
                for status, request in cases.items():
                    got, _, _ = await raw_request(port, request)
                    assert got == status, (status, got)
                assert (await raw_request(port, b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n"))[0] \
                    == 200
                await until(lambda: not server.connections, what="closed")
                samples = scrape(registry)
                assert value(samples, "tether_handshakes_total",
                             outcome="upgraded", status="101") == 1
                for status in cases:
                    assert value(samples, "tether_handshakes_total", outcome="refused",
                                 status=str(status)) == 1, status
                # A page is not a handshake.
                assert value(samples, "tether_http_requests_total", status="200") == 1

        run(main())

    def test_capacity_timeout_and_dropped(self) -> None:
        async def main() -> None:
            async with tether.serve(echo, "127.0.0.1", 0, max_connections=1,
                                    open_timeout=20 * UNIT,  # the second comes well before
                                    max_pending_handshakes=1) as server:
                registry = registry_for(server)
                port = server.port_number
                async with tether.connect(f"ws://127.0.0.1:{port}"):
                    assert (await raw_request(port, upgrade()))[0] == 503
                # Two silent sockets: the second pushes the first out; the second times out.
                first = socket.create_connection(("127.0.0.1", port))
                await until(lambda: len(server.handshakes) == 1, what="first pending")
                second = socket.create_connection(("127.0.0.1", port))
                samples: Samples = {}

                def counted() -> bool:
                    nonlocal samples
                    samples = scrape(registry)
                    return bool(value(samples, "tether_handshakes_total", outcome="timeout",
                                      status="0"))

                await until(counted, what="the timeout")
                first.close()
                second.close()
                assert value(samples, "tether_handshakes_total", outcome="refused",
                             status="503") == 1
                assert value(samples, "tether_handshakes_total", outcome="dropped",
                             status="0") == 1
                assert value(samples, "tether_handshakes_total", outcome="timeout",
                             status="0") == 1

        run(main())


class TestPingAndBuffers:
    def test_ping_round_trips(self) -> None:
        async def main() -> None:
            async with tether.serve(echo, "127.0.0.1", 0, ping_interval=UNIT,
                                    ping_timeout=20 * UNIT) as server:
                registry = registry_for(server)
                async with tether.connect(f"ws://127.0.0.1:{server.port_number}"):
                    await until(lambda: value(scrape(registry),
                                              "tether_ping_rtt_seconds_count") >= 2,
                                what="two pongs")
                samples = scrape(registry)
                assert 0 < value(samples, "tether_ping_rtt_seconds_sum") < 10 * UNIT
                assert value(samples, "tether_ping_rtt_seconds_bucket", le="+Inf") >= 2

        run(main())

    def test_buffered_bytes_and_slow_consumers(self) -> None:
        async def push(ws: tether.WebSocket) -> None:
            # Sends until broadcast() gives up on this client, which never reads.
            chunk = b"x" * 65536
            while ws.ready_state is tether.State.OPEN:
                broadcast([ws], chunk, max_buffered=256 * 1024)
                await asyncio.sleep(0)
            await ws.wait_closed()

        async def main() -> None:
            async with tether.serve(push, "127.0.0.1", 0, close_timeout=5 * UNIT) as server:
                registry = registry_for(server)
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port_number))
                sock.sendall(upgrade())
                await until(lambda: any(ws.buffered_amount > 0 for ws in server.connections),
                            what="unsent bytes")
                samples = scrape(registry)
                assert value(samples, "tether_buffered_bytes_max") > 0
                assert value(samples, "tether_buffered_bytes") >= value(
                    samples, "tether_buffered_bytes_max")
                await until(lambda: not server.connections, timeout=100 * UNIT,
                            what="the slow client closed")
                sock.close()
                samples = scrape(registry)
                assert value(samples, "tether_slow_consumers_total", policy="broadcast") == 1
                assert value(samples, "tether_buffered_bytes_max") == 0

        run(main())


class TestHub:
    def test_topics_subscribers_deliveries(self) -> None:
        async def main() -> None:
            hub = Hub(MemoryBackend())
            router = Router()

            @router.websocket("/ws")
            async def serve_hub(ws: tether.WebSocket) -> None:
                await hub.serve(ws, "someone")

            async with tether.serve(router, "127.0.0.1", 0) as server:
                registry = registry_for(server, hub=hub)
                url = f"ws://127.0.0.1:{server.port_number}/ws"
                async with tether.connect(url) as a, tether.connect(url) as b:
                    for ws in (a, b):
                        await ws.send('{"type": "subscribe", "topic": "room", "id": 1}')
                    await until(lambda: hub.topics().get("room") == 2, what="subscribed")
                    await hub.publish("room", "hello")
                    samples: Samples = {}

                    def delivered() -> bool:
                        nonlocal samples
                        samples = scrape(registry)
                        return value(samples, "tether_hub_deliveries_total") >= 2

                    await until(delivered, what="deliveries")
                    assert value(samples, "tether_hub_topics") == 1
                    assert value(samples, "tether_hub_subscribers") == 2
            await hub.close()

        run(main())


class TestHubCounters:
    def test_publishes_dedup_resumes_and_backend_calls(self) -> None:
        from tether.hub import BackendUnavailable

        async def main() -> None:
            backend = MemoryBackend()
            backend.history_size = 3  # a resume from seq 1 after 5 messages has a gap
            hub = Hub(backend)
            router = Router()

            @router.websocket("/ws")
            async def serve_hub(ws: tether.WebSocket) -> None:
                await hub.serve(ws, "pat")

            async with tether.serve(router, "127.0.0.1", 0) as server:
                registry = registry_for(server, hub=hub)
                url = f"ws://127.0.0.1:{server.port_number}/ws"

                async def frame(ws: tether.WebSocket, kind: str) -> dict[str, Any]:
                    while True:
                        got = json.loads(await ws.recv())
                        if got["type"] == kind:
                            return dict(got)

                async with tether.connect(url) as ws:
                    await ws.send('{"type": "subscribe", "topic": "t"}')
                    epoch = (await frame(ws, "subscribed"))["epoch"]
                    for i in range(5):
                        await ws.send(json.dumps({"type": "publish", "topic": "t",
                                                  "id": f"p{i}", "data": i}))
                        await frame(ws, "ack")
                    # The same publish again: acknowledged, not stored twice.
                    await ws.send('{"type": "publish", "topic": "t", "id": "p4", "data": 4}')
                    await frame(ws, "ack")
                    for since, ep in ((5, epoch), (1, epoch), (2, "another-epoch")):
                        await ws.send(json.dumps({"type": "subscribe", "topic": "t",
                                                  "since": since, "epoch": ep}))
                        await frame(ws, "subscribed")
                    samples = scrape(registry)
                    assert value(samples, "tether_hub_publishes_total") == 5
                    assert value(samples, "tether_hub_dedup_hits_total") == 1
                    for outcome in ("exact", "gap", "reset"):
                        assert value(samples, "tether_hub_resumes_total",
                                     outcome=outcome) == 1, outcome
                    assert value(samples, "tether_hub_backend_seconds_count",
                                 call="publish") == 5
                    assert value(samples, "tether_hub_backend_seconds_bucket", call="history",
                                 le="+Inf") >= 4
                    assert value(samples, "tether_hub_backend_errors_total",
                                 call="publish") == 0

                    async def down(*args: Any, **kwargs: Any) -> Any:
                        raise BackendUnavailable("down for the test")

                    backend.publish = down  # type: ignore[method-assign]
                    await ws.send('{"type": "publish", "topic": "t", "id": "x", "data": 0}')
                    assert (await frame(ws, "error"))["code"] == "unavailable"
                    samples = scrape(registry)
                    assert value(samples, "tether_hub_backend_errors_total",
                                 call="publish") == 1
                    assert value(samples, "tether_hub_publishes_total") == 5
            await hub.close()

        run(main())


class TestLoopLag:
    def test_a_blocked_loop_is_seen(self) -> None:
        async def main() -> Histogram:
            lag = LoopLag(interval=UNIT / 2)
            lag.start()
            await asyncio.sleep(UNIT)
            time.sleep(3 * UNIT)  # blocks the loop
            await asyncio.sleep(UNIT)
            lag.stop()
            return lag.histogram

        histogram = run(main())
        assert histogram.count >= 2
        # At least one sample saw most of the 3-unit block.
        over = [n for le, n in histogram.cumulative() if le >= 2 * UNIT]
        below = [n for le, n in histogram.cumulative() if le < 2 * UNIT]
        assert (below[-1] if below else 0) < histogram.count
        assert over[-1] == histogram.count


class TestStats:
    def test_close_codes_are_bounded(self) -> None:
        stats = ServerStats()
        for code in range(3000, 3000 + 2 * MAX_CLOSE_CODES):
            stats.count_close(code, "client")
        assert len(stats.closes) == MAX_CLOSE_CODES + 1
        assert stats.closes[0, "client"] == MAX_CLOSE_CODES
        assert sum(stats.closes.values()) == 2 * MAX_CLOSE_CODES

    def test_histogram_buckets(self) -> None:
        histogram = Histogram((0.1, 1.0))
        for v in (0.05, 0.1, 0.5, 2.0):
            histogram.observe(v)
        assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
        assert histogram.sum == pytest.approx(2.65)


class TestMissingExtra:
    def test_one_line_saying_what_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "prometheus_client", None)

        async def main() -> None:
            async with tether.serve(echo, "127.0.0.1", 0) as server:
                with pytest.raises(MissingExtra) as info:
                    TetherCollector(server)
                assert str(info.value) == ("metrics need prometheus_client: "
                                           "pip install 'tether[metrics]'")

        run(main())
