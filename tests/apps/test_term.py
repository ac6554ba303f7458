"""The web terminal's server side (tether.apps.term): its wire protocol on a real PTY over
loopback WebSockets; flow control, replay and resume, shared sessions and roles, the end
of a program, bad messages, the routes of ``mount()``, and ``close()``.

The protocol: the client's first message is ``attach``; the server answers ``attached``,
then binary frames of PTY output (offsets count their bytes); ``ack``/``resize`` go up,
``size``/``gap``/``exit``/``error`` come down."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.apps.term import Terminal
from tether.apps.term.session import TermSession

from ..asyncio.conftest import UNIT, run, running, until
from ..asyncio.test_server import raw_request

SH = ["sh", "-i"]  # dash on Debian: a prompt, no line editor, no bracketed paste
BASH = ["bash", "--norc", "--noprofile", "-i"]
PS1 = "$ "
ENV = {"PS1": PS1, "TERM": "dumb"}




def terminal(command: Sequence[str] = SH, **options: Any) -> Terminal:
    options.setdefault("kill_grace", 5 * UNIT)
    options.setdefault("env", ENV)
    return Terminal(command, **options)


@asynccontextmanager
async def serving(term: Terminal, router: tether.Router | None = None,
                  **options: Any) -> AsyncIterator[str]:
    """The terminal's router on a free loopback port; yields the socket's URL. Every
    program is ended afterwards."""
    async with tether.serve(router or term.router(), "127.0.0.1", 0, **options) as server:
        try:
            yield f"ws://127.0.0.1:{server.port_number}/ws"
        finally:
            await term.close()


class Page:
    """The page's side of the protocol: output in ``output`` (from ``start``), control
    messages in ``controls``; acknowledges what it got unless ``acking`` is off."""

    def __init__(self, ws: Any, attached: dict[str, Any], acking: bool) -> None:
        self.ws = ws
        self.attached = attached
        self.acking = acking
        self.start: int = attached["offset"]
        self.position: int = attached["offset"]  # offset after the last byte received
        self.output = bytearray()
        self.controls: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, url: str, *, session: str | None = None, since: int | None = None,
                   cols: int = 80, rows: int = 24, acking: bool = True,
                   headers: Sequence[tuple[str, str]] = ()) -> Page:
        ws = await tether.connect(url, headers=list(headers))
        await ws.send(json.dumps({"type": "attach", "session": session, "since": since,
                                  "cols": cols, "rows": rows}))
        attached = json.loads(await asyncio.wait_for(ws.recv(), 50 * UNIT))
        assert attached["type"] == "attached", attached
        return cls(ws, attached, acking)

    @property
    def session(self) -> str:
        return str(self.attached["session"])

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.output += message
                    self.position += len(message)
                    if self.acking:
                        await self.ack()
                else:
                    control = json.loads(message)
                    if control["type"] == "gap":
                        self.position = control["offset"]
                    self.controls.append(control)
        except tether.ConnectionClosed:
            pass

    async def ack(self) -> None:
        try:
            await self.ws.send(json.dumps({"type": "ack", "offset": self.position}))
        except tether.ConnectionClosed:
            pass

    async def control(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def received(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.controls if c["type"] == kind]

    async def wait_control(self, kind: str, count: int = 1) -> dict[str, Any]:
        await until(lambda: len(self.received(kind)) >= count, what=f"{kind!r} message")
        return self.received(kind)[count - 1]

    async def expect(self, pattern: bytes, start: int = 0,
                     timeout: float = 50 * UNIT) -> re.Match[bytes]:
        regex = re.compile(pattern)
        found: list[re.Match[bytes]] = []

        def matched() -> bool:
            match = regex.search(self.output, start)
            if match:
                found.append(match)
            return match is not None

        try:
            await until(matched, timeout)
        except AssertionError:
            raise AssertionError(
                f"{pattern!r} not in output: {bytes(self.output)[-1500:]!r}") from None
        return found[0]

    async def prompt(self) -> None:
        await self.expect(re.escape(PS1.encode()))

    async def run(self, command: str, timeout: float = 50 * UNIT) -> bytes:
        """Type ``command`` with a marker after it (the shell computes the marker, so the
        echoed line never matches it); return what it printed."""
        mark = len(self.output)
        n = os.urandom(3).hex()
        await self.ws.send(f"{command}; echo \"<$((0x{n}))>\"\n".encode())
        end = await self.expect(rb"(?s)<" + str(int(n, 16)).encode() + rb">\r\n.*?"
                                + re.escape(PS1.encode()), mark, timeout)
        echoed = self.output.find(b"\n", mark) + 1
        return bytes(self.output[echoed:end.start()])

    async def closed(self, timeout: float = 50 * UNIT) -> tuple[int | None, str | None]:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.task, 50 * UNIT)

    async def stop_reading(self) -> int:
        """Stop taking output (as a page that went away); returns the offset reached."""
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        return self.position


async def closed_with(url: str, *messages: str | bytes,
                      headers: Sequence[tuple[str, str]] = ()) -> tuple[int | None, str]:
    """Connect, send ``messages``, and return how the server closed the connection."""
    async with tether.connect(url, headers=list(headers)) as ws:
        try:
            for message in messages:
                await ws.send(message)
        except tether.ConnectionClosed:  # closed before it could send them all
            pass
        with pytest.raises(tether.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 50 * UNIT)
        return ws.close_code, ws.close_reason or ""


def attach(**fields: Any) -> str:
    return json.dumps({"type": "attach", "session": None, "since": None, "cols": 80,
                       "rows": 24, **fields})


def only_session(term: Terminal) -> TermSession:
    assert len(term.sessions) == 1, term.sessions
    return next(iter(term.sessions.values()))


async def settled(read: Callable[[], int], interval: float = 3 * UNIT,
                  timeout: float = 50 * UNIT) -> int:
    """Wait until ``read()`` stays the same for ``interval``; return it."""
    deadline = time.monotonic() + timeout
    value = read()
    while True:
        await asyncio.sleep(interval)
        now = read()
        if now == value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still changing: {value} -> {now}")
        value = now


# -- attaching and output -----------------------------------------------------------------------


def test_attach_and_see_output() -> None:
    async def main() -> None:
        term = terminal()
        async with serving(term) as url:
            page = await Page.open(url, cols=100, rows=30)
            attached = page.attached
            assert attached["type"] == "attached"
            assert attached["role"] == "writer" and attached["shared"] is False
            assert (attached["offset"], attached["gap"]) == (0, False)
            assert (attached["cols"], attached["rows"]) == (100, 30)
            assert isinstance(attached["session"], str) and len(attached["session"]) >= 16
            assert attached["session"] in term.sessions
            await page.prompt()
            out = await page.run("echo hello-$((6*7))")
            assert out == b"hello-42\r\n"
            assert (await page.run("stty size")).split() == [b"30", b"100"]
            env = await page.run('echo "$TERM $COLORTERM"')
            assert env == b"dumb truecolor\r\n"  # TERM from env=, COLORTERM the default
            await page.close()

    run(main())


def test_resume_after_a_drop_mid_stream_loses_and_repeats_nothing() -> None:
    async def main() -> None:
        term = terminal(high_water=16384, low_water=4096)
        async with serving(term) as url:
            first = await Page.open(url, acking=False)
            await first.prompt()
            await first.ws.send(b"seq 1 20000; echo END-$((6*7))\n")
            # It never acknowledges: the server stops at about high_water, mid-stream.
            await first.expect(rb"\r\n100\r\n")
            await until(lambda: len(first.output) >= 12000, what="12000 bytes")
            since = await first.stop_reading()
            assert b"END-42" not in first.output
            await first.ws.close()  # it leaves; the program goes on
            second = await Page.open(url, session=first.session, since=since)
            assert second.session == first.session
            assert (second.attached["offset"], second.attached["gap"]) == (since, False)
            await second.expect(rb"END-42\r\n")
            whole = bytes(first.output[:since]) + bytes(second.output)
            command = b"seq 1 20000; echo END-$((6*7))\r\n"
            numbers = whole[whole.index(command) + len(command):whole.index(b"END-42")]
            assert numbers == b"".join(b"%d\r\n" % n for n in range(1, 20001))
            await second.close()

    run(main())


def test_reload_replays_from_the_start_of_kept_output() -> None:
    async def main() -> None:
        term = terminal()
        async with serving(term) as url:
            first = await Page.open(url)
            await first.prompt()
            await first.run("echo one-$((1+1))")
            await first.close()
            second = await Page.open(url, session=first.session, since=None)
            assert (second.attached["offset"], second.attached["gap"]) == (0, False)
            assert second.attached["replay_end"] == len(first.output)
            await until(lambda: len(second.output) >= len(first.output), what="the replay")
            assert bytes(second.output[:len(first.output)]) == bytes(first.output)
            assert (await second.run("echo two-$((1+2))")) == b"two-3\r\n"
            await second.close()

    run(main())


def test_since_older_than_what_is_kept_is_a_gap() -> None:
    async def main() -> None:
        term = terminal(replay=200_000, high_water=16384, low_water=4096)
        async with serving(term) as url:
            first = await Page.open(url)
            await first.prompt()
            await first.ws.send(b"seq 1 100000; echo END-$((6*7))\n")
            await first.expect(rb"\r\n50\r\n")
            await first.close()  # detached: the rest is read into the replay buffer
            session = term.sessions[first.session]
            # the prompt after it too: a later write would move the replay's end
            await until(lambda: session.replay.read(session.replay.start, len(session.replay))
                        .endswith(b"END-42\r\n" + PS1.encode()), what="the end of seq")
            replay = session.replay
            assert replay.start > 0
            second = await Page.open(url, session=first.session, since=10)
            attached = second.attached
            assert attached["gap"] is True
            assert attached["offset"] == replay.start
            assert attached["replay_end"] == replay.end
            await second.expect(rb"END-42\r\n")
            assert len(second.output) >= replay.end - replay.start - 100  # all that is kept
            await second.close()
            # Past the end: a stream it never saw; a gap too.
            third = await Page.open(url, session=first.session, since=replay.end + 1000)
            assert (third.attached["gap"], third.attached["offset"]) == (True, replay.start)
            await third.close()

    run(main())


# -- flow control -------------------------------------------------------------------------------


HIGH, LOW = 65536, 16384


def test_a_page_that_never_acks_pauses_the_program() -> None:
    async def main() -> None:
        term = terminal(["yes"], replay=4 * HIGH, high_water=HIGH, low_water=LOW)
        async with serving(term) as url:
            page = await Page.open(url, acking=False)
            session = only_session(term)
            await until(lambda: not session.stream.reading, what="the PTY paused")
            received = await settled(lambda: len(page.output))
            assert HIGH <= received <= HIGH + 65536
            end = await settled(lambda: session.replay.end)
            assert not session.stream.reading  # the PTY is not read: yes blocks
            await asyncio.sleep(3 * UNIT)
            assert session.replay.end == end and len(page.output) == received
            # An ack opens the window again: more flows, up to high_water past the ack.
            await page.ack()
            await until(lambda: len(page.output) > received + HIGH // 2, what="more output")
            again = await settled(lambda: len(page.output))
            assert received < again <= received + HIGH + 65536
            assert await settled(lambda: session.replay.end) > end
            assert set(page.output) <= set(b"y\r\n")
            await page.close()

    run(main())


def test_a_page_that_acks_keeps_the_output_flowing() -> None:
    async def main() -> None:
        term = terminal(["yes"], replay=4 * HIGH, high_water=HIGH, low_water=LOW)
        async with serving(term) as url:
            page = await Page.open(url)
            await until(lambda: len(page.output) > 20 * HIGH, what="20 windows of output")
            await page.close()

    run(main())


def test_a_detached_session_is_read_and_never_wedges() -> None:
    async def main() -> None:
        term = terminal(["yes"], replay=4 * HIGH, high_water=HIGH, low_water=LOW)
        async with serving(term) as url:
            first = await Page.open(url, acking=False)
            session = only_session(term)
            paused = await settled(lambda: session.replay.end)
            await first.close()
            # No page: read freely into the replay buffer, oldest bytes dropped.
            await until(lambda: session.replay.end > paused + 10 * HIGH, what="reading")
            mark = session.replay.end
            await until(lambda: session.replay.end > mark + 4 * HIGH, what="still reading")
            assert session.replay.start > 0 and len(session.replay) <= 4 * HIGH + 65536
            later = await Page.open(url, session=first.session)
            assert later.attached["gap"] is False
            assert later.attached["offset"] >= mark  # from the start of what is kept
            await until(lambda: len(later.output) > 4 * HIGH, what="output for the new page")
            assert set(later.output) <= set(b"y\r\n")
            await later.close()

    run(main())


def test_a_big_paste_into_a_program_that_echoes_it_does_not_wedge() -> None:
    """1 MiB typed into ``cat`` on the PTY (a paste): the line discipline echoes it and cat
    prints it again, 2 MiB of output for a page that acks everything it gets. The input
    waits for the PTY while the output waits for the page's acks: the acks must still be
    read while the input waits, or neither side ever moves again.

    (The kernel's echo buffer may overwrite echoes while the output is held back, so only
    cat's own output, which blocks rather than being lost, is counted exactly.)"""

    async def main() -> None:
        term = terminal(["cat"])
        async with serving(term) as url:
            page = await Page.open(url)
            line = b"x" * 99 + b"\n"
            pasted = 0
            for _ in range(8):
                await page.ws.send(line * 1310)  # 131000 bytes a message
                pasted += 131000
            session = only_session(term)
            stream = session.stream
            try:
                await until(lambda: stream.bytes_written == pasted and not stream.buffered,
                            60 * UNIT, what="the whole paste taken by the PTY")
                # cat's copy of every line (101 bytes with the line discipline's \r).
                await until(lambda: len(page.output) >= pasted * 101 // 100, 60 * UNIT,
                            what="cat's output of the whole paste")
            except AssertionError:
                page_state = [(p.sent, p.acked) for p in session.pages]
                raise AssertionError(
                    f"wedged: {len(page.output)} bytes out, {page.position} received; "
                    f"pages (sent, acked) {page_state}; PTY read: {stream.reading}; "
                    f"input waiting: {stream.buffered} bytes") from None
            assert page.received("gap") == []  # nothing skipped: the acks kept flowing
            await page.close()

    run(main(), timeout=150 * UNIT)


# -- sharing: writers and viewers ---------------------------------------------------------------


def by_header(ws: Any) -> str | None:
    role = ws.request.headers.get("X-Role", "writer")
    return None if role == "none" else role


VIEWER = [("X-Role", "viewer")]


def test_shared_writer_types_and_viewer_input_is_dropped() -> None:
    async def main() -> None:
        term = terminal(share=True, role=by_header)
        async with serving(term) as url:
            writer = await Page.open(url)
            await writer.prompt()
            viewer = await Page.open(url, headers=VIEWER)
            assert viewer.session == writer.session and len(term.sessions) == 1
            assert (viewer.attached["role"], viewer.attached["shared"]) == ("viewer", True)
            assert (writer.attached["role"], writer.attached["shared"]) == ("writer", True)
            await viewer.ws.send(b"echo V$((3+4))\n")
            error = await viewer.wait_control("error")
            assert error["message"] == "read-only: input dropped"
            await viewer.ws.send(b"more\n")  # said once per page
            assert (await writer.run("echo W$((2+3))")) == b"W5\r\n"
            await viewer.expect(rb"W5\r\n")  # the viewer sees the writer's work
            assert b"V7" not in writer.output and b"echo V" not in writer.output
            assert b"more" not in viewer.output
            assert len(viewer.received("error")) == 1
            assert writer.received("error") == []
            await writer.close()
            await viewer.close()

    run(main())


def test_the_writers_resize_wins_and_every_page_is_told() -> None:
    async def main() -> None:
        term = terminal(share=True, role=by_header)
        async with serving(term) as url:
            writer = await Page.open(url, cols=80, rows=24)
            await writer.prompt()
            viewer = await Page.open(url, cols=60, rows=20, headers=VIEWER)
            # A viewer's size at attach changes nothing.
            assert (viewer.attached["cols"], viewer.attached["rows"]) == (80, 24)
            await writer.control({"type": "resize", "cols": 100, "rows": 30})
            for page in (writer, viewer):
                size = await page.wait_control("size")
                assert (size["cols"], size["rows"]) == (100, 30)
            await viewer.control({"type": "resize", "cols": 50, "rows": 10})
            await viewer.control({"type": "nonsense"})  # its answer follows the resize's
            await viewer.wait_control("error")
            assert (await writer.run("stty size")).split() == [b"30", b"100"]
            session = only_session(term)
            assert (session.child.cols, session.child.rows) == (100, 30)
            assert len(writer.received("size")) == len(viewer.received("size")) == 1
            # The same size again: nobody is told.
            await writer.control({"type": "resize", "cols": 100, "rows": 30})
            await writer.control({"type": "nonsense"})
            await writer.wait_control("error")
            assert len(writer.received("size")) == 1
            await writer.close()
            await viewer.close()

    run(main())


def test_a_slow_viewer_does_not_stall_the_writer() -> None:
    async def main() -> None:
        term = terminal(["yes"], share=True, role=by_header, replay=4 * HIGH,
                        high_water=HIGH, low_water=LOW)
        async with serving(term) as url:
            writer = await Page.open(url)
            viewer = await Page.open(url, headers=VIEWER, acking=False)
            session = only_session(term)
            await until(lambda: len(writer.output) > 16 * HIGH, what="the writer's output")
            stuck = len(viewer.output)
            assert stuck <= HIGH + 65536
            assert session.replay.start > viewer.position  # it fell out of the buffer
            # When it acks, it is told of the gap and goes on from the oldest byte kept.
            lost_from = viewer.position
            viewer.acking = True
            await viewer.ack()
            gap = await viewer.wait_control("gap")
            assert gap["from"] == lost_from and gap["offset"] > lost_from
            assert gap["replay_end"] >= gap["offset"]
            await until(lambda: len(viewer.output) > stuck + 2 * HIGH, what="viewer output")
            assert viewer.ws.close_code is None and writer.ws.close_code is None
            await writer.close()
            await viewer.close()

    run(main())


def test_viewers_set_the_pace_when_no_writer_is_attached() -> None:
    async def main() -> None:
        term = terminal(["yes"], readonly=True, replay=4 * HIGH, high_water=HIGH,
                        low_water=LOW)
        async with serving(term) as url:
            viewer = await Page.open(url, acking=False)
            assert viewer.attached["role"] == "viewer"
            session = only_session(term)
            await until(lambda: not session.stream.reading, what="the PTY paused")
            await settled(lambda: session.replay.end)
            assert not session.stream.reading
            await viewer.close()

    run(main())


# -- the end of a program, keep, take-over ------------------------------------------------------


def test_exit_status_then_close_1000() -> None:
    async def main() -> None:
        term = terminal(keep=50 * UNIT)
        async with serving(term) as url:
            page = await Page.open(url)
            await page.prompt()
            await page.ws.send(b"echo bye-$((2*3)); exit 3\n")
            assert await page.closed() == (1000, "exit status 3")
            assert page.received("exit") == [{"type": "exit", "status": 3, "signal": None,
                                              "description": "exit status 3"}]
            assert b"bye-6\r\n" in page.output  # all output comes before the exit message
            session = term.sessions[page.session]
            assert session.ended and session.returncode == 3
            # A reload within keep still shows the output, then the exit again.
            again = await Page.open(url, session=page.session)
            assert await again.closed() == (1000, "exit status 3")
            assert bytes(again.output) == bytes(page.output)
            assert again.received("exit")[0]["status"] == 3

    run(main())


def test_exit_comes_after_all_output_of_a_paused_program() -> None:
    """The program prints more than a window and exits: while the page does not ack, it
    waits (blocked on the PTY); once the page acks, every byte arrives, then ``exit``."""

    async def main() -> None:
        term = terminal(["sh", "-c", "seq 1 30000; exit 5"], high_water=16384,
                        low_water=4096)
        async with serving(term) as url:
            page = await Page.open(url, acking=False)
            session = only_session(term)
            await until(lambda: not session.stream.reading, what="the PTY paused")
            received = await settled(lambda: len(page.output))
            assert received <= 16384 + 65536
            assert session.child.returncode is None  # blocked writing to the PTY
            assert page.received("exit") == []
            page.acking = True
            await page.ack()
            assert await page.closed() == (1000, "exit status 5")
            assert bytes(page.output) == b"".join(b"%d\r\n" % n for n in range(1, 30001))
            assert page.received("exit")[0]["status"] == 5

    run(main())


def test_killed_by_a_signal() -> None:
    async def main() -> None:
        term = terminal()
        async with serving(term) as url:
            page = await Page.open(url)
            await page.prompt()
            await page.ws.send(b"kill -9 $$\n")
            assert await page.closed() == (1000, "killed by SIGKILL")
            assert page.received("exit") == [{"type": "exit", "status": None, "signal": 9,
                                              "description": "killed by SIGKILL"}]

    run(main())


def test_after_keep_the_program_gets_sighup_and_the_session_is_forgotten() -> None:
    async def main() -> None:
        term = terminal(["sleep", "1000"], keep=10 * UNIT)
        async with serving(term) as url:
            page = await Page.open(url)
            session = term.sessions[page.session]
            pid = session.child.pid
            await page.close()
            assert page.session in term.sessions  # kept for a while
            assert running(pid)
            await until(lambda: page.session not in term.sessions, what="forgotten")
            await until(lambda: session.child.returncode is not None, what="reaped")
            assert session.child.returncode == -signal.SIGHUP  # hung up, as a terminal does
            assert not running(pid)
            # Attaching with the forgotten id starts a new program.
            fresh = await Page.open(url, session=page.session)
            assert fresh.session != page.session
            assert term.sessions[fresh.session].child.pid != pid
            await fresh.close()

    run(main())


def test_keep_expires_after_exit_too() -> None:
    async def main() -> None:
        term = terminal(keep=3 * UNIT)
        async with serving(term) as url:
            page = await Page.open(url)
            await page.prompt()
            await page.ws.send(b"exit 0\n")
            assert (await page.closed())[0] == 1000
            await until(lambda: not term.sessions, what="forgotten")

    run(main())


def pid_in(output: bytes) -> int:
    match = re.search(rb"pid-(\d+)-", output)
    assert match, output
    return int(match.group(1))


def test_reattach_within_keep_finds_the_same_process() -> None:
    async def main() -> None:
        term = terminal(keep=100 * UNIT)
        async with serving(term) as url:
            first = await Page.open(url)
            await first.prompt()
            pid = pid_in(await first.run("echo pid-$$-"))
            assert pid == term.sessions[first.session].child.pid
            await first.close()
            await asyncio.sleep(3 * UNIT)
            second = await Page.open(url, session=first.session)
            assert second.session == first.session
            await second.expect(rb"pid-\d+-")  # replayed
            mark = len(second.output)
            again = await second.run("echo pid-$$-")
            assert pid_in(again) == pid
            assert len(second.output) > mark
            await second.close()

    run(main())


def test_a_second_page_takes_a_session_over() -> None:
    async def main() -> None:
        term = terminal()
        async with serving(term) as url:
            first = await Page.open(url)
            await first.prompt()
            await first.run("echo first-$((1+1))")
            second = await Page.open(url, session=first.session, since=first.position)
            assert second.session == first.session
            assert await first.closed() == (4000, "attached elsewhere")
            assert (await second.run("echo second-$((2+2))")) == b"second-4\r\n"
            assert len(term.sessions) == 1
            assert len(term.sessions[second.session].pages) == 1
            await second.close()

    run(main())


def test_another_users_session_id_starts_a_new_session() -> None:
    async def main() -> None:
        term = terminal()
        auth = tether.TokenAuth({"alice-token": "alice", "bob-token": "bob"})
        async with serving(term, authenticate=auth) as url:
            alice = await Page.open(url, headers=[("Authorization", "Bearer alice-token")])
            await alice.prompt()
            bob = await Page.open(url, session=alice.session,
                                  headers=[("Authorization", "Bearer bob-token")])
            assert bob.session != alice.session  # not alice's program
            assert bob.attached["offset"] == 0
            assert alice.ws.close_code is None
            assert (await alice.run("echo still-$((3+3))")) == b"still-6\r\n"
            await alice.close()
            await bob.close()

    run(main())


# -- bad messages -------------------------------------------------------------------------------


BAD_CONTROL = [
    "not json",
    "[1, 2]",
    '"ack"',
    "{}",
    '{"type": 5}',
    '{"type": "bogus"}',
    '{"type": "resize", "cols": 0, "rows": 24}',
    '{"type": "resize", "cols": 100000, "rows": 24}',
    '{"type": "resize", "cols": 80, "rows": 0}',
    '{"type": "resize", "cols": "80", "rows": 24}',
    '{"type": "resize"}',
    '{"type": "ack", "offset": 1000000000000}',
    '{"type": "ack", "offset": "5"}',
    '{"type": "ack", "offset": -1}',
    '{"type": "ack", "offset": 1.5}',
    '{"type": "ack"}',
    attach(),
]


def test_bad_control_messages_get_an_error_and_everything_goes_on() -> None:
    async def main() -> None:
        term = terminal()
        async with serving(term) as url:
            other = await Page.open(url)
            page = await Page.open(url)
            await page.prompt()
            for count, message in enumerate(BAD_CONTROL, 1):
                await page.control(message)
                error = await page.wait_control("error", count)
                assert isinstance(error["message"], str) and error["message"], message
            assert (await page.run("echo alive-$((4+4))")) == b"alive-8\r\n"
            assert page.ws.close_code is None
            assert len(page.received("error")) == len(BAD_CONTROL)
            await other.prompt()
            assert (await other.run("echo other-$((5+5))")) == b"other-10\r\n"
            assert other.received("error") == []
            session = term.sessions[page.session]
            assert (session.child.cols, session.child.rows) == (80, 24)
            await page.close()
            await other.close()

    run(main())


def test_deeply_nested_json_control_message_gets_an_error() -> None:
    """A control message the JSON parser gives up on (RecursionError, not ValueError) is
    a bad message like any other: an error answer, the connection stays open."""

    async def main() -> None:
        term = terminal()
        async with serving(term) as url:
            page = await Page.open(url)
            await page.prompt()
            await page.control("[" * 100_000)
            await until(lambda: page.received("error") or page.task.done(), what="an answer")
            assert page.ws.close_code is None, (page.ws.close_code, page.ws.close_reason)
            assert page.received("error")
            assert (await page.run("echo alive-$((4+4))")) == b"alive-8\r\n"
            await page.close()

    run(main())


@pytest.mark.parametrize("first", [
    b'{"type": "attach"}',  # binary
    "not json",
    "[]",
    '{"type": "ack", "offset": 0}',
    attach(session=5),
    attach(session=""),
    attach(session="x" * 65),
    attach(since=-1),
    attach(since="0"),
    attach(since=1.5),
    attach(cols=0),
    attach(cols=100000),
    attach(rows=0),
    attach(cols="80"),
])
def test_bad_attach_closes_1008(first: str | bytes) -> None:
    async def main() -> None:
        term = terminal()
        async with serving(term) as url:
            code, reason = await closed_with(url, first)
            assert code == 1008
            assert reason.startswith("bad attach")
            assert term.sessions == {}  # nothing started

    run(main())


def test_deeply_nested_json_attach_closes_1008() -> None:
    async def main() -> None:
        term = terminal()
        async with serving(term) as url:
            code, _ = await closed_with(url, "[" * 100_000)
            assert code == 1008
            assert term.sessions == {}

    run(main())


def test_no_attach_in_time_closes_1008() -> None:
    async def main() -> None:
        term = terminal(attach_timeout=3 * UNIT)
        async with serving(term) as url:
            started = time.monotonic()
            assert await closed_with(url) == (1008, "no attach message")
            assert time.monotonic() - started >= 3 * UNIT * 0.9
            assert term.sessions == {}

    run(main())


def test_max_sessions_closes_1013() -> None:
    async def main() -> None:
        term = terminal(max_sessions=1)
        async with serving(term) as url:
            page = await Page.open(url)
            code, reason = await closed_with(url, attach())
            assert code == 1013 and "too many terminals" in reason
            assert len(term.sessions) == 1
            # Its own session is still open to it.
            again = await Page.open(url, session=page.session)
            assert again.session == page.session
            await again.close()

    run(main())


def test_role_none_closes_1008() -> None:
    async def main() -> None:
        term = terminal(role=by_header)
        async with serving(term) as url:
            code, _ = await closed_with(url, attach(), headers=[("X-Role", "none")])
            assert code == 1008
            assert term.sessions == {}

    run(main())


def test_bad_program_closes_1011() -> None:
    async def main() -> None:
        term = terminal(["tether-no-such-program"])
        async with serving(term) as url:
            code, reason = await closed_with(url, attach())
            assert code == 1011 and reason == "cannot start the terminal's program"
            assert term.sessions == {}

    run(main())


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Terminal(["sh"], keep=-1)
    with pytest.raises(ValueError):
        Terminal(["sh"], high_water=100, low_water=100)
    with pytest.raises(ValueError):
        Terminal(["sh"], high_water=100, low_water=0)
    with pytest.raises(ValueError):
        Terminal(["sh"], replay=1000, high_water=2000, low_water=10)
    with pytest.raises(ValueError):
        Terminal(["sh"], max_sessions=0)


# -- routes and shutdown ------------------------------------------------------------------------


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def test_mount_serves_page_redirect_socket_and_426() -> None:
    async def main() -> None:
        term = terminal()
        router = tether.Router()
        term.mount(router, "/admin/shell")
        async with serving(term, router) as url:
            port = int(url.split(":")[2].split("/")[0])
            status, headers, body = await raw_request(port, get("/admin/shell/"))
            assert status == 200
            assert "default-src 'self'" in headers["content-security-policy"]
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["content-type"].startswith("text/html")
            assert b"<" in body
            status, headers, body = await raw_request(port, get("/admin/shell/", "HEAD"))
            assert status == 200 and body == b""
            status, _, _ = await raw_request(port, get("/admin/shell/", "POST"))
            assert status == 405
            status, headers, _ = await raw_request(port, get("/admin/shell"))
            assert status == 308 and headers["location"] == "/admin/shell/"
            status, headers, _ = await raw_request(port, get("/admin/shell/ws"))
            assert status == 426 and headers["upgrade"].lower() == "websocket"
            status, _, body = await raw_request(port, get("/admin/shell/term.js"))
            assert status == 200 and body
            page = await Page.open(f"ws://127.0.0.1:{port}/admin/shell/ws")
            await page.prompt()
            assert (await page.run("echo mounted-$((1+1))")) == b"mounted-2\r\n"
            await page.close()
            with pytest.raises(tether.InvalidStatus):  # nothing at the root
                await tether.connect(f"ws://127.0.0.1:{port}/ws")

    run(main())


def test_close_ends_every_program() -> None:
    async def main() -> None:
        term = terminal(keep=None)
        async with serving(term) as url:
            pages = [await Page.open(url) for _ in range(3)]
            await pages[2].close()  # one with no page attached (kept forever)
            sessions = list(term.sessions.values())
            assert len(sessions) == 3
            await term.close()
            assert term.sessions == {}
            for session in sessions:
                assert session.child.returncode is not None
                assert not running(session.child.pid)
            for page in pages[:2]:
                code, reason = await page.closed()
                assert code == 1000 and reason == "killed by SIGHUP"

    run(main())
