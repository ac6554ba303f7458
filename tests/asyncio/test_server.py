"""The asyncio server on loopback: HTTP answers to bad or plain requests, process_request,
handshake timeout, graceful shutdown, interop with the websockets library's client."""

from __future__ import annotations

import asyncio
import base64
import logging
import os

import pytest

import tether
from tether.asyncio.connection import WebSocket
from tether.asyncio.server import ServerConnection

from .conftest import UNIT, echo, run, serving

KEY = base64.b64encode(os.urandom(16)).decode()


async def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; return the status, headers (lower-case names) and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 50 * UNIT)  # the server closes after errors
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def upgrade(path: str = "/", **overrides: str | None) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class TestHandshakeAnswers:
    """RFC 6455 §4.2.1-4.2.2 over a real socket: what a bad request gets back."""

    @pytest.mark.parametrize(
        "request_bytes, status, phrase",
        [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426, "speaks WebSocket only"),
            (upgrade(Sec_WebSocket_Version="8"), 426, "must be 13"),
            (upgrade(Sec_WebSocket_Version=None), 426, "must be 13"),
            (upgrade(Sec_WebSocket_Key=None), 400, "missing Sec-WebSocket-Key"),
            (upgrade(Sec_WebSocket_Key="short"), 400, "Sec-WebSocket-Key"),
            (upgrade(Upgrade="h2c"), 400, "Upgrade header must include websocket"),
            (upgrade(Connection="keep-alive"), 400, "Connection header must include Upgrade"),
            (upgrade().replace(b"GET", b"POST", 1), 400, "requires GET"),
            (upgrade(Host=None), 400, "missing Host"),
            (b"\x16\x03\x01garbage\r\n\r\n", 400, "invalid HTTP"),
            (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "request target exceeds"),
            (upgrade(X_Big="y" * 20000), 431, "header block exceeds"),
        ],
    )
    def test_error_answers(self, request_bytes: bytes, status: int, phrase: str) -> None:
        async def main() -> None:
            async with serving() as (server, _):
                got, headers, body = await raw_request(server.port_number, request_bytes)
                assert got == status
                assert phrase in body.decode()
                assert body.endswith(b"\n") and body.count(b"\n") == 1  # one line
                assert headers["content-type"].startswith("text/plain")
                if status == 426:
                    assert headers["upgrade"] == "websocket"
                    assert headers["sec-websocket-version"] == "13"

        run(main())

    @pytest.mark.parametrize(
        "option, request_bytes, status, phrase",
        [
            ("max_request_line", upgrade("/" + "a" * 200), 414, "request target exceeds 100"),
            ("max_headers", upgrade(**{f"X_{i}": "y" for i in range(5)}), 431,
             "more than 8 header fields"),
            ("max_header_bytes", upgrade(X_Big="y" * 2000), 431, "header block exceeds 1024"),
        ],
    )
    def test_request_limits_are_serve_options(
        self, option: str, request_bytes: bytes, status: int, phrase: str
    ) -> None:
        """The request limits of the protocol layer, set through serve(): what fits the
        defaults (8 KiB target, 128 fields, 16 KiB block) is refused by tighter ones."""
        limits = {"max_request_line": 100, "max_headers": 8, "max_header_bytes": 1024}

        async def main() -> None:
            async with serving(**{option: limits[option]}) as (server, url):
                got, _, body = await raw_request(server.port_number, request_bytes)
                assert got == status and phrase in body.decode()
                async with tether.connect(url) as ws:  # an ordinary request still fits
                    await ws.send("ok")
                    assert await ws.recv() == "ok"
            async with serving() as (server, _):  # the defaults take the same request
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port_number)
                writer.write(request_bytes)
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101 ")
                writer.close()

        run(main())

    def test_101_with_accept_key(self) -> None:
        async def main() -> None:
            async with serving() as (server, _):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port_number)
                writer.write(upgrade(Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ=="))
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
                assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
                writer.close()

        run(main())


class TestProcessRequest:
    def test_sync_hook_answers_instead_of_upgrading(self) -> None:
        def process_request(ws: ServerConnection, request: tether.Request) -> tether.Response | None:
            if request.query_params.get("token") != ["secret"]:
                return ws.protocol.reject(401, "missing or invalid token")
            return None

        async def main() -> None:
            async with serving(process_request=process_request) as (server, url):
                # A plain GET is not an upgrade: 426, before any hook runs.
                status, _, _ = await raw_request(
                    server.port_number, b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                assert status == 426
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url + "/?token=wrong")
                assert info.value.response.status == 401
                assert info.value.response.body == b"missing or invalid token\n"
                async with tether.connect(url + "/?token=secret") as ws:
                    await ws.send("in")
                    assert await ws.recv() == "in"

        run(main())

    def test_async_hook(self) -> None:
        async def process_request(
            ws: ServerConnection, request: tether.Request
        ) -> tether.Response | None:
            await asyncio.sleep(UNIT)
            if request.path != "/ok":
                return ws.protocol.reject(404, "no such path")
            return None

        async def main() -> None:
            async with serving(process_request=process_request) as (_, url):
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url + "/nope")
                assert info.value.response.status == 404
                async with tether.connect(url + "/ok") as ws:
                    await ws.send("yes")
                    assert await ws.recv() == "yes"

        run(main())


class TestLimits:
    @staticmethod
    async def slowloris(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A client that starts a request and never finishes it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        return reader, writer

    def test_slowloris_clients_stay_while_good_clients_connect(self) -> None:
        """More slow clients than max_connections hold their sockets, not the capacity:
        good clients connect meanwhile (the one past max_connections gets 503), and the
        slow ones are dropped once open_timeout has passed."""
        open_timeout = 30 * UNIT  # the good clients' part within it, on a loaded machine too

        async def main() -> None:
            async with serving(open_timeout=open_timeout, max_connections=2) as (server, url):
                loop = asyncio.get_running_loop()
                started = loop.time()
                slow = [await self.slowloris(server.port_number) for _ in range(4)]
                while len(server.connections) < 4:
                    await asyncio.sleep(UNIT / 10)
                async with tether.connect(url) as first, tether.connect(url) as second:
                    for ws in (first, second):
                        await ws.send("in")
                        assert await ws.recv() == "in"
                    with pytest.raises(tether.InvalidStatus) as info:
                        await tether.connect(url)
                    assert info.value.response.status == 503
                    assert len(server.connections) >= 6  # every slow client still there
                    assert loop.time() - started < open_timeout
                for reader, writer in slow:
                    assert await asyncio.wait_for(reader.read(), 50 * UNIT) == b""  # dropped
                    writer.close()
                assert loop.time() - started >= open_timeout * 0.9  # by the timeout

        run(main())

    def test_each_handshake_times_out_at_its_own_deadline(self) -> None:
        """One timer serves every pending handshake: clients that arrive at different times
        are each dropped open_timeout after they connected, not all at the first deadline nor
        all at the last; an answered connection in front of them does not stop the timer, and
        a client that completes its handshake meanwhile stays."""
        open_timeout = 10 * UNIT  # clients 4 units apart, margins of 3: a stalled loop passes

        async def main() -> None:
            async with serving(open_timeout=open_timeout) as (server, url):
                loop = asyncio.get_running_loop()
                port = server.port_number
                # In front: a plain HTTP request, answered (426) and left open by its client.
                answered_reader, answered_writer = await asyncio.open_connection(
                    "127.0.0.1", port)
                answered_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await answered_reader.readline()).startswith(b"HTTP/1.1 426")
                started = []
                slow = []
                for _ in range(3):
                    started.append(loop.time())
                    slow.append(await self.slowloris(port))
                    await asyncio.sleep(4 * UNIT)
                async with tether.connect(url) as ws:
                    for (reader, writer), start in zip(slow, started):
                        assert await asyncio.wait_for(reader.read(), 50 * UNIT) == b""
                        dropped_after = loop.time() - start
                        assert open_timeout * 0.9 <= dropped_after < open_timeout + 3 * UNIT
                        writer.close()
                    await ws.send("still here")
                    assert await ws.recv() == "still here"
                answered_writer.close()

        run(main())

    def test_past_max_pending_handshakes_the_oldest_is_dropped(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A slowloris that fills max_pending_handshakes cannot lock anyone out: each new
        connection past the cap drops the oldest pending handshake, and a good client's
        completes long before it would be the oldest."""
        caplog.set_level(logging.INFO, logger="tether")

        async def main() -> None:
            async with serving(open_timeout=100 * UNIT, max_pending_handshakes=3) as (
                server, url
            ):
                slow = []
                for _ in range(3):
                    slow.append(await self.slowloris(server.port_number))
                    while len(server.handshakes) < len(slow):
                        await asyncio.sleep(UNIT / 10)
                async with tether.connect(url) as ws:
                    await ws.send("in")
                    assert await ws.recv() == "in"
                reader, writer = slow[0]  # the oldest made room
                assert await asyncio.wait_for(reader.read(), 50 * UNIT) == b""
                writer.close()
                for reader, writer in slow[1:]:  # the others are still waiting
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(reader.read(), UNIT)
                    writer.close()

        run(main())
        assert "event=drop" in caplog.text and "reason=too-many-handshakes" in caplog.text

    def test_max_pending_handshakes_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="max_pending_handshakes"):
            tether.serve(echo, "127.0.0.1", 0, max_pending_handshakes=0)


class TestShutdown:
    def test_close_sends_1001_to_every_client(self) -> None:
        async def main() -> None:
            server = await tether.serve(echo, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{server.port_number}"
            clients = [await tether.connect(url) for _ in range(5)]
            await server.close()
            for ws in clients:
                with pytest.raises(tether.ConnectionClosedOK):
                    await ws.recv()
                assert ws.close_code == 1001
                assert ws.close_reason == "server shutting down"
            with pytest.raises(OSError):
                await tether.connect(url)

        run(main())

    def test_close_aborts_what_does_not_finish(self) -> None:
        async def stubborn(ws: WebSocket) -> None:
            try:
                await asyncio.sleep(1000)
            except asyncio.CancelledError:
                await asyncio.sleep(1000)

        async def main() -> None:
            server = await tether.serve(stubborn, "127.0.0.1", 0, close_timeout=2 * UNIT)
            ws = await tether.connect(f"ws://127.0.0.1:{server.port_number}")
            ws.transport.pause_reading()  # type: ignore[union-attr]  # never answers close
            await server.close(timeout=3 * UNIT)
            assert not server.connections

        run(main())


class TestInterop:
    """tether's server against the websockets library's client (another implementation)."""

    @pytest.mark.parametrize("compression", ["deflate", None])
    def test_websockets_client(self, compression: str | None) -> None:
        websockets_client = pytest.importorskip("websockets.asyncio.client")

        async def main() -> None:
            async with serving() as (_, url):
                async with websockets_client.connect(url, compression=compression) as ws:
                    for message in ["hello", b"\x00" * 100_000, "é" * 70_000]:
                        await ws.send(message)
                        assert await ws.recv() == message
                    await ws.ping()

        run(main())


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


class TestHealthChecks:
    """GET /healthz and /readyz, on every server unless health_checks=False."""

    def test_live_and_ready(self) -> None:
        async def main() -> None:
            async with serving() as (server, url):
                port = server.port_number
                assert await raw_request(port, get("/healthz")) == (200, {
                    "content-type": "text/plain; charset=utf-8", "content-length": "3",
                    "cache-control": "no-store"}, b"ok\n")
                status, _, body = await raw_request(port, get("/readyz"))
                assert (status, body) == (200, b"ready\n")
                status, headers, body = await raw_request(port, get("/readyz", "HEAD"))
                assert (status, body, headers["content-length"]) == (200, b"", "6")
                assert (await raw_request(port, get("/healthz", "POST")))[0] == 405
                # An upgrade to the same path is still a WebSocket for a catch-all handler.
                async with tether.connect(url + "/healthz") as ws:
                    await ws.send("still a websocket")
                    assert await ws.recv() == "still a websocket"

        run(main())

    def test_not_ready_at_capacity_draining_and_by_check(self) -> None:
        async def main() -> None:
            async with serving(max_connections=1) as (server, url):
                port = server.port_number
                async with tether.connect(url):
                    status, _, body = await raw_request(port, get("/readyz"))
                    assert (status, body) == (503, b"not ready: at capacity\n")
                    # Liveness is not readiness: still alive.
                    assert (await raw_request(port, get("/healthz")))[0] == 200
                assert (await raw_request(port, get("/readyz")))[0] == 200
                reasons = ["redis unreachable"]
                server.ready_checks.append(lambda: reasons[0] if reasons else None)
                status, _, body = await raw_request(port, get("/readyz"))
                assert (status, body) == (503, b"not ready: redis unreachable\n")
                reasons.clear()
                assert (await raw_request(port, get("/readyz")))[0] == 200
                server.draining = True
                status, _, body = await raw_request(port, get("/readyz"))
                assert (status, body) == (503, b"not ready: shutting down\n")
                async with tether.connect(url) as ws:  # draining still serves
                    await ws.send("x")
                    assert await ws.recv() == "x"

        run(main())

    def test_an_http_route_of_the_app_wins_and_the_checks_can_be_off(self) -> None:
        async def main() -> None:
            router = tether.Router()
            router.add_http("/healthz", lambda request: tether.Response(
                200, tether.Headers([("Content-Length", "4")]), b"mine"))
            async with tether.serve(router, "127.0.0.1", 0) as server:
                port = server.port_number
                assert (await raw_request(port, get("/healthz")))[2] == b"mine"
                assert (await raw_request(port, get("/readyz")))[0] == 200
                assert (await raw_request(port, get("/nowhere")))[0] == 404
            async with serving(health_checks=False) as (server, url):
                assert (await raw_request(server.port_number, get("/healthz")))[0] == 426

        run(main())
