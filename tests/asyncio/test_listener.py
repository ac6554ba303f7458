"""The callback API: a Listener's methods run on the loop, with no task per connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tether
from tether import Listener, WebSocket

from .conftest import UNIT, echo, run, serving


class Recorder(Listener):
    """Echoes every message and records what happened, connection by connection."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.closed = asyncio.Event()

    def on_open(self, ws: WebSocket) -> None:
        self.log.append(("open", ws.request.path if ws.request else None))

    def on_message(self, ws: WebSocket, message: str | bytes) -> None:
        self.log.append(("message", message))
        if message == "close please":
            ws.close_nowait(4000, "as asked")
        elif message == "boom":
            raise RuntimeError("a bug in the listener")
        else:
            ws.send_nowait(message)

    def on_close(self, ws: WebSocket) -> None:
        self.log.append(("close", ws.close_code))
        self.closed.set()


class TestListener:
    def test_echo_and_the_callbacks_in_order(self) -> None:
        listener = Recorder()

        async def main() -> None:
            async with serving(listener) as (server, url):
                async with tether.connect(url + "/room") as ws:
                    await ws.send("hello")
                    assert await ws.recv() == "hello"
                    await ws.send(b"\x00\x01")
                    assert await ws.recv() == b"\x00\x01"
                    await ws.send(["frag", "mented"])
                    assert await ws.recv() == "fragmented"
                    conn = next(iter(server.connections))
                    assert conn.handler_task is None  # no task per connection
                await asyncio.wait_for(listener.closed.wait(), 50 * UNIT)

        run(main())
        assert listener.log == [("open", "/room"), ("message", "hello"),
                                ("message", b"\x00\x01"), ("message", "fragmented"),
                                ("close", 1000)]

    def test_close_nowait_from_a_callback(self) -> None:
        async def main() -> tuple[int | None, str | None]:
            async with serving(Recorder()) as (_, url), tether.connect(url) as ws:
                await ws.send("close please")
                with pytest.raises(tether.ConnectionClosedError):
                    await ws.recv()
                return ws.close_code, ws.close_reason

        assert run(main()) == (4000, "as asked")

    def test_an_exception_closes_that_connection_with_1011_only(self) -> None:
        listener = Recorder()

        async def main() -> int | None:
            async with serving(listener) as (_, url):
                async with tether.connect(url) as other, tether.connect(url) as ws:
                    await ws.send("boom")
                    with pytest.raises(tether.ConnectionClosedError):
                        await ws.recv()
                    await other.send("still here")
                    assert await other.recv() == "still here"
                    return ws.close_code

        assert run(main()) == 1011

    def test_send_nowait_on_a_closed_connection_raises(self) -> None:
        done: asyncio.Future[BaseException] | None = None

        class Late(Listener):
            def on_close(self, ws: WebSocket) -> None:
                try:
                    ws.send_nowait("too late")
                except tether.ConnectionClosed as exc:
                    assert done is not None
                    done.set_result(exc)

        async def main() -> None:
            nonlocal done
            done = asyncio.get_running_loop().create_future()
            async with serving(Late()) as (_, url):
                async with tether.connect(url):
                    pass
                assert isinstance(await asyncio.wait_for(done, 50 * UNIT),
                                  tether.ConnectionClosed)

        run(main())

    def test_on_drain_after_the_write_limit(self) -> None:
        sizes: list[int] = []
        drained = asyncio.Event()

        class Flood(Listener):
            def on_open(self, ws: WebSocket) -> None:
                while ws.buffered_amount <= ws.write_limit:  # the kernel buffers fill first
                    ws.send_nowait(b"x" * 65536)
                sizes.append(ws.buffered_amount)

            def on_drain(self, ws: WebSocket) -> None:
                sizes.append(ws.buffered_amount)
                drained.set()
                ws.close_nowait()

        async def main() -> int:
            async with serving(Flood(), write_limit=100_000, compression=None) as (_, url):
                async with tether.connect(url, max_size=None) as ws:
                    total = 0
                    async for message in ws:
                        total += len(message)
                    await asyncio.wait_for(drained.wait(), 50 * UNIT)
                    return total

        total = run(main())
        assert sizes[0] > 100_000 and sizes[1] <= 25_000  # the low-water mark: a quarter
        assert total % 65536 == 0 and total > 100_000

    def test_a_router_mixes_listeners_and_coroutines(self) -> None:
        router = tether.Router()
        router.add_websocket("/fast", Recorder())
        router.add_websocket("/coro", echo)

        async def main() -> list[Any]:
            async with serving(router) as (_, url):
                got = []
                for path in ("/fast", "/coro"):
                    async with tether.connect(url + path) as ws:
                        await ws.send(path)
                        got.append(await ws.recv())
                return got

        assert run(main()) == ["/fast", "/coro"]


class TestClientListener:
    def test_a_client_gets_messages_through_callbacks(self) -> None:
        got: list[Any] = []
        done = asyncio.Event()

        class Client(Listener):
            def on_open(self, ws: WebSocket) -> None:
                got.append("open")
                ws.send_nowait("one")
                ws.send_nowait(b"two")

            def on_message(self, ws: WebSocket, message: str | bytes) -> None:
                got.append(message)
                if len(got) == 3:
                    ws.close_nowait(1000, "thanks")

            def on_close(self, ws: WebSocket) -> None:
                got.append(("close", ws.close_code))
                done.set()

        async def main() -> None:
            async with serving() as (_, url):  # the coroutine echo server
                ws = await tether.connect(url, listener=Client())
                await asyncio.wait_for(done.wait(), 50 * UNIT)
                assert ws.ready_state == tether.CLOSED

        run(main())
        assert got == ["open", "one", b"two", ("close", 1000)]
