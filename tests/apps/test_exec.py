"""``tether exec``'s app (tether.apps.exec): a program's stdin and stdout as WebSocket
messages, one process per connection or one for every client (broadcast); its exit and
the client's departure; limits; and the LineSplitter that cuts its output into lines."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.apps.exec import ExecApp, LineSplitter

from ..asyncio.conftest import UNIT, run, running, until
from ..asyncio.test_server import raw_request

READ_LOOP = 'while read -r l; do [ "$l" = quit ] && exit 0; echo "got $l"; done'




def children() -> list[int]:
    """This process's children (zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == os.getpid():
                found.append(int(entry))
    return found


@asynccontextmanager
async def serving(app: ExecApp, **options: Any) -> AsyncIterator[str]:
    """The app on a free loopback port; yields its URL. Afterwards its processes are
    ended: app.close(), then the handlers of connections that already closed are given
    time to end theirs (the server does not wait for those); what still runs is killed,
    so that no test leaves a process behind. Only the children started meanwhile count:
    others (a session's Redis servers) are not this app's."""
    before = set(children())

    def started() -> set[int]:
        return set(children()) - before

    async with tether.serve(app.router, "127.0.0.1", 0,
                            process_request=app.process_request, **options) as server:
        try:
            yield f"ws://127.0.0.1:{server.port_number}/"
        finally:
            await app.close()
            try:
                await until(lambda: not started(), 100 * UNIT, "the processes to end")
            except AssertionError:
                for pid in started():
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)


def exec_app(command: Sequence[str], **options: Any) -> ExecApp:
    options.setdefault("kill_grace", 5 * UNIT)
    return ExecApp(command, **options)


async def messages_until_closed(ws: Any, timeout: float = 50 * UNIT) -> list[Any]:
    """Every message until the server closes the connection."""
    received = []

    async def collect() -> None:
        try:
            async for message in ws:
                received.append(message)
        except tether.ConnectionClosed:
            pass

    await asyncio.wait_for(collect(), timeout)
    return received


async def recv(ws: Any, timeout: float = 50 * UNIT) -> Any:
    return await asyncio.wait_for(ws.recv(), timeout)


def only_process(app: ExecApp) -> Any:
    assert len(app.processes) == 1, app.processes
    return next(iter(app.processes))


# -- one process per connection -----------------------------------------------------------------


class TestLines:
    def test_lines_both_ways(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", READ_LOOP])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    await ws.send("hello")
                    assert await recv(ws) == "got hello"
                    await ws.send("wörld ✓")
                    assert await recv(ws) == "got wörld ✓"
                    await ws.send(b"raw bytes\n")  # binary messages go in as they are
                    assert await recv(ws) == "got raw bytes"
                    await ws.send("quit")
                    assert await messages_until_closed(ws) == []
                    assert (ws.close_code, ws.close_reason) == (1000, "exit status 0")

        run(main())

    def test_cat_round_trip(self) -> None:
        async def main() -> None:
            app = exec_app(["cat"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    for i in range(50):
                        await ws.send(f"line {i}")
                    for i in range(50):
                        assert await recv(ws) == f"line {i}"

        run(main())

    def test_a_line_split_across_writes(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", 'printf "par"; sleep 0.1; printf "tial\\nnext"; '
                            'sleep 0.1; printf " line\\r\\nlast without newline"'])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    assert await messages_until_closed(ws) == [
                        "partial", "next line", "last without newline"]
                    assert ws.close_code == 1000

        run(main())

    def test_crlf_and_empty_lines(self) -> None:
        async def main() -> None:
            app = exec_app(["printf", "a\\r\\n\\nb\\n\\r\\n"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    assert await messages_until_closed(ws) == ["a", "", "b", ""]

        run(main())

    def test_a_line_longer_than_max_line_is_cut(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", "printf '%s\\n' aaaaaaaaaaaaaaaaaaaaaaaaa"],
                           max_line=10)
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    assert await messages_until_closed(ws) == ["a" * 10, "a" * 10, "a" * 5]
                    assert ws.close_code == 1000

        run(main())

    def test_lines_after_a_long_line_are_not_held_back(self) -> None:
        """The process is still running: what it printed must reach the client now."""

        async def main() -> None:
            app = exec_app(["sh", "-c", "printf '%s\\nshort\\n' aaaaaaaaaaaaaaaaaaaaaaaaa; "
                            "exec sleep 100"], max_line=10)
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    received = []
                    try:
                        for _ in range(4):
                            received.append(await recv(ws, 20 * UNIT))
                    except asyncio.TimeoutError:
                        pass
                    assert received == ["a" * 10, "a" * 10, "a" * 5, "short"]

        run(main())

    def test_invalid_utf8_is_replaced(self) -> None:
        async def main() -> None:
            app = exec_app(["printf", "\\377abc\\n\\303\\n\\342\\202\\254\\n"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    assert await messages_until_closed(ws) == ["\ufffdabc", "\ufffd", "€"]
                    assert ws.close_code == 1000

        run(main())

    def test_binary_mode_chunks(self) -> None:
        async def main() -> None:
            app = exec_app(["cat"], binary=True)
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    payload = bytes(range(256)) * 400  # no lines at all; NULs and \xff
                    await ws.send(payload)
                    received = bytearray()
                    while len(received) < len(payload):
                        chunk = await recv(ws)
                        assert isinstance(chunk, bytes)
                        received += chunk
                    assert bytes(received) == payload
                    await ws.send("text")  # a text message is a line on stdin
                    assert await recv(ws) == b"text\n"

        run(main())


class TestExit:
    def test_exit_0_closes_1000(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", "echo done; exit 0"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    assert await messages_until_closed(ws) == ["done"]
                    assert (ws.close_code, ws.close_reason) == (1000, "exit status 0")
                await until(lambda: not app.processes, what="forgotten")

        run(main())

    def test_exit_3_closes_1011_with_the_status(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", "echo before; exit 3"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    assert await messages_until_closed(ws) == ["before"]
                    assert (ws.close_code, ws.close_reason) == (1011, "exit status 3")

        run(main())

    def test_killed_by_a_signal_closes_1011(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", "kill -9 $$"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    await messages_until_closed(ws)
                    assert (ws.close_code, ws.close_reason) == (1011, "killed by SIGKILL")

        run(main())

    def test_all_output_arrives_before_the_close(self) -> None:
        async def main() -> None:
            app = exec_app(["seq", "1", "20000"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    received = await messages_until_closed(ws)
                    assert received == [str(n) for n in range(1, 20001)]
                    assert ws.close_code == 1000

        run(main())

    def test_client_leaving_gives_eof(self, caplog: pytest.LogCaptureFixture) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", 'echo $$; cat >/dev/null; echo "eof" >&2'])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    pid = int(await recv(ws))
                    assert running(pid)
                await until(lambda: not running(pid), what="the process to end")
                await until(lambda: not app.processes, what="forgotten")

        with caplog.at_level(logging.INFO, logger="tether"):
            run(main())
        messages = [record.getMessage() for record in caplog.records]
        assert any("event=exec-exit" in m and "status=exit-status-0" in m for m in messages)
        assert any("event=stderr" in m and "'eof'" in m for m in messages)  # it read EOF

    def test_client_leaving_terminates_a_process_that_ignores_eof(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", "echo $$; exec sleep 100"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    pid = int(await recv(ws))
                    process = only_process(app)
                await until(lambda: not running(pid), what="the process to end")
                await until(lambda: process.child.returncode is not None, what="reaped")
                assert process.child.returncode == -1  # SIGHUP
                # the handler forgets it when its stop() resumes, a step after the reaping
                await until(lambda: not app.processes, what="forgotten")

        run(main())

    def test_spawn_failure_closes_1011(self) -> None:
        async def main() -> None:
            app = exec_app(["tether-no-such-command"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    await messages_until_closed(ws)
                    assert (ws.close_code, ws.close_reason) == (1011, "cannot start the command")
                assert not app.processes

        run(main())

    def test_stderr_goes_to_the_log(self, caplog: pytest.LogCaptureFixture) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", "echo oops >&2; echo 'second problem' >&2; echo out"])
            async with serving(app) as url:
                async with tether.connect(url) as ws:
                    assert await messages_until_closed(ws) == ["out"]  # not on the socket

        with caplog.at_level(logging.INFO, logger="tether"):
            run(main())
        lines = [r.getMessage() for r in caplog.records
                 if r.name == "tether" and "event=stderr" in r.getMessage()]
        assert len(lines) == 2, lines
        assert lines[0].endswith("line='oops'") and lines[1].endswith("line='second problem'")

    def test_close_ends_every_process(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", "echo $$; exec sleep 100"])
            async with serving(app) as url:
                clients = [await tether.connect(url) for _ in range(3)]
                pids = [int(await recv(ws)) for ws in clients]
                assert len(app.processes) == 3
                await app.close()
                assert not app.processes
                for pid in pids:
                    assert not running(pid)
                for ws in clients:
                    await ws.close()

        run(main())


class TestLimits:
    def test_max_processes_is_503_before_the_upgrade(self) -> None:
        async def main() -> None:
            app = exec_app(["cat"], max_processes=1)
            async with serving(app) as url:
                async with tether.connect(url) as first:
                    await first.send("one")
                    assert await recv(first) == "one"
                    with pytest.raises(tether.InvalidStatus) as info:
                        await tether.connect(url)
                    assert info.value.response.status == 503
                    assert info.value.response.headers.get("Retry-After") == "5"
                await until(lambda: not app.processes, what="the slot to free")
                async with tether.connect(url) as again:  # a slot again
                    await again.send("two")
                    assert await recv(again) == "two"

        run(main())

    def test_max_processes_counts_a_process_until_it_is_reaped(self) -> None:
        """A process that outlives its client (it ignores EOF and SIGHUP: it is ended by
        SIGTERM a grace time later) still runs, so it still counts."""

        async def main() -> None:
            app = exec_app(["sh", "-c", 'trap "" HUP; echo $$; exec sleep 100'],
                           max_processes=1, kill_grace=20 * UNIT)
            async with serving(app) as url:
                async with tether.connect(url) as first:
                    pid = int(await recv(first))
                await asyncio.sleep(UNIT)
                assert running(pid)  # not ended yet: EOF, then SIGHUP, ignored
                try:
                    second = await tether.connect(url)
                except tether.InvalidStatus as exc:
                    assert exc.response.status == 503
                else:
                    await second.close()
                    raise AssertionError(f"a second process started while {pid} still runs "
                                         f"(max_processes=1)")

        run(main())

    def test_plain_get_is_426(self) -> None:
        async def main() -> None:
            app = exec_app(["cat"])
            async with serving(app) as url:
                port = int(url.split(":")[2].rstrip("/"))
                status, headers, _ = await raw_request(
                    port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert status == 426 and headers["upgrade"].lower() == "websocket"
                assert not app.processes

        run(main())

    def test_a_client_that_does_not_read_pauses_the_process(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", "exec yes $(printf %01000d 0)"])  # 1001-byte lines
            async with serving(app) as url:
                ws = await tether.connect(url, max_queue=4, compression=None)
                process = only_process(app)

                async def read_so_far() -> int:
                    value: int = process.stdout.bytes_read
                    await asyncio.sleep(3 * UNIT)
                    return value

                await until(lambda: not process.stdout.reading, what="stdout paused")
                deadline = time.monotonic() + 50 * UNIT
                while (value := await read_so_far()) != process.stdout.bytes_read:
                    assert time.monotonic() < deadline, "stdout is still being read"
                assert value < 64 * 2**20  # bounded by the socket buffers, not growing
                assert not process.stdout.reading
                assert await recv(ws) == "0" * 1000  # reading again lets it go on
                assert ws.transport is not None
                ws.transport.abort()  # a client that went away without reading the rest
                await until(lambda: process.child.returncode is not None, what="reaped")
                await until(lambda: not app.processes, what="forgotten")

        run(main())

    def test_constructor_checks(self) -> None:
        with pytest.raises(ValueError):
            ExecApp([])
        with pytest.raises(ValueError):
            ExecApp(["cat"], max_processes=0)


# -- one process for every client --------------------------------------------------------------


class TestBroadcast:
    def test_every_client_gets_each_line_and_any_client_writes(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", READ_LOOP], broadcast=True)
            async with serving(app) as url:
                a = await tether.connect(url)
                await a.send("a0")
                assert await recv(a) == "got a0"
                b = await tether.connect(url)
                await b.send("b0")  # answered: b is registered
                assert await recv(b) == "got b0"
                assert await recv(a) == "got b0"
                await a.send("from a")
                assert await recv(a) == "got from a"
                assert await recv(b) == "got from a"
                assert len(app.processes) == 1
                await b.close()  # the process stays for the others
                await a.send("still")
                assert await recv(a) == "got still"
                await a.close()

        run(main())

    def test_a_slow_client_is_cut_off_and_the_others_keep_their_rate(self) -> None:
        """One process for everyone, writing as fast as it can: a client that stops reading
        is closed with 1013 once it is max_buffered behind (as tether broadcast does); the
        one that reads keeps getting lines, and the process is never slowed by the other."""

        async def main() -> None:
            # 40 MB/s of 8 KB lines, in bursts: far more than a client that reads nothing
            # can hold, and what one that reads keeps up with on a loaded machine.
            producer = ("import sys, time\nline = 'x' * 8000 + '\\n'\n"
                        "while True:\n    sys.stdout.write(line * 50)\n"
                        "    sys.stdout.flush()\n    time.sleep(0.01)\n")
            app = exec_app([sys.executable, "-c", producer], broadcast=True,
                           max_buffered=64 * 1024)
            async with serving(app, compression=None) as url:
                fast = await tether.connect(url, compression=None)
                slow = await tether.connect(url, compression=None, max_queue=1)
                # The slow one reads nothing: its reading pauses, the kernel's buffers fill,
                # then its server-side budget; the server closes it with 1013 (which it
                # cannot read: it reads nothing).
                def cut_off() -> bool:
                    return any(ws.protocol.close_sent is not None
                               and ws.protocol.close_sent.code == 1013 for ws in app.clients)

                got = 0
                deadline = time.monotonic() + 100 * UNIT
                while not cut_off() and time.monotonic() < deadline:
                    message = await asyncio.wait_for(fast.recv(), 50 * UNIT)
                    assert message == "x" * 8000
                    got += 1
                assert cut_off(), "the slow client was never cut off"
                mark = got
                for _ in range(1000):  # the fast one goes on
                    assert await asyncio.wait_for(fast.recv(), 50 * UNIT)
                    got += 1
                assert got == mark + 1000 and len(app.processes) == 1
                slow.transport.abort() if slow.transport else None
                await fast.close()

        run(main())

    def test_process_exit_closes_every_client(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", READ_LOOP], broadcast=True)
            async with serving(app) as url:
                clients: list[Any] = []
                for i in range(3):
                    clients.append(await tether.connect(url))
                    await clients[-1].send(f"hi {i}")  # answered to all: it is registered
                    for ws in clients:
                        assert await recv(ws) == f"got hi {i}"
                await clients[0].send("quit")
                for ws in clients:
                    await messages_until_closed(ws)
                    assert (ws.close_code, ws.close_reason) == (1000, "exit status 0")
                await until(lambda: not app.processes, what="forgotten")
                # The next client starts a new one.
                async with tether.connect(url) as ws:
                    await ws.send("again")
                    assert await recv(ws) == "got again"

        run(main())

    def test_non_zero_exit_closes_every_client_with_1011(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", 'read l; echo "bye $l"; exit 3'], broadcast=True)
            async with serving(app) as url:
                a = await tether.connect(url)
                b = await tether.connect(url)
                await asyncio.sleep(UNIT)  # both handlers registered
                await a.send("x")
                for ws in (a, b):
                    assert await messages_until_closed(ws) == ["bye x"]
                    assert (ws.close_code, ws.close_reason) == (1011, "exit status 3")

        run(main())

    def test_start_runs_the_process_before_any_client(self) -> None:
        async def main() -> None:
            app = exec_app(["sh", "-c", READ_LOOP], broadcast=True)
            await app.start()
            async with serving(app) as url:
                assert len(app.processes) == 1
                async with tether.connect(url) as ws:
                    await ws.send("early")
                    assert await recv(ws) == "got early"
                assert len(app.processes) == 1  # not per connection

        run(main())

    def test_max_processes_does_not_apply(self) -> None:
        async def main() -> None:
            app = exec_app(["cat"], broadcast=True, max_processes=1)
            async with serving(app) as url:
                a = await tether.connect(url)
                b = await tether.connect(url)  # no 503: one process for everyone
                await a.close()
                await b.close()

        run(main())


# -- LineSplitter ------------------------------------------------------------------------------


class TestLineSplitter:
    def test_lines_and_crlf(self) -> None:
        splitter = LineSplitter(100)
        assert splitter.feed(b"one\ntwo\r\nthr") == [b"one", b"two"]
        assert splitter.feed(b"ee\r") == []
        assert splitter.feed(b"\n\n\r\n") == [b"three", b"", b""]
        assert splitter.flush() == []

    def test_a_lone_cr_stays(self) -> None:
        splitter = LineSplitter(100)
        assert splitter.feed(b"a\rb\n\r") == [b"a\rb"]
        assert splitter.flush() == [b"\r"]

    def test_flush_gives_the_last_line_once(self) -> None:
        splitter = LineSplitter(100)
        assert splitter.feed(b"a\npartial") == [b"a"]
        assert splitter.flush() == [b"partial"]
        assert splitter.flush() == []
        assert splitter.feed(b"next\n") == [b"next"]

    def test_long_lines_are_cut(self) -> None:
        splitter = LineSplitter(4)
        assert splitter.feed(b"aaaabbbbcc") == [b"aaaa", b"bbbb"]
        assert splitter.feed(b"\n") == [b"cc"]
        assert splitter.feed(b"abcd\n") == [b"abcd"]  # exactly max_line: one line

    def test_a_long_line_then_more_lines_in_one_chunk(self) -> None:
        splitter = LineSplitter(4)
        assert splitter.feed(b"aaaabbbbcc\nd\nee\n") == [b"aaaa", b"bbbb", b"cc", b"d", b"ee"]
        assert splitter.flush() == []

    def test_flush_after_a_long_line_has_no_newline(self) -> None:
        splitter = LineSplitter(4)
        lines = splitter.feed(b"aaaaa\n") + splitter.flush()
        assert lines == [b"aaaa", b"a"]

    @pytest.mark.parametrize("pieces, lines", [
        ([b"aaaa", b"\n"], [b"aaaa"]),  # exactly max_line, its newline in the next read
        ([b"aaaa\n"], [b"aaaa"]),
        ([b"aaa\r", b"\n"], [b"aaa"]),  # a short line, its CRLF split between reads
        ([b"aaaa\r", b"\n"], [b"aaaa"]),
        ([b"aaaa\r\n"], [b"aaaa"]),
    ])
    def test_lines_of_max_line_bytes(self, pieces: list[bytes], lines: list[bytes]) -> None:
        """A line of max_line bytes is not longer than max_line: it stays one line, with
        no stray CR and no empty line after it, however the reads cut it."""
        splitter = LineSplitter(4)
        got = [line for piece in pieces for line in splitter.feed(piece)] + splitter.flush()
        assert got == lines

    def test_random_chunking_against_a_model(self) -> None:
        import random

        rng = random.Random(1234)
        for _ in range(300):
            text = b"".join(rng.choice([b"a", b"b", b"\n", b"\r\n", b"xyz"])
                            for _ in range(rng.randrange(0, 60)))
            splitter = LineSplitter(1000)
            lines: list[bytes] = []
            i = 0
            while i < len(text):
                step = rng.randrange(1, 8)
                lines += splitter.feed(text[i:i + step])
                i += step
            lines += splitter.flush()
            model = text.split(b"\n")
            if model and model[-1] == b"":
                model.pop()
            model = [line[:-1] if line.endswith(b"\r") else line for line in model]
            assert lines == model, text
