"""``async for ws in connect(uri)``: reconnecting with backoff, and what ends the iteration."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import pytest

import tether
from tether.asyncio import client as client_module
from tether.asyncio.client import backoff_delay, is_retryable
from tether.exceptions import ProxyError
from tether.exceptions import HandshakeError, InvalidMessage
from tether.protocol.http11 import Headers, Response

from .conftest import UNIT, echo, run, serving, silent_server

Call = tuple[int, float, Exception]

# Small backoff for the tests: waits of at most 2 units.
FAST: dict[str, Any] = dict(backoff_initial=UNIT, backoff_factor=2.0, backoff_max=2 * UNIT)


def recorder(calls: list[Call]) -> Any:
    def on_reconnect(attempt: int, delay: float, cause: Exception) -> None:
        calls.append((attempt, delay, cause))

    return on_reconnect


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drain(ws: tether.WebSocket) -> None:
    """Read until the connection closes, whichever way."""
    try:
        async for _ in ws:
            pass
    except tether.ConnectionClosed:
        pass


class TestBackoffDelay:
    def test_full_jitter_within_growing_capped_ceiling(self) -> None:
        for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (50, 10.0)]:
            delays = [backoff_delay(attempt, 1.0, 2.0, 10.0) for _ in range(200)]
            assert all(0.0 <= d <= ceiling for d in delays)
            # Jittered over the whole window, not clustered at its top.
            assert min(delays) < 0.25 * ceiling and max(delays) > 0.75 * ceiling

    def test_defaults(self) -> None:
        assert client_module.BACKOFF_INITIAL == 3.0
        assert client_module.BACKOFF_FACTOR == 1.618
        assert client_module.BACKOFF_MAX == 60.0
        assert backoff_delay(10_000) <= 60.0  # no float overflow far past the cap
        assert {1008, 4000, 4001, 4999} <= client_module.NO_RECONNECT_CODES
        assert not {1000, 1001, 1006, 1011, 1012, 1013, 1014, 3000} & (
            client_module.NO_RECONNECT_CODES
        )


def status(code: int, **headers: str) -> tether.InvalidStatus:
    return tether.InvalidStatus(Response(code, Headers(headers.items())))


class TestIsRetryable:
    @pytest.mark.parametrize(
        "exc",
        [
            OSError("unreachable"),
            ConnectionRefusedError(),
            ConnectionResetError(),
            TimeoutError(),
            socket.gaierror(),
            ssl.SSLEOFError(),
            InvalidMessage("connection closed while reading the HTTP response"),
            status(500),
            status(502),
            status(503),
            status(408),
            status(429),
            ProxyError("proxy closed the connection before answering CONNECT"),
            ProxyError("bad gateway", Response(502)),
        ],
        ids=repr,
    )
    def test_retried(self, exc: Exception) -> None:
        assert is_retryable(exc)

    @pytest.mark.parametrize(
        "exc",
        [
            status(400),
            status(401),
            status(403),
            status(404),
            status(301),
            status(200),
            ProxyError("auth", Response(407)),
            ProxyError("forbidden", Response(403)),
            HandshakeError("response Sec-WebSocket-Accept does not match the key"),
            tether.InvalidURI("x"),
            ssl.SSLCertVerificationError("certificate verify failed"),
            ValueError(),
        ],
        ids=repr,
    )
    def test_raised(self, exc: Exception) -> None:
        assert not is_retryable(exc)


class TestReconnect:
    def test_server_restart(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A server goes away and comes back on the same port: the client gets a second
        connection; attempts count up, waits grow and are capped."""
        monkeypatch.setattr(client_module.random, "uniform", lambda low, high: high)
        port = free_port()
        uri = f"ws://127.0.0.1:{port}"
        calls: list[Call] = []

        async def main() -> None:
            server = await tether.serve(echo, "127.0.0.1", port)
            restarted: list[tether.Server] = []

            async def restart() -> None:
                await server.close()
                await asyncio.sleep(20 * UNIT)  # 3 refused attempts at least, stalls or not
                restarted.append(await tether.serve(echo, "127.0.0.1", port))

            restart_task: asyncio.Task[None] | None = None
            connections = 0
            async for ws in tether.connect(uri, on_reconnect=recorder(calls), **FAST):
                connections += 1
                await ws.send("hello")
                assert await ws.recv() == "hello"
                if connections == 2:
                    break
                restart_task = asyncio.ensure_future(restart())
                await drain(ws)
                assert ws.close_code == 1001
            assert restart_task is not None
            await restart_task
            await restarted[0].close()

        run(main())
        attempts = [attempt for attempt, _, _ in calls]
        delays = [delay for _, delay, _ in calls]
        assert attempts == list(range(1, len(calls) + 1))
        assert len(calls) >= 3
        assert isinstance(calls[0][2], tether.ConnectionClosedOK)
        assert calls[0][2].code == 1001
        assert all(isinstance(cause, OSError) for _, _, cause in calls[1:])
        # uniform() patched to the top of the window: the ceilings themselves.
        assert delays[:3] == [UNIT, 2 * UNIT, 2 * UNIT]
        assert max(delays) == 2 * UNIT

    def test_jitter_seen_by_hook(self) -> None:
        """Real randomness: every wait lies inside its window, and they differ."""
        calls: list[Call] = []

        async def main() -> None:
            port = free_port()
            with pytest.raises(RuntimeError, match="enough"):

                def on_reconnect(attempt: int, delay: float, cause: Exception) -> None:
                    calls.append((attempt, delay, cause))
                    if attempt == 6:
                        raise RuntimeError("enough")  # a hook that raises ends the iteration

                async for _ in tether.connect(
                    f"ws://127.0.0.1:{port}", on_reconnect=on_reconnect,
                    backoff_initial=0.2 * UNIT, backoff_factor=2.0, backoff_max=UNIT,
                ):
                    pytest.fail("nobody listens")

        run(main())
        assert [attempt for attempt, _, _ in calls] == [1, 2, 3, 4, 5, 6]
        for attempt, delay, cause in calls:
            assert isinstance(cause, ConnectionRefusedError)
            assert 0.0 <= delay <= min(UNIT, 0.2 * UNIT * 2 ** (attempt - 1))
        assert len({delay for _, delay, _ in calls}) == len(calls)

    @pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 1013, 1014, 3000])
    def test_retry_on_close_code(self, code: int) -> None:
        calls: list[Call] = []
        opened = 0

        async def handler(ws: tether.WebSocket) -> None:
            nonlocal opened
            opened += 1
            if opened == 1:
                await ws.close(code, "try again")
            else:
                await echo(ws)

        async def main() -> None:
            connections = 0
            async with serving(handler) as (_, uri):
                async for ws in tether.connect(uri, on_reconnect=recorder(calls), **FAST):
                    connections += 1
                    if connections == 2:
                        await ws.send("still here")
                        assert await ws.recv() == "still here"
                        break
                    await drain(ws)
                    assert ws.close_code == code

        run(main())
        assert opened == 2
        [(attempt, delay, cause)] = calls
        assert attempt == 1 and 0.0 <= delay <= UNIT
        assert isinstance(cause, tether.ConnectionClosed) and cause.code == code
        assert cause.reason == "try again"

    @pytest.mark.parametrize(
        ("code", "options"),
        [(1008, {}), (4001, {}), (4999, {}), (1011, {"no_reconnect_codes": {1011}})],
    )
    def test_no_retry_on_close_code(self, code: int, options: dict[str, Any]) -> None:
        calls: list[Call] = []
        opened = 0

        async def handler(ws: tether.WebSocket) -> None:
            nonlocal opened
            opened += 1
            await ws.close(code, "go away")

        async def main() -> None:
            async with serving(handler) as (_, uri):
                with pytest.raises(tether.ConnectionClosedError) as info:
                    async for ws in tether.connect(
                        uri, on_reconnect=recorder(calls), **FAST, **options
                    ):
                        await drain(ws)
                assert info.value.code == code
                assert info.value.reason == "go away"

        run(main())
        assert opened == 1
        assert calls == []

    def test_no_reconnect_codes_configurable(self) -> None:
        """An empty set: even 4001 reconnects."""
        opened = 0

        async def handler(ws: tether.WebSocket) -> None:
            nonlocal opened
            opened += 1
            if opened == 1:
                await ws.close(4001, "unauthorized")
            else:
                await echo(ws)

        async def main() -> None:
            connections = 0
            async with serving(handler) as (_, uri):
                async for ws in tether.connect(uri, no_reconnect_codes=(), **FAST):
                    connections += 1
                    if connections == 2:
                        break
                    await drain(ws)
                    assert ws.close_code == 4001

        run(main())
        assert opened == 2

    def test_own_close_code_does_not_stop(self) -> None:
        """4000 sent by the client itself, echoed by the server: reconnect all the same."""
        opened = 0

        async def main() -> None:
            nonlocal opened
            async with serving() as (_, uri):
                async for ws in tether.connect(uri, **FAST):
                    opened += 1
                    if opened == 2:
                        break
                    await ws.close(4000, "bye")
                    assert ws.close_code == 4000

        run(main())
        assert opened == 2

    def test_backoff_resets_after_a_long_enough_connection(self) -> None:
        """Connections that close at once (1011) keep counting up; one that stayed open for
        backoff_reset_after starts the count over. Attempts: 1, 2, 3, then 1."""
        calls: list[Call] = []
        opened = 0

        async def handler(ws: tether.WebSocket) -> None:
            nonlocal opened
            opened += 1
            if opened == 4:
                await asyncio.sleep(12 * UNIT)
            await ws.close(1011 if opened != 4 else 1012)

        async def main() -> None:
            connections = 0
            async with serving(handler) as (_, uri):
                async for ws in tether.connect(
                    uri, on_reconnect=recorder(calls), backoff_reset_after=10 * UNIT,
                    backoff_initial=0.1 * UNIT, backoff_factor=2.0, backoff_max=UNIT,
                ):
                    connections += 1
                    if connections == 5:
                        break
                    await drain(ws)

        run(main())
        assert [attempt for attempt, _, _ in calls] == [1, 2, 3, 1]
        codes = [getattr(cause, "code", None) for _, _, cause in calls]
        assert codes == [1011, 1011, 1011, 1012]

    def test_async_hook_and_5xx_retried(self) -> None:
        """503 then 101: the hook (async, awaited before the wait) sees the InvalidStatus."""
        calls: list[Call] = []
        requests = 0

        def process_request(connection: Any, request: tether.Request) -> Any:
            nonlocal requests
            requests += 1
            return connection.protocol.reject(503, "busy") if requests == 1 else None

        async def on_reconnect(attempt: int, delay: float, cause: Exception) -> None:
            await asyncio.sleep(0)
            calls.append((attempt, delay, cause))

        async def main() -> None:
            async with serving(process_request=process_request) as (_, uri):
                async for ws in tether.connect(uri, on_reconnect=on_reconnect, **FAST):
                    await ws.send("up")
                    assert await ws.recv() == "up"
                    break

        run(main())
        assert requests == 2
        [(attempt, _, cause)] = calls
        assert attempt == 1
        assert isinstance(cause, tether.InvalidStatus) and cause.response.status == 503

    def test_retry_after_raises_the_wait_up_to_the_cap(self) -> None:
        calls: list[Call] = []
        requests = 0

        def process_request(connection: Any, request: tether.Request) -> Any:
            nonlocal requests
            requests += 1
            if requests == 1:
                headers = Headers([("Retry-After", "1")])
                return connection.protocol.reject(429, "slow down", headers)
            return None

        async def main() -> None:
            async with serving(process_request=process_request) as (_, uri):
                async for _ in tether.connect(
                    uri, on_reconnect=recorder(calls), backoff_initial=0.01 * UNIT,
                    backoff_max=2 * UNIT,
                ):
                    break

        run(main())
        [(_, delay, cause)] = calls
        assert isinstance(cause, tether.InvalidStatus) and cause.response.status == 429
        assert delay == min(1.0, 2 * UNIT)  # Retry-After: 1, cut to backoff_max

    @pytest.mark.parametrize("code", [401, 403, 404])
    def test_no_retry_on_4xx(self, code: int) -> None:
        calls: list[Call] = []
        requests = 0

        def process_request(connection: Any, request: tether.Request) -> Any:
            nonlocal requests
            requests += 1
            return connection.protocol.reject(code, "no")

        async def main() -> None:
            async with serving(process_request=process_request) as (_, uri):
                with pytest.raises(tether.InvalidStatus) as info:
                    async for _ in tether.connect(uri, on_reconnect=recorder(calls), **FAST):
                        pytest.fail("the server said no")
                assert info.value.response.status == code

        run(main())
        assert requests == 1
        assert calls == []

    def test_no_retry_on_invalid_uri(self) -> None:
        async def main() -> None:
            with pytest.raises(tether.InvalidURI):
                async for _ in tether.connect("http://127.0.0.1/", **FAST):
                    pytest.fail("not a WebSocket URI")
            with pytest.raises(tether.InvalidURI):
                async for _ in tether.connect("ws://127.0.0.1/", proxy="socks5://p:1", **FAST):
                    pytest.fail("not an HTTP proxy")

        run(main())

    def test_timeout_retried(self) -> None:
        calls: list[Call] = []

        async def main() -> None:
            server, port = await silent_server()
            with pytest.raises(RuntimeError, match="stop"):

                def on_reconnect(attempt: int, delay: float, cause: Exception) -> None:
                    calls.append((attempt, delay, cause))
                    if attempt == 2:
                        raise RuntimeError("stop")

                async for _ in tether.connect(
                    f"ws://127.0.0.1:{port}", open_timeout=2 * UNIT, on_reconnect=on_reconnect,
                    **FAST,
                ):
                    pytest.fail("the server never answers")
            server.close()
            await server.wait_closed()

        run(main())
        assert [type(cause) for _, _, cause in calls] == [TimeoutError, TimeoutError]


class TestReconnectOption:
    """``connect(..., reconnect=True)``, as the issue spells it, and its opposite."""

    @staticmethod
    async def restarting(ws: tether.WebSocket) -> None:
        await ws.send("hello")
        await ws.close(1012, "service restart")

    def test_reconnect_true_iterates_reconnecting(self) -> None:
        calls: list[Call] = []

        async def main() -> None:
            async with serving(self.restarting) as (_, uri):
                opened = 0
                async for ws in tether.connect(uri, reconnect=True,
                                               on_reconnect=recorder(calls), **FAST):
                    assert await ws.recv() == "hello"
                    await drain(ws)
                    opened += 1
                    if opened == 3:
                        break
                assert ws.close_code == 1012

        run(main())
        assert [attempt for attempt, _, _ in calls] == [1, 2]

    def test_reconnect_false_iterates_once(self) -> None:
        calls: list[Call] = []

        async def main() -> None:
            async with serving(self.restarting) as (_, uri):
                opened = 0
                async for ws in tether.connect(uri, reconnect=False,
                                               on_reconnect=recorder(calls), **FAST):
                    assert await ws.recv() == "hello"
                    await drain(ws)
                    opened += 1
                assert opened == 1
            with pytest.raises(OSError):  # a failure is raised, not retried
                async for _ in tether.connect(f"ws://127.0.0.1:{free_port()}",
                                              reconnect=False, on_reconnect=recorder(calls)):
                    pytest.fail("nothing listens there")

        run(main())
        assert calls == []

    def test_awaiting_a_reconnecting_connect_is_an_error(self) -> None:
        async def main() -> None:
            async with serving() as (_, uri):
                with pytest.raises(TypeError, match="async for ws in"):
                    await tether.connect(uri, reconnect=True)
                with pytest.raises(TypeError, match="async for ws in"):
                    async with tether.connect(uri, reconnect=True):
                        pytest.fail("not one connection")
                for options in [{}, {"reconnect": False}]:  # one connection, one attempt
                    async with tether.connect(uri, **options) as ws:
                        await ws.send("once")
                        assert await ws.recv() == "once"

        run(main())


class TestSecretsStayOutOfLogs:
    """A token in the URI (``?token=``, ``user:password@``) never reaches an error message or
    a log line, on any path the reconnecting client takes."""

    SECRET_URI = "ws://alice:pa55word@127.0.0.1:{port}/feed?token=SUPERSECRET"

    def test_reconnect_log_and_causes(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="tether")
        calls: list[Call] = []
        closed_port = free_port()

        async def main() -> None:
            server, port = await silent_server()
            for target in [port, closed_port]:  # a timeout, then a refusal
                with pytest.raises(RuntimeError, match="stop"):

                    def on_reconnect(attempt: int, delay: float, cause: Exception) -> None:
                        calls.append((attempt, delay, cause))
                        if attempt == 2:
                            raise RuntimeError("stop")

                    async for _ in tether.connect(self.SECRET_URI.format(port=target),
                                                  open_timeout=2 * UNIT,
                                                  on_reconnect=on_reconnect, **FAST):
                        pytest.fail("the server never answers")
            server.close()
            await server.wait_closed()

            async def restarting(ws: tether.WebSocket) -> None:
                await ws.close(1012, "service restart")

            async with serving(restarting) as (tether_server, _):
                uri = self.SECRET_URI.format(port=tether_server.port_number)
                opened = 0
                async for ws in tether.connect(uri, **FAST):  # open, closed, reconnect
                    await drain(ws)
                    opened += 1
                    if opened == 2:
                        break

        run(main())
        assert [type(cause) for _, _, cause in calls[:2]] == [TimeoutError, TimeoutError]
        assert all(isinstance(cause, OSError) for _, _, cause in calls[2:])
        assert caplog.text.count("event=reconnect") == 5
        assert "code=1012" in caplog.text  # the client's own close lines
        assert "/feed" in caplog.text  # the log still says where
        for secret in ["SUPERSECRET", "pa55word", "alice"]:
            assert secret not in caplog.text
            assert all(secret not in str(cause) for _, _, cause in calls)

    def test_invalid_uri_messages(self) -> None:
        async def main() -> None:
            for uri, proxy in [
                ("ws://u:pa55word@127.0.0.1:99999/?token=SUPERSECRET", None),
                ("wss://u:pa55word@127.0.0.1/?token=SUPERSECRET#frag", None),
                ("ws://u:pa55word@127.0.0.1/?token=SUPERSECRET", "http://p:pa55word@proxy/x?y"),
                ("ws://u:pa55word@127.0.0.1/?token=SUPERSECRET", "socks5://p:pa55word@proxy"),
            ]:
                with pytest.raises(tether.InvalidURI) as info:
                    async for _ in tether.connect(uri, proxy=proxy, ssl=False, **FAST):
                        pytest.fail("not a valid URI")
                assert "pa55word" not in str(info.value)
                assert "SUPERSECRET" not in str(info.value)
                assert "127.0.0.1" in str(info.value) or "proxy" in str(info.value)

        run(main())


class TestLeavingTheLoop:
    def test_break_closes_the_connection(self) -> None:
        closed_with: list[int | None] = []

        async def handler(ws: tether.WebSocket) -> None:
            await drain(ws)
            closed_with.append(ws.close_code)

        async def main() -> None:
            async with serving(handler) as (_, uri):
                async for ws in tether.connect(uri, **FAST):
                    assert ws.ready_state == tether.OPEN
                    break
                await asyncio.wait_for(ws.wait_closed(), 10 * UNIT)
                assert ws.ready_state == tether.CLOSED
                assert ws.close_code == 1000
                for _ in range(20):
                    if closed_with:
                        break
                    await asyncio.sleep(UNIT / 2)

        run(main())
        assert closed_with == [1000]

    def test_exception_in_body_closes_the_connection(self) -> None:
        async def main() -> None:
            async with serving() as (_, uri):
                with pytest.raises(ZeroDivisionError):
                    async for ws in tether.connect(uri, **FAST):
                        1 / 0
                await asyncio.wait_for(ws.wait_closed(), 10 * UNIT)
                assert ws.close_code == 1000

        run(main())

    def test_body_done_with_an_open_connection(self) -> None:
        """Asking for the next connection closes the current one (1000) first."""
        opened = 0

        async def main() -> None:
            nonlocal opened
            async with serving() as (server, uri):
                previous: tether.WebSocket | None = None
                async for ws in tether.connect(uri, **FAST):
                    opened += 1
                    if previous is not None:
                        assert previous.ready_state == tether.CLOSED
                        assert previous.close_code == 1000
                        assert ws is not previous
                        break
                    previous = ws

        run(main())
        assert opened == 2

    def test_await_and_async_with_unchanged(self) -> None:
        async def main() -> None:
            async with serving() as (_, uri):
                ws = await tether.connect(uri)
                await ws.send("a")
                assert await ws.recv() == "a"
                await ws.close()
                async with tether.connect(uri) as ws:
                    await ws.send("b")
                    assert await ws.recv() == "b"
                assert ws.close_code == 1000

        run(main())
