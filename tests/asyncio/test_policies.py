"""The server's handshake policies and liveness, each over a real loopback socket: tokens
(401), origins (403), routes (404, HTTP, static, 426), capacity (503), TLS, heartbeats."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.asyncio import connection
from tether.asyncio.broadcast import DEFAULT_MAX_BUFFERED
from tether.asyncio.connection import WebSocket
from tether.asyncio.router import text_response
from tether.asyncio.server import ServerConnection

from .conftest import UNIT, echo, run, serving, until
from .test_server import raw_request, upgrade


async def whoami(ws: WebSocket) -> None:
    assert isinstance(ws, ServerConnection)
    await ws.send(f"user={ws.user} subprotocol={ws.subprotocol}")
    await ws.wait_closed()


class TestTokens:
    AUTH = tether.TokenAuth({"s3cret-token": "alice", "other": "bob"})

    @pytest.mark.parametrize("how", ["header", "query", "cookie", "subprotocol"])
    def test_each_source(self, how: str) -> None:
        async def main() -> None:
            async with serving(whoami, authenticate=self.AUTH, subprotocols=["chat"]) as (
                _, url
            ):
                options: dict[str, Any] = {}
                target = url + "/"
                if how == "header":
                    options["headers"] = {"Authorization": "Bearer s3cret-token"}
                elif how == "query":
                    target += "?token=s3cret-token"
                elif how == "cookie":
                    options["headers"] = {"Cookie": "theme=dark; token=s3cret-token"}
                else:
                    options["subprotocols"] = ["chat", "bearer.s3cret-token"]
                async with tether.connect(target, **options) as ws:
                    greeting = await ws.recv()
                    expected = "chat" if how == "subprotocol" else None
                    assert greeting == f"user=alice subprotocol={expected}"
                    # The token offered as a subprotocol is never selected.
                    assert ws.subprotocol == expected

        run(main())

    @pytest.mark.parametrize("headers", [
        {}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"},
        {"Cookie": "token=wrong"},
    ])
    def test_refused_with_401_before_any_websocket(self, headers: dict[str, str]) -> None:
        async def main() -> None:
            async with serving(whoami, authenticate=self.AUTH) as (server, url):
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url, headers=headers)
                response = info.value.response
                assert response.status == 401
                assert response.headers.get("WWW-Authenticate") == "Bearer"
                assert b"token" in response.body
                await until(lambda: not server.connections, what="the refused connection gone")

        run(main())

    def test_async_authenticate(self) -> None:
        async def authenticate(request: tether.Request) -> str | None:
            await asyncio.sleep(UNIT)
            return "carol" if request.headers.get("X-Key") == "k" else None

        async def main() -> None:
            async with serving(whoami, authenticate=authenticate) as (_, url):
                async with tether.connect(url, headers={"X-Key": "k"}) as ws:
                    assert (await ws.recv()).startswith("user=carol")
                with pytest.raises(tether.InvalidStatus):
                    await tether.connect(url)

        run(main())

    def test_tokens_never_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="tether")

        async def main() -> None:
            async with serving(whoami, authenticate=self.AUTH) as (_, url):
                async with tether.connect(url + "/?token=s3cret-token") as ws:
                    await ws.recv()
                with pytest.raises(tether.InvalidStatus):
                    await tether.connect(url + "/?token=leaky-wrong-token")

        run(main())
        assert "event=open" in caplog.text and "status=401" in caplog.text
        assert "s3cret-token" not in caplog.text
        assert "leaky-wrong-token" not in caplog.text

    def test_token_file(self, tmp_path: Path) -> None:
        path = tmp_path / "tokens"
        path.write_text("# comment\n\nfile-token dave\nbare-token\n")
        auth = tether.TokenAuth.from_file(path)
        request = tether.Request("GET", "/?token=file-token", tether.Headers())
        assert auth(request) == "dave"
        assert auth(tether.Request("GET", "/?token=bare-token", tether.Headers())) is not None
        assert auth(tether.Request("GET", "/?token=nope", tether.Headers())) is None


class TestOrigins:
    def test_allow_and_deny(self) -> None:
        async def main() -> None:
            origins = ["https://app.example.com", "https://*.example.org"]
            async with serving(echo, allowed_origins=origins) as (_, url):
                for origin in ["https://app.example.com", "https://a.example.org", None]:
                    async with tether.connect(url, origin=origin) as ws:
                        await ws.send("ok")
                        assert await ws.recv() == "ok"
                for origin in ["https://evil.example.com", "https://example.org", "null"]:
                    with pytest.raises(tether.InvalidStatus) as info:
                        await tether.connect(url, origin=origin)
                    assert info.value.response.status == 403
                    assert info.value.response.body == b"origin not allowed\n"

        run(main())

    def test_origin_required(self) -> None:
        async def main() -> None:
            policy = tether.OriginPolicy(["https://app.example.com"], require_origin=True)
            async with serving(echo, allowed_origins=policy) as (_, url):
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url)
                assert info.value.response.status == 403
                assert b"Origin header required" in info.value.response.body

        run(main())


class TestRouting:
    @staticmethod
    def router(tmp_path: Path) -> tether.Router:
        router = tether.Router()
        router.add_websocket("/echo", echo)
        router.add_websocket("/who", whoami)

        @router.http("/healthz")
        def healthz(request: tether.Request) -> tether.Response:
            return text_response(200, "ok")

        @router.http("/slow")
        async def slow(request: tether.Request) -> tether.Response:
            await asyncio.sleep(UNIT)
            return text_response(200, "slow ok")

        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "index.html").write_text("<h1>hi</h1>")
        (tmp_path / "secret.txt").write_text("do not serve")
        router.static("/static", tmp_path / "site")
        return router

    def test_routes(self, tmp_path: Path) -> None:
        async def main() -> None:
            async with serving(self.router(tmp_path)) as (server, url):
                port = server.port_number
                assert (await raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[
                    ::2] == (200, b"ok")
                assert (await raw_request(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"))[
                    ::2] == (200, b"slow ok")
                status, headers, body = await raw_request(
                    port, b"GET /static/ HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (status, body) == (200, b"<h1>hi</h1>")
                assert headers["content-type"] == "text/html; charset=utf-8"
                for path in [b"/static/../secret.txt", b"/static/%2e%2e/secret.txt", b"/nope"]:
                    status, _, _ = await raw_request(
                        port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert status == 404
                # A WebSocket path answers plain HTTP with 426, unknown paths with 404.
                assert (await raw_request(port, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"))[
                    0] == 426
                status, _, body = await raw_request(port, upgrade("/missing"))
                assert (status, body) == (404, b"not found")
                async with tether.connect(url + "/echo") as ws:
                    await ws.send("routed")
                    assert await ws.recv() == "routed"

        run(main())


class TestCapacity:
    def test_503_beyond_max_connections(self) -> None:
        async def main() -> None:
            async with serving(echo, max_connections=2) as (server, url):
                first = await tether.connect(url)
                second = await tether.connect(url)
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url)
                assert info.value.response.status == 503
                assert info.value.response.headers.get("Retry-After") == "5"
                # The body says why.
                assert info.value.response.body == b"server at capacity; try again later"
                assert info.value.response.headers.get("Content-Type", "").startswith(
                    "text/plain")
                await first.close()
                while len(server.connections) > 1:
                    await asyncio.sleep(UNIT / 10)
                async with tether.connect(url) as third:  # room again
                    await third.send("in")
                    assert await third.recv() == "in"
                await second.close()

        run(main())


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for localhost and 127.0.0.1 from a CA made here
    (trustme), and a client context that trusts that CA."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


class TestTLS:
    def test_wss_with_a_certificate_made_here(self) -> None:
        server_context, client_context = tls_contexts()

        async def main() -> None:
            async with tether.serve(echo, "127.0.0.1", 0, ssl=server_context) as server:
                url = f"wss://localhost:{server.port_number}"
                async with tether.connect(url, ssl=client_context) as ws:
                    await ws.send("secure")
                    assert await ws.recv() == "secure"
                # The client verifies by default: this CA is not in the system store.
                with pytest.raises(ssl.SSLCertVerificationError):
                    await tether.connect(url)

        run(main())

    @pytest.mark.parametrize("compression", [None, "deflate"])
    def test_large_messages_over_wss(self, compression: str | None) -> None:
        """Large frames are read in place through TLS too (the TLS layer fills the frame
        header's small buffer, then the payload's): a stream of large messages mixed with
        small ones comes back whole and in order, both ways."""
        server_context, client_context = tls_contexts()
        rng = random.Random(7692)
        messages: list[str | bytes] = []
        for i in range(4):  # random bytes: large frames even when compressed
            messages += [rng.randbytes(100_000 + 400_000 * i), f"small {i}", "é" * 70_000]

        async def main() -> None:
            async with tether.serve(echo, "127.0.0.1", 0, ssl=server_context,
                                    compression=compression, max_size=2 << 20) as server:
                url = f"wss://localhost:{server.port_number}"
                async with tether.connect(url, ssl=client_context, compression=compression,
                                          max_size=2 << 20) as ws:
                    for message in messages:
                        ws.send_nowait(message)
                    for message in messages:
                        assert await ws.recv() == message

        run(main())

    def test_silent_client_on_a_wss_port_is_dropped_after_open_timeout(self) -> None:
        """A client that opens TCP and never starts TLS is dropped after ``open_timeout``
        (the TLS handshake's bound too), not asyncio's default of 60 s."""
        server_context, client_context = tls_contexts()
        open_timeout = 3 * UNIT

        async def main() -> None:
            async with tether.serve(echo, "127.0.0.1", 0, ssl=server_context,
                                    open_timeout=open_timeout) as server:
                port = server.port_number
                silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
                loop = asyncio.get_running_loop()
                started = loop.time()
                async with tether.connect(f"wss://localhost:{port}", ssl=client_context) as ws:
                    await ws.send("still served")  # meanwhile, others get in
                    assert await ws.recv() == "still served"
                for reader, writer in silent:
                    assert await asyncio.wait_for(reader.read(), 50 * UNIT) == b""  # dropped
                    writer.close()
                assert loop.time() - started < open_timeout + 10 * UNIT

        run(main())


class TestHeartbeat:
    def test_silent_peer_is_closed_within_interval_plus_timeout(self) -> None:
        interval, timeout = 3 * UNIT, 3 * UNIT

        async def main() -> None:
            async with serving(echo, ping_interval=interval, ping_timeout=timeout) as (
                server, _
            ):
                # A raw client: completes the handshake, then never answers anything, like a
                # peer whose network vanished (half-open TCP).
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port_number)
                writer.write(upgrade())
                await reader.readuntil(b"\r\n\r\n")
                loop = asyncio.get_running_loop()
                started = loop.time()
                while server.connections and loop.time() - started < 10 * (interval + timeout):
                    await asyncio.sleep(UNIT / 10)
                elapsed = loop.time() - started
                assert not server.connections, "the silent peer was never released"
                assert elapsed < (interval + timeout) * 1.5 + 5 * UNIT
                data = await reader.read()  # a ping, then a close frame 1011
                assert data[0] == 0x89
                assert b"\x03\xf3keepalive ping timeout" in data
                writer.close()

        run(main())

    def test_answering_peer_stays_and_latency_is_measured(self) -> None:
        async def main() -> None:
            # A timeout far above the interval: a loop stalled for a moment is no dead peer.
            async with serving(echo, ping_interval=UNIT, ping_timeout=30 * UNIT) as (
                server, url
            ):
                async with tether.connect(url) as ws:
                    server_ws = next(iter(server.connections))
                    await until(lambda: server_ws.latency > 0, what="a pong")
                    await ws.send("alive")
                    assert await ws.recv() == "alive"
                    assert 0 < server_ws.latency < 20 * UNIT  # measured, and sane

        run(main())

    @pytest.mark.parametrize("interval, timeout", [(4, 4), (4, 2), (2, 4)])
    def test_pings_keep_their_cadence_and_answered_ones_never_close(
        self, interval: int, timeout: int
    ) -> None:
        """A peer that answers every ping gets one every max(ping_interval, ping_timeout),
        each with a payload of its own, and stays connected; an application's ping() with
        the next heartbeat's payload meanwhile is answered as usual."""
        # Two units per step of the parameters: a check of 0.4 s at least, so that a loop
        # stalled for a moment (the raw client shares it) is no missed pong.
        interval, timeout = 2 * interval, 2 * timeout

        async def main() -> None:
            async with serving(echo, ping_interval=interval * UNIT,
                               ping_timeout=timeout * UNIT) as (server, _):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port_number)
                writer.write(upgrade())
                await reader.readuntil(b"\r\n\r\n")
                server_ws = next(iter(server.connections))
                # The next heartbeat's payload (a counter), taken by the application first.
                taken = (next(connection._HEARTBEATS) + 1).to_bytes(4, "big")
                app_ping = asyncio.ensure_future(server_ws.ping(taken))
                payloads: list[bytes] = []
                loop = asyncio.get_running_loop()
                span = 6 * max(interval, timeout) * UNIT
                deadline = loop.time() + span
                while loop.time() < deadline:
                    try:
                        header = await asyncio.wait_for(reader.readexactly(2), UNIT)
                    except asyncio.TimeoutError:
                        continue
                    assert header[0] == 0x89, header  # only pings come
                    payloads.append(await reader.readexactly(header[1] & 0x7F))
                    if len(payloads) == 1:
                        continue  # the application's pong waits: its payload stays taken
                    for payload in payloads[-2 if len(payloads) == 2 else -1:]:
                        mask = os.urandom(4)
                        writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask
                                     + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                assert await asyncio.wait_for(app_ping, 10 * UNIT) >= 0
                heartbeats = payloads[1:]  # the first is the application's
                assert payloads[0] == taken
                assert taken not in heartbeats
                assert len(set(heartbeats)) == len(heartbeats), heartbeats
                assert 3 <= len(heartbeats) <= 7, len(heartbeats)
                assert server.connections == {server_ws}  # never closed
                writer.close()

        run(main())


    def test_connections_share_one_queue_and_leave_it_when_closed(self) -> None:
        """The heartbeat of every connection with the same settings runs from queues the loop
        shares (one timer each, not one per connection): 20 connections opened over time
        all get pinged and answered, a closed one leaves the queues at once (nothing keeps
        it), and the others go on being pinged."""
        async def main() -> None:
            # The checks 5 units after each ping: a loop stalled for a moment drops no peer.
            async with serving(echo, ping_interval=2 * UNIT, ping_timeout=5 * UNIT) as (
                server, url
            ):
                clients = []
                for _ in range(20):
                    clients.append(await tether.connect(url))
                    await asyncio.sleep(UNIT / 10)
                by_address = {ws.remote_address: ws for ws in server.connections}
                sides = [by_address[c.transport.get_extra_info("sockname")]  # type: ignore[union-attr]
                         for c in clients]  # each client's server side, in the same order
                heartbeats = {ws._heartbeat for ws in sides}  # type: ignore[attr-defined]
                assert len(heartbeats) == 1 and None not in heartbeats
                (heartbeat,) = heartbeats
                queued = set(heartbeat.first.due) | set(heartbeat.check.due)
                assert queued == set(sides)
                await until(lambda: all(ws.latency > 0 for ws in sides), what="every pong")
                closing = sides[:10]
                for client in clients[:10]:
                    await client.close()
                await until(lambda: not any(ws in server.connections for ws in closing))
                queued = set(heartbeat.first.due) | set(heartbeat.check.due)
                assert queued == set(sides[10:])
                for ws in sides[10:]:
                    ws.latency = 0.0
                await until(lambda: all(ws.latency > 0 for ws in sides[10:]), what="pongs again")
                assert server.connections == set(sides[10:])
                for client in clients[10:]:
                    await client.close()

        run(main())

class TestBroadcast:
    def test_slow_client_is_closed_and_the_others_get_everything_in_order(self) -> None:
        """A client that never reads is closed with 1013 once past its budget; the server
        never holds more than that for it; 50 others receive every message in order."""
        count, size, budget = 100, 10_000, 64 * 1024
        observed: list[int] = []

        async def relay(ws: WebSocket) -> None:
            assert isinstance(ws, ServerConnection)
            async for message in ws:
                tether.broadcast(ws.server.connections, message, max_buffered=budget)
                observed.extend(c.buffered_amount for c in ws.server.connections)

        async def main() -> None:
            async with serving(relay, compression=None, max_size=None) as (server, url):
                slow = await tether.connect(url, compression=None)
                assert slow.transport is not None
                # Small kernel buffers, so the backlog builds up in the server, where the
                # budget applies, rather than in the kernel.
                sock = slow.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                (slow_side,) = server.connections
                slow_side.transport.get_extra_info("socket").setsockopt(  # type: ignore[union-attr]
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                slow.transport.pause_reading()  # never reads
                fast = [await tether.connect(url, compression=None) for _ in range(50)]
                received: list[list[str]] = [[] for _ in fast]
                progress = asyncio.Condition()

                async def receive_all(i: int) -> None:
                    for _ in range(count):
                        message = await fast[i].recv()
                        assert isinstance(message, str)
                        received[i].append(message[:5])
                        async with progress:
                            progress.notify_all()

                receivers = [asyncio.ensure_future(receive_all(i)) for i in range(len(fast))]
                for n in range(count):
                    await fast[n % len(fast)].send(f"{n:05d}" + "x" * size)
                    async with progress:  # everyone has it before the next one goes out
                        await progress.wait_for(lambda: all(len(r) > n for r in received))
                await asyncio.gather(*receivers)
                expected = [f"{n:05d}" for n in range(count)]
                assert all(r == expected for r in received)
                assert max(observed) <= budget + size + 16  # never past budget + one frame
                assert slow_side.protocol.close_sent is not None
                assert slow_side.protocol.close_sent.code == 1013
                slow.transport.resume_reading()
                with pytest.raises(tether.ConnectionClosedError) as info:
                    while True:
                        await slow.recv()
                assert info.value.code in (1013, 1006)  # 1006 if aborted after close_timeout
                for ws in fast:
                    await ws.close()

        run(main(), timeout=600 * UNIT)


    def test_a_message_of_exactly_max_size_reaches_everyone(self) -> None:
        """With the defaults (max_size and the budget both 1 MiB), the largest legal message
        is delivered to every client: the budget judges the bytes already queued, and a frame
        is always accepted by a connection with nothing queued."""
        max_size = 2**20
        assert DEFAULT_MAX_BUFFERED <= max_size  # the budget is no larger than one message

        async def relay(ws: WebSocket) -> None:
            assert isinstance(ws, ServerConnection)
            async for message in ws:
                tether.broadcast(ws.server.connections, message)

        async def main() -> None:
            async with serving(relay, compression=None, max_size=max_size) as (server, url):
                clients = [await tether.connect(url, compression=None, max_size=max_size)
                           for _ in range(3)]
                for n in range(2):  # twice: the second finds the first's bytes gone
                    await clients[0].send(str(n) * max_size)
                    for ws in clients:
                        assert await ws.recv() == str(n) * max_size
                assert all(c.protocol.close_sent is None for c in server.connections)
                for ws in clients:
                    await ws.close()

        run(main())

    def test_a_burst_in_one_loop_turn_reaches_everyone_in_order(self) -> None:
        """Writes in one loop turn are coalesced (the first goes out at once, the rest at the
        end of the turn, or whenever they pass write_limit): a burst far larger than
        write_limit still reaches every reader, in order, and nobody is closed for it."""
        count, clients = 2000, 20
        delivered: list[int] = []

        async def relay(ws: WebSocket) -> None:
            assert isinstance(ws, ServerConnection)
            async for _ in ws:
                for n in range(count):  # one loop turn: broadcast() never waits
                    delivered.append(tether.broadcast(ws.server.connections, f"{n:05d}" + "x" * 95))

        async def main() -> None:
            async with serving(relay, compression=None, write_limit=16384) as (_, url):
                conns = [await tether.connect(url, compression=None) for _ in range(clients)]
                await conns[0].send("go")
                for ws in conns:
                    got = [str(await ws.recv())[:5] for _ in range(count)]
                    assert got == [f"{n:05d}" for n in range(count)]
                    assert ws.ready_state == tether.OPEN
                for ws in conns:
                    await ws.close()

        run(main(), timeout=600 * UNIT)
        assert delivered == [clients] * count

    def test_one_turn_end_for_every_connection(self) -> None:
        """A broadcast gathers the frame in each connection's writes of the loop turn, and one
        callback ends the turn for all of them (not one call_soon per connection)."""
        clients = 30
        scheduled: list[object] = []

        async def main() -> None:
            async with serving(compression=None) as (server, url):
                conns = [await tether.connect(url, compression=None) for _ in range(clients)]
                turn_end = server._turn_end
                assert turn_end is not None
                call_soon = turn_end._call_soon

                def counting(callback: Any, *args: Any) -> Any:
                    scheduled.append(callback)
                    return call_soon(callback, *args)

                turn_end._call_soon = counting  # type: ignore[method-assign]
                assert tether.broadcast(server.connections, "to all") == clients
                assert tether.broadcast(server.connections, "again") == clients
                for ws in conns:
                    assert [await ws.recv(), await ws.recv()] == ["to all", "again"]
                assert len(scheduled) == 1
                for ws in conns:
                    await ws.close()

        run(main())

    def test_a_failing_connection_does_not_keep_the_others_bytes(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def main() -> None:
            async with serving(compression=None) as (server, url):
                conns = [await tether.connect(url, compression=None) for _ in range(3)]
                first = next(iter(server.connections))

                def broken() -> None:
                    raise OSError("broken transport")

                first._end_turn = broken  # type: ignore[method-assign]
                assert tether.broadcast(server.connections, "hello") == 3
                broken_client = next(
                    ws for ws in conns if ws.transport is not None
                    and ws.transport.get_extra_info("sockname") == first.remote_address)
                for ws in conns:  # everyone but the broken one
                    if ws is not broken_client:
                        assert await asyncio.wait_for(ws.recv(), 50 * UNIT) == "hello"
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(broken_client.recv(), 2 * UNIT)
                del first._end_turn
                first._end_turn()  # its bytes were kept: out now
                for ws in conns:
                    await ws.close()

        run(main())
        assert "broken transport" in caplog.text


class TestRequestSeenByHooks:
    def test_cookies_and_remote_address(self) -> None:
        seen: list[tuple[dict[str, str], Any, str]] = []

        def authenticate(request: tether.Request) -> str | None:
            seen.append((request.cookies, request.remote_address, request.method))
            return "ok"

        async def main() -> None:
            async with serving(echo, authenticate=authenticate) as (_, url):
                async with tether.connect(url, headers={"Cookie": "a=1; b=two"}) as ws:
                    await ws.send("x")
                    assert await ws.recv() == "x"

        run(main())
        cookies, remote, method = seen[0]
        assert cookies == {"a": "1", "b": "two"}
        assert remote[0] == "127.0.0.1"
        assert method == "GET"


class TestHookFailures:
    @pytest.mark.parametrize("which", ["authenticate", "process_request"])
    def test_a_sync_hook_that_raises_gets_500(
        self, which: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(*args: Any) -> None:
            raise RuntimeError("hook bug")

        async def main() -> None:
            async with serving(echo, **{which: broken}) as (_, url):
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url)
                assert info.value.response.status == 500
                assert info.value.response.body == b"internal server error\n"

        run(main())
        assert "hook bug" in caplog.text  # in the log, not on the wire


class TestClientTLSRefusal:
    def test_wss_with_ssl_false_is_refused(self) -> None:
        async def main() -> None:
            with pytest.raises(tether.InvalidURI):
                await tether.connect("wss://127.0.0.1:1/", ssl=False)

        run(main())
