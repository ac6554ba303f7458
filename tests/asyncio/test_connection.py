"""The asyncio connection, on real loopback sockets: messages, the browser's attributes,
ping, close codes, flow control both ways."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import random
from typing import Any

import pytest

import tether
from tether.asyncio.connection import WebSocket

from .conftest import UNIT, run, serving


class TestMessages:
    def test_text_is_str_and_binary_is_bytes(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                await ws.send("héllo")
                assert await ws.recv() == "héllo"
                await ws.send(b"\x00\xff")
                assert await ws.recv() == b"\x00\xff"
                await ws.send(bytearray(b"ba"))
                assert await ws.recv() == b"ba"
                await ws.send(memoryview(b"xmvx")[1:3])
                assert await ws.recv() == b"mv"

        run(main())

    @pytest.mark.parametrize("compression", ["deflate", None])
    @pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 500_000])
    def test_sizes_round_trip(self, compression: str | None, size: int) -> None:
        async def main() -> None:
            async with serving(compression=compression) as (_, url), tether.connect(
                url, compression=compression
            ) as ws:
                payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
                await ws.send(payload)
                assert await ws.recv() == payload
                await ws.send("x" * size)
                assert await ws.recv() == "x" * size

        run(main())

    def test_async_for_ends_on_normal_close(self) -> None:
        async def handler(ws: WebSocket) -> None:
            for i in range(3):
                await ws.send(str(i))
            await ws.close(1000, "done")

        async def main() -> None:
            async with serving(handler) as (_, url), tether.connect(url) as ws:
                received = [message async for message in ws]
                assert received == ["0", "1", "2"]
                assert ws.close_code == 1000
                assert ws.close_reason == "done"
                assert ws.ready_state == tether.CLOSED

        run(main())

    def test_fragmented_send(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                await ws.send(["fra", "gmen", "ted"])
                assert await ws.recv() == "fragmented"
                await ws.send([b"a", b"b"])
                assert await ws.recv() == b"ab"
                with pytest.raises(TypeError):
                    await ws.send(["a", b"b"])  # type: ignore[list-item]

        run(main())

    def test_unsupported_type(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                with pytest.raises(TypeError):
                    await ws.send(42)  # type: ignore[arg-type]

        run(main())

    def test_concurrent_recv_is_refused(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                first = asyncio.ensure_future(ws.recv())
                await asyncio.sleep(UNIT)
                with pytest.raises(RuntimeError):
                    await ws.recv()
                await ws.send("x")
                assert await first == "x"

        run(main())

    def test_messages_sent_before_close_are_all_answered(self) -> None:
        """The echo server answers every message that arrived before the client's close frame,
        even when they arrive in the same packet (the close reply waits for the handler)."""

        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                for i in range(20):
                    ws.protocol.send_text(str(i).encode())
                ws.protocol.send_close(1000)
                ws._write(ws.protocol.data_to_send())
                received = [message async for message in ws]
                assert received == [str(i) for i in range(20)]
                assert ws.close_code == 1000

        run(main())


class TestRecvIsACoroutine:
    """recv() and ``async for`` as asyncio sees them: with the C accelerator they return a
    compiled coroutine awaiting a compiled Future (accel.fuse, accel.Waiter), and run the
    handler's step inside the read; everything asyncio does with a coroutine must still work."""

    def test_wait_for_timeout_then_recv_again(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(ws.recv(), UNIT)
                assert ws._waiter is None  # the cancelled wait let go of its Future
                await ws.send("after")
                assert await ws.recv() == "after"

        run(main())

    def test_a_task_of_recv_cancelled_then_recv_again(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                coro = ws.recv()
                assert asyncio.iscoroutine(coro)
                task = asyncio.create_task(coro)
                await asyncio.sleep(UNIT)
                assert ws._waiter is not None and not task.done()
                task.cancel("enough")
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert ws._waiter is None
                await ws.send("next")
                assert await ws.recv() == "next"

        run(main())

    def test_an_unawaited_recv_changes_nothing(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                ws.recv().close()
                ws.__anext__().close()
                assert ws._waiter is None
                await ws.send("x")
                assert await ws.recv() == "x"

        run(main())

    def test_unawaited_and_abandoned_recv(self) -> None:
        """A recv() never awaited warns, as a coroutine does; one dropped while it waits lets
        go of the connection's Future (its ``finally``), so the next recv() works."""

        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                with pytest.warns(RuntimeWarning, match="never awaited"):
                    ws.recv()
                    gc.collect()
                coro = ws.recv()
                coro.send(None)  # waiting, as a Task would leave it
                assert ws._waiter is not None
                del coro
                gc.collect()
                assert ws._waiter is None
                await ws.send("again")
                assert await ws.recv() == "again"

        run(main())

    def test_awaited_twice(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                coro = ws.recv()
                first = asyncio.ensure_future(coro)
                await asyncio.sleep(UNIT)

                async def again() -> object:
                    return await coro

                with pytest.raises(RuntimeError, match="awaited already"):
                    await again()
                await ws.send("hello")
                assert await first == "hello"  # the first awaiter is not disturbed

        run(main())

    def test_throw_into_a_waiting_recv(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                coro = ws.recv()
                future = coro.send(None)  # what it waits on, as a Task would get it
                assert asyncio.isfuture(future)
                assert ws._waiter is future
                with pytest.raises(KeyError):
                    coro.throw(KeyError("mine"))
                assert ws._waiter is None
                with pytest.raises(RuntimeError):
                    coro.send(None)  # finished

        run(main())

    def test_gather_and_shield(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                await ws.send("a")
                first, other = await asyncio.gather(ws.recv(), asyncio.sleep(0, "x"))
                assert (first, other) == ("a", "x")
                await ws.send("b")
                assert await asyncio.shield(ws.recv()) == "b"

        run(main())

    def test_handler_steps_keep_their_task_and_context(self) -> None:
        """Each step of a handler runs in its own Task and context, whether the loop or the
        read resumes it; one read of many messages reaches the handler in order."""
        variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable")
        seen: list[tuple[str, bool, str]] = []

        async def handler(ws: WebSocket) -> None:
            variable.set("the handler's")
            task = asyncio.current_task()
            async for message in ws:
                seen.append((message, asyncio.current_task() is task, variable.get()))
                await ws.send(message)

        async def main() -> None:
            variable.set("the test's")
            async with serving(handler) as (_, url), tether.connect(url) as ws:
                for i in range(30):
                    ws.protocol.send_text(str(i).encode())
                ws._write(ws.protocol.data_to_send())  # one write: mostly one read there
                assert [await ws.recv() for _ in range(30)] == [str(i) for i in range(30)]
                assert variable.get() == "the test's"
            assert seen == [(str(i), True, "the handler's") for i in range(30)]

        run(main())

    def test_end_of_stream_in_async_for_and_recv(self) -> None:
        async def handler(ws: WebSocket) -> None:
            async for message in ws:
                await ws.send(message)
            with pytest.raises(tether.ConnectionClosedOK):
                await ws.recv()
            ended.set_result(ws.close_code)

        async def main() -> None:
            async with serving(handler) as (_, url):
                async with tether.connect(url) as ws:
                    await ws.send("x")
                    assert await ws.recv() == "x"
                assert await asyncio.wait_for(ended, 50 * UNIT) == 1000

        ended: asyncio.Future[int]

        async def start() -> None:
            nonlocal ended
            ended = asyncio.get_running_loop().create_future()
            await main()

        run(start())


class TestLargeMessagesStream:
    def test_one_reader_for_a_stream_of_large_messages(self) -> None:
        """Large messages one after another are read by the same stand-in reader: no switch
        of protocol (a stop and restart of reading) between them."""

        async def main() -> None:
            async with serving(max_size=4 << 20, compression=None) as (server, url), (
                tether.connect(url, max_size=4 << 20, compression=None)
            ) as ws:
                [peer] = server.connections
                readers = []
                for i in range(4):
                    message = bytes([i]) * 500_000
                    await ws.send(message)
                    assert await ws.recv() == message
                    assert peer.transport is not None
                    readers.append(peer.transport.get_protocol())
                assert readers[0] is not peer
                assert all(reader is readers[0] for reader in readers)
                # Between frames, a read takes one frame header and no more, so that the
                # payload after it is read in place rather than copied out of a larger read:
                # 2 + 8 length bytes, + 4 mask bytes in frames from a client.
                assert ws.transport is not None
                client_reader = ws.transport.get_protocol()
                assert client_reader is not ws  # the echoes were large frames too
                assert len(readers[0].get_buffer(-1)) == 14
                assert len(client_reader.get_buffer(-1)) == 10

        run(main())


class TestLargeMessages:
    """Frames past 64 KiB are read straight into their payload (a BufferedProtocol stands in
    for the WebSocket while large frames arrive): on both sides, on every loop the suite
    runs."""

    @pytest.mark.parametrize("compression", [None, "deflate"])
    def test_large_frames_mixed_with_small_ones(self, compression: str | None) -> None:
        rng = random.Random(6455)

        async def main() -> None:
            async with serving(max_size=4 << 20, compression=compression) as (server, url), (
                tether.connect(url, max_size=4 << 20, compression=compression)
            ) as ws:
                messages: list[str | bytes] = []
                for i in range(6):  # random bytes: large frames even when compressed
                    messages.append(rng.randbytes(70_000 + 300_000 * i))
                    messages.append(f"small {i}")
                    messages.append("ü" * (40_000 * (i + 1)))
                for message in messages:  # all in flight at once: frames share reads
                    ws.send_nowait(message)
                for message in messages:
                    assert await ws.recv() == message
                # The last message was a large frame: the reader may still stand in. Back to
                # the WebSocket itself at the first read that starts no large frame, on both
                # ends.
                await ws.send("small again")
                assert await ws.recv() == "small again"
                assert ws.transport is not None and ws.transport.get_protocol() is ws
                [peer] = server.connections
                assert peer.transport is not None and peer.transport.get_protocol() is peer

        run(main())

    def test_invalid_utf8_in_a_large_frame_fails_with_1007(self) -> None:
        async def main() -> None:
            async with serving(compression=None) as (_, url), tether.connect(
                url, compression=None
            ) as ws:
                payload = b"a" * 100_000 + b"\xff" + b"a" * 100_000
                ws.protocol._write_frame(True, False, 0x1, payload)
                ws._write(ws.protocol.data_to_send())
                with pytest.raises(tether.ConnectionClosedError):
                    await ws.recv()
                assert ws.close_code == 1007

        run(main())

    def test_connection_lost_in_the_middle_of_a_large_frame(self) -> None:
        closed: list[int | None] = []

        async def handler(ws: WebSocket) -> None:
            try:
                await ws.recv()
            except tether.ConnectionClosed:
                closed.append(ws.close_code)

        async def main() -> None:
            async with serving(handler, compression=None) as (_, url), tether.connect(
                url, compression=None
            ) as ws:
                ws.protocol.send_binary(bytes(1_000_000))
                data = b"".join(ws.protocol.data_to_send())
                assert ws.transport is not None
                ws.transport.write(data[:300_000])
                await asyncio.sleep(2 * UNIT)
                ws.transport.abort()
                for _ in range(50):
                    if closed:
                        break
                    await asyncio.sleep(UNIT / 5)
                assert closed == [1006]

        run(main())


class TestBrowserAttributes:
    def test_open_state_and_attributes(self) -> None:
        seen: dict[str, Any] = {}

        async def handler(ws: WebSocket) -> None:
            assert ws.request is not None
            seen.update(
                path=ws.request.path,
                query=ws.request.query_params,
                header=ws.request.headers.get("X-Test"),
                remote=ws.remote_address,
                local=ws.local_address,
                state=ws.ready_state,
                subprotocol=ws.subprotocol,
                extensions=ws.extensions,
            )
            await ws.send("ready")
            await ws.wait_closed()

        async def main() -> None:
            async with serving(handler, subprotocols=["chat.v2", "chat.v1"]) as (_, url):
                async with tether.connect(
                    url + "/room?token=abc&x=1",
                    subprotocols=["chat.v1", "chat.v2"],
                    headers={"X-Test": "yes"},
                ) as ws:
                    assert ws.ready_state == tether.OPEN == 1
                    assert await ws.recv() == "ready"
                    assert ws.subprotocol == "chat.v2"  # the server's preference
                    assert ws.extensions.startswith("permessage-deflate")
                    assert ws.buffered_amount == 0
                    assert ws.close_code is None
                    assert ws.local_address == seen["remote"]  # each end's view of the other
                    assert ws.remote_address == seen["local"]
                await ws.wait_closed()
                assert ws.ready_state == tether.CLOSED == 3
            assert seen["path"] == "/room"
            assert seen["query"] == {"token": ["abc"], "x": ["1"]}
            assert seen["header"] == "yes"
            assert seen["remote"][0] == "127.0.0.1"
            assert seen["state"] == tether.OPEN
            assert seen["subprotocol"] == "chat.v2"
            assert "server_max_window_bits=12" in seen["extensions"]

        run(main())

    def test_no_compression_means_no_extensions(self) -> None:
        async def main() -> None:
            async with serving(compression=None) as (_, url), tether.connect(url) as ws:
                assert ws.extensions == ""

        run(main())

    def test_closing_state(self) -> None:
        async def handler(ws: WebSocket) -> None:
            await asyncio.sleep(5 * UNIT)  # not reading: the close reply waits

        async def main() -> None:
            async with serving(handler) as (_, url), tether.connect(url) as ws:
                closing = asyncio.ensure_future(ws.close())
                await asyncio.sleep(0)
                assert ws.ready_state == tether.CLOSING == 2
                await closing
                assert ws.ready_state == tether.CLOSED

        run(main())


class TestPing:
    def test_ping_measures_latency(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                latency = await ws.ping()
                assert 0 < latency < 50 * UNIT
                assert ws.latency == latency
                assert 0 < await ws.ping(b"payload") < 50 * UNIT
                await ws.pong(b"unsolicited")  # must not disturb anything
                await ws.send("still")
                assert await ws.recv() == "still"

        run(main())

    def test_ping_fails_when_closed(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                await ws.close()
                with pytest.raises(tether.ConnectionClosedOK):
                    await ws.ping()

        run(main())


class TestClose:
    def test_client_close_code_and_reason_reach_server(self) -> None:
        async def main() -> None:
            seen: asyncio.Future[tuple[int, str, int | None, str | None]] = (
                asyncio.get_running_loop().create_future()
            )

            async def handler(ws: WebSocket) -> None:
                try:
                    await ws.recv()
                except tether.ConnectionClosedError as exc:
                    seen.set_result((exc.code, exc.reason, ws.close_code, ws.close_reason))

            async with serving(handler) as (_, url):
                async with tether.connect(url) as ws:
                    await ws.close(4000, "bye now")
                    assert ws.close_code == 4000  # the server echoes the code
                assert await seen == (4000, "bye now", 4000, "bye now")

        run(main())

    def test_handler_return_closes_1000(self) -> None:
        async def handler(ws: WebSocket) -> None:
            return

        async def main() -> None:
            async with serving(handler) as (_, url), tether.connect(url) as ws:
                with pytest.raises(tether.ConnectionClosedOK):
                    await ws.recv()
                assert ws.close_code == 1000

        run(main())

    def test_handler_exception_closes_1011(self, caplog: pytest.LogCaptureFixture) -> None:
        async def handler(ws: WebSocket) -> None:
            raise RuntimeError("boom")

        async def main() -> None:
            async with serving(handler) as (_, url), tether.connect(url) as ws:
                with pytest.raises(tether.ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.code == 1011
                assert ws.close_reason == "internal error"  # no details on the wire

        run(main())
        assert "boom" in caplog.text  # but the traceback is in the log

    def test_handler_that_cannot_be_called_closes_1011(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def handler() -> None:  # forgot the ws argument
            pass

        async def main() -> None:
            async with serving(handler) as (_, url), tether.connect(url) as ws:
                with pytest.raises(tether.ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.code == 1011

        run(main())
        assert "connection handler failed" in caplog.text

    def test_handler_may_return_any_awaitable(self) -> None:
        # Not only a coroutine: a plain function returning a Future (or any awaitable) is a
        # handler too, and runs until that awaitable is done.
        def handler(ws: WebSocket) -> asyncio.Future[None]:
            async def greet() -> None:
                await ws.send("hello from a future")
                async for message in ws:
                    await ws.send(message)

            return asyncio.ensure_future(greet())

        async def main() -> None:
            async with serving(handler) as (_, url), tether.connect(url) as ws:
                assert await ws.recv() == "hello from a future"
                await ws.send("echo")
                assert await ws.recv() == "echo"

        run(main())

    def test_send_after_close_raises(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                await ws.close()
                with pytest.raises(tether.ConnectionClosedOK):
                    await ws.send("late")
                with pytest.raises(tether.ConnectionClosedOK):
                    await ws.recv()

        run(main())

    def test_invalid_close_code_is_refused_locally(self) -> None:
        async def main() -> None:
            async with serving() as (_, url), tether.connect(url) as ws:
                with pytest.raises(ValueError):
                    await ws.close(1006)
                with pytest.raises(ValueError):
                    await ws.close(1000, "x" * 124)
                await ws.send("still open")
                assert await ws.recv() == "still open"

        run(main())

    def test_message_too_big_closes_1009(self) -> None:
        async def main() -> None:
            async with serving(max_size=1000) as (_, url), tether.connect(url) as ws:
                await ws.send(b"x" * 1000)
                assert await ws.recv() == b"x" * 1000
                await ws.send(b"x" * 1001)
                with pytest.raises(tether.ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.code == 1009
                assert "exceeds limit of 1000 bytes" in info.value.reason

        run(main())

    def test_abrupt_disconnect_is_1006(self) -> None:
        async def handler(ws: WebSocket) -> None:
            assert ws.transport is not None
            ws.transport.abort()
            await ws.wait_closed()

        async def main() -> None:
            async with serving(handler) as (_, url), tether.connect(url) as ws:
                with pytest.raises(tether.ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.code == 1006
                assert ws.close_code == 1006

        run(main())

    def test_peer_that_never_answers_close_is_aborted(self) -> None:
        async def main() -> None:
            async with serving(close_timeout=3 * UNIT) as (server, url):
                async with tether.connect(url, close_timeout=3 * UNIT) as ws:
                    # Make the server deaf: it never sees our close frame.
                    server_ws = next(iter(server.connections))
                    assert server_ws.transport is not None
                    server_ws.transport.pause_reading()
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    await ws.close()
                    assert loop.time() - started >= 3 * UNIT * 0.9
                    assert ws.ready_state == tether.CLOSED
                    assert ws.close_code == 1006

        run(main())


async def raw_client(port: int, texts: list[str]) -> tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]:
    """A client of raw bytes: it completes the handshake, then sends ``texts`` as text
    messages in one write, and does nothing more unless the test does."""
    from tether.protocol.connection import Connection, Side

    from .test_server import upgrade

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade())
    await reader.readuntil(b"\r\n\r\n")
    frames = Connection(Side.CLIENT)
    for text in texts:
        frames.send_text(text.encode())
    writer.write(b"".join(frames.data_to_send()))
    return reader, writer


class TestFlowControl:
    def test_reading_pauses_when_the_application_is_behind(self) -> None:
        gate = asyncio.Event()
        connections: list[WebSocket] = []

        async def handler(ws: WebSocket) -> None:
            connections.append(ws)
            await gate.wait()
            async for message in ws:
                await ws.send(message)

        async def main() -> None:
            async with serving(handler, max_queue=4) as (_, url), tether.connect(url) as ws:
                for i in range(50):
                    await ws.send(str(i))
                    # One write each (sends in one loop turn are coalesced into one write,
                    # and everything one read returns is parsed before reading pauses).
                    await asyncio.sleep(0)
                server_ws = connections[0]
                for _ in range(200):  # bounded: up to 20 s on a loaded machine
                    if server_ws._reading_paused:
                        break
                    await asyncio.sleep(UNIT)
                assert server_ws._reading_paused
                assert len(server_ws._messages) < 50
                gate.set()
                assert [await ws.recv() for _ in range(50)] == [str(i) for i in range(50)]
                assert not server_ws._reading_paused

        run(main())

    @staticmethod
    async def _burst(port: int, count: int) -> asyncio.StreamWriter:
        """A raw client that sends ``count`` text messages in one write (so that the server
        reads them together)."""
        _, writer = await raw_client(port, [f"{i}" for i in range(count)])
        return writer

    def test_a_read_past_max_queue_does_not_pause_a_waiting_application(self) -> None:
        """One read brings 40 messages with max_queue=4 while the handler waits in recv():
        it takes them all in the same loop turn, so reading is never paused (a pause and a
        resume per read cost two system calls)."""
        pauses: list[int] = []
        received: list[str] = []
        done = asyncio.Event()

        async def handler(ws: WebSocket) -> None:
            original = ws._pause_reading

            def pause_reading() -> None:
                pauses.append(len(ws._messages))
                original()

            ws._pause_reading = pause_reading  # type: ignore[method-assign]
            async for message in ws:
                received.append(str(message))
                if len(received) == 40:
                    done.set()

        async def main() -> None:
            async with serving(handler, max_queue=4) as (server, _):
                writer = await self._burst(server.port_number, 40)
                await asyncio.wait_for(done.wait(), 50 * UNIT)
                assert received == [str(i) for i in range(40)]
                assert pauses == []
                writer.close()

        run(main())

    def test_a_woken_application_that_stalls_is_still_paused(self) -> None:
        """The same burst, but the handler stops reading after its first message: reading
        pauses within the loop turn, and the queue holds at most what that read brought."""
        first = asyncio.Event()
        stop = asyncio.Event()
        connections: list[WebSocket] = []

        async def handler(ws: WebSocket) -> None:
            connections.append(ws)
            await ws.recv()
            first.set()
            await stop.wait()
            async for _ in ws:  # reads again, so sees the close
                pass

        async def main() -> None:
            async with serving(handler, max_queue=4) as (server, _):
                writer = await self._burst(server.port_number, 40)
                await asyncio.wait_for(first.wait(), 50 * UNIT)
                server_ws = connections[0]
                for _ in range(100):
                    if server_ws._reading_paused:
                        break
                    await asyncio.sleep(UNIT / 10)
                assert server_ws._reading_paused
                assert len(server_ws._messages) <= 39
                stop.set()
                writer.close()

        run(main())

    def test_send_waits_while_the_peer_does_not_read(self) -> None:
        async def handler(ws: WebSocket) -> None:
            await asyncio.sleep(1000)  # never reads: max_queue=1 soon pauses the transport

        async def main() -> None:
            async with serving(handler, max_queue=1, max_size=None) as (_, url):
                async with tether.connect(url, compression=None, write_limit=65536) as ws:
                    chunk = b"x" * 65536
                    blocked = False
                    for _ in range(2000):  # up to 128 MiB, far more than socket buffers hold
                        try:
                            await asyncio.wait_for(ws.send(chunk), 5 * UNIT)
                        except asyncio.TimeoutError:
                            blocked = True
                            break
                    assert blocked, "send() never waited although the peer reads nothing"
                    # Paused above the limit; the kernel may have taken a little since.
                    assert ws._writing_paused and ws.buffered_amount > 65536 // 4
                    assert ws.transport is not None
                    ws.transport.abort()

        run(main(), timeout=300 * UNIT)


class TestHeartbeatWhileNotReading:
    """The heartbeat holds whether or not the application reads its messages."""

    @staticmethod
    async def _raw_client(port: int, messages: int) -> tuple[asyncio.StreamReader,
                                                             asyncio.StreamWriter]:
        """A peer that completes the handshake, sends ``messages`` text messages, then never
        answers anything again (its network vanished)."""
        return await raw_client(port, [f"message {i}" for i in range(messages)])

    def test_a_dead_peer_is_released_while_the_application_is_not_reading(self) -> None:
        interval, timeout = 3 * UNIT, 3 * UNIT

        async def never_reads(ws: WebSocket) -> None:
            await ws.wait_closed()

        async def main() -> None:
            async with serving(never_reads, ping_interval=interval, ping_timeout=timeout,
                               max_queue=4, compression=None) as (server, _):
                reader, writer = await self._raw_client(server.port_number, 10)
                loop = asyncio.get_running_loop()
                started = loop.time()
                while server.connections and loop.time() - started < 10 * (interval + timeout):
                    await asyncio.sleep(UNIT / 10)
                elapsed = loop.time() - started
                assert not server.connections, "the dead peer was never released"
                assert elapsed < (interval + 2 * timeout) * 1.5 + 5 * UNIT
                writer.close()

        run(main())

    def test_a_live_peer_behind_a_full_queue_stays(self) -> None:
        """Reading is paused (the application is behind), yet the pong is found and the peer,
        which answers, is kept."""
        interval, timeout = 2 * UNIT, 10 * UNIT  # a generous timeout: a loaded CI machine
        queued: list[int] = []

        async def slow_reader(ws: WebSocket) -> None:
            await asyncio.sleep(3 * (interval + timeout))  # far behind: several heartbeats
            queued.append(len(ws._messages))
            async for _ in ws:
                pass

        async def main() -> None:
            async with serving(slow_reader, ping_interval=interval, ping_timeout=timeout,
                               max_queue=4, compression=None) as (server, url):
                async with tether.connect(url, compression=None, ping_interval=None) as ws:
                    for i in range(50):  # one read each: the queue's bound applies
                        await ws.send(f"message {i}")
                        await asyncio.sleep(UNIT / 20)
                    for _ in range(100):  # until the handler looks at its queue
                        if queued:
                            break
                        await asyncio.sleep(UNIT)
                    assert ws.ready_state == tether.OPEN
                    assert server.connections, "a live peer was dropped"
                    [peer] = server.connections
                    assert 0 < peer.latency
                assert queued and queued[0] >= 4  # it was behind, with reading paused

        run(main())


def test_close_with_reading_paused_still_reads_the_peer_close_frame() -> None:
    """A connection whose reading is paused (the application left max_queue messages
    unread) reads on once it sends its close frame: the peer's close frame is behind those
    messages. Before, the closing handshake waited for close_timeout and ended as 1006."""

    async def flood(ws: tether.WebSocket) -> None:
        for i in range(200):
            await ws.send(f"message {i}")
        await ws.wait_closed()

    async def main() -> None:
        async with serving(flood) as (_, url):
            ws = await tether.connect(url, max_queue=2, close_timeout=100 * UNIT)
            await asyncio.sleep(5 * UNIT)  # the queue fills; reading pauses
            started = asyncio.get_running_loop().time()
            await ws.close()
            took = asyncio.get_running_loop().time() - started
            assert ws.protocol.close_rcvd is not None and ws.close_code == 1000
            assert took < 50 * UNIT, f"close took {took:.2f} s: it waited for close_timeout"

    run(main())
