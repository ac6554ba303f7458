"""One terminal session: a program on a PTY, its output kept for resuming, and the pages
attached to it.

Flow control is per page and counted in bytes of output: a page acknowledges the offset it
has *drawn* (xterm.js's write callback), the server sends a page at most ``high_water`` bytes
past its acknowledgement, and reads the PTY only while the pages that set the pace (the
writers; the viewers when no writer is attached) are less than ``high_water`` behind; it
resumes below ``low_water``. So a program that floods (``yes``) runs at the speed of the page,
the server holds at most ``high_water`` unacknowledged bytes per page plus the replay buffer,
and Ctrl-C is drawn after at most ``high_water`` bytes. A page that falls further behind than
the replay buffer (a slow viewer; the writer sets the pace) is told of the gap and goes on
from the oldest byte kept; it never slows the program or another page. With no page attached
the PTY is read freely into the replay buffer: a detached session never wedges.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ...asyncio.broadcast import Written, close_slow, data_frame, write_frame
from ...asyncio.connection import WebSocket, format_address
from ...exceptions import ConnectionClosed
from ...process import FdStream, PtyChild, check_size, exit_description
from ...process.replay import ReplayBuffer
from ...protocol.frames import Opcode

__all__ = ["TermSession", "Page", "HIGH_WATER", "LOW_WATER", "WRITER", "VIEWER", "dumps"]

logger = logging.getLogger("tether")

HIGH_WATER = 128 * 1024
"""Unacknowledged output bytes per page before the server stops sending to it, and (for
the pages that set the pace) stops reading the PTY. xterm.js advises under 500 KB so that
Ctrl-C stays snappy; VS Code pauses at 100,000 characters."""
LOW_WATER = 32 * 1024
"""Reading the PTY resumes when the pace-setting page is less than this far behind."""
INPUT_BUFFER = 4 * 2**20
"""Keystrokes (a paste) the program has not read yet, kept while the page's socket is read
on (its acks keep the output flowing, so a program that echoes a paste is never stuck).
Past it the server stops reading the socket until the program catches up."""
WRITER = "writer"
VIEWER = "viewer"
_EXIT_DRAIN = 1.0  # seconds to wait for the PTY's last output after the program exited


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Page:
    """One WebSocket attached to a session.

    Attributes:
        sent: offset after the last output byte sent to it.
        acked: offset after the last byte it said it has drawn.
    """

    __slots__ = ("ws", "role", "sent", "acked", "input_dropped", "exit_sent")

    def __init__(self, ws: WebSocket, role: str, offset: int) -> None:
        self.ws = ws
        self.role = role
        self.sent = offset
        self.acked = offset
        self.input_dropped = 0
        self.exit_sent = False

    @property
    def writer(self) -> bool:
        return self.role == WRITER


class TermSession:
    """A program on a PTY and the pages that show it.

    Args:
        session_id: the id pages use to attach again.
        child: the spawned program.
        owner: who may attach to it (the principal that started it), or None for anyone
            who may use the terminal.
        shared: whether several pages may attach at once.
        replay: bytes of output kept for resuming.
        keep: seconds the program outlives its last page (None: forever).
        kill_grace: seconds between SIGHUP, SIGTERM and SIGKILL when it is ended.
        max_buffered: a page's socket budget of unsent bytes; past it (a page that stopped
            reading its socket) the page is cut off with 1013, as the hub's slow subscribers.
        on_forget: called once the session is over and no page may attach any more.
    """

    def __init__(
        self,
        session_id: str,
        child: PtyChild,
        *,
        owner: object = None,
        shared: bool = False,
        replay: int,
        keep: float | None,
        kill_grace: float,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
        max_buffered: int = 4 * HIGH_WATER,
        on_forget: Callable[[TermSession], object] | None = None,
    ) -> None:
        self.id = session_id
        self.child = child
        self.owner = owner
        self.shared = shared
        self.keep = keep
        self.kill_grace = kill_grace
        self.high_water = high_water
        self.low_water = low_water
        self.max_buffered = max_buffered
        self.on_forget = on_forget
        self.loop = child.loop
        self.started_at = time.time()
        self.replay = ReplayBuffer(replay)
        self.pages: list[Page] = []
        self.returncode: int | None = None
        """Set once the program has exited and its output is read: the session has ended."""
        self.stream = FdStream(child.fd, self.loop, self._output, self._output_ended,
                               write_limit=INPUT_BUFFER)
        self._reaped: int | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._keep_timer: asyncio.TimerHandle | None = None
        self._terminating: asyncio.Task[int] | None = None
        self.forgotten = False
        child.add_exit_callback(self._child_exited)

    @property
    def tag(self) -> str:
        """The id's first characters, for log lines."""
        return self.id[:8]

    @property
    def ended(self) -> bool:
        return self.returncode is not None

    # -- pages ---------------------------------------------------------------------------------

    def attach(self, ws: WebSocket, role: str, since: int | None) -> Page:
        """Attach a page that has drawn the output up to ``since`` (None: nothing yet). It
        gets ``attached``, then the output it lacks, then live output (and ``exit``)."""
        if self._keep_timer is not None:
            self._keep_timer.cancel()
            self._keep_timer = None
        offset, gap = self.replay.resume_point(self.replay.start if since is None else since)
        if since is None:
            gap = False
        page = Page(ws, role, offset)
        self.pages.append(page)
        self._control(page, {
            "type": "attached", "session": self.id, "role": role, "shared": self.shared,
            "offset": offset, "gap": gap, "replay_end": self.replay.end,
            "cols": self.child.cols, "rows": self.child.rows,
        })
        logger.info("event=term-attach session=%s remote=%s role=%s offset=%d gap=%s pages=%d",
                    self.tag, format_address(ws.remote_address), role, offset,
                    "yes" if gap else "no", len(self.pages))
        self._pump(page)
        self._pace()
        return page

    def detach(self, page: Page) -> None:
        if page not in self.pages:
            return
        self.pages.remove(page)
        logger.info("event=term-detach session=%s remote=%s pages=%d", self.tag,
                    format_address(page.ws.remote_address), len(self.pages))
        self._pace()
        if not self.pages and self.keep is not None and not self.forgotten:
            self._keep_timer = self.loop.call_later(self.keep, self._keep_expired)

    def _keep_expired(self) -> None:
        self._keep_timer = None
        if self.pages:
            return
        if self.ended:
            self.forget()
        else:
            logger.info("event=term-expire session=%s pid=%d keep=%ss", self.tag,
                        self.child.pid, self.keep)
            self.terminate()

    # -- from the pages ------------------------------------------------------------------------

    def input(self, page: Page, data: bytes) -> bool:
        """Keystrokes from a page. A viewer's are dropped (logged once per page). Returns
        whether input waits to be written (the caller may ``await self.stream.drain()``)."""
        if not page.writer:
            page.input_dropped += len(data)
            if page.input_dropped == len(data):
                logger.info("event=term-input-dropped session=%s remote=%s role=%s",
                            self.tag, format_address(page.ws.remote_address), page.role)
                self._control(page, {"type": "error", "message": "read-only: input dropped"})
            return False
        if self.ended:
            return False
        self.stream.write(data)
        if self.stream.buffered > self.stream.write_limit:
            # The program is not reading its input, and this page's acks wait behind the
            # input on its socket: read the program's output whatever the acks say, or a
            # program that echoes a large paste would block on its output forever.
            self.stream.resume_reading()
            return True
        return False

    def input_drained(self) -> None:
        """The program took the input that was waiting: flow control as usual again."""
        self._pace()

    def resize(self, page: Page, cols: object, rows: object) -> None:
        """A page's window size. A writer's sets the PTY's (and every page is told); a
        viewer's is ignored.

        Raises:
            ValueError: a size out of range.
        """
        check_size(cols, rows)
        assert isinstance(cols, int) and isinstance(rows, int)
        if not page.writer or self.ended:
            return
        if self.child.resize(cols, rows):
            message = {"type": "size", "cols": cols, "rows": rows}
            for other in self.pages:
                self._control(other, message)

    def ack(self, page: Page, offset: object) -> None:
        """A page has drawn the output up to ``offset``.

        Raises:
            ValueError: not an int, or an offset past what was sent to the page.
        """
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, not {offset!r}")
        if offset > page.sent:
            raise ValueError(f"offset {offset} is past the {page.sent} bytes sent")
        if offset <= page.acked:  # from before a gap, or repeated
            return
        page.acked = offset
        self._pump(page)
        self._pace()

    # -- output --------------------------------------------------------------------------------

    def _output(self, chunk: bytes) -> None:
        start = self.replay.end
        self.replay.append(chunk)
        frame = None
        size = len(chunk)
        for page in self.pages:
            if page.sent == start and page.sent - page.acked < self.high_water:
                if frame is None:
                    frame = data_frame(chunk, Opcode.BINARY)  # framed once for every page
                self._send(page, frame, size)
        self._pace()

    def _send(self, page: Page, frame: bytes, size: int) -> bool:
        written = write_frame(page.ws, frame, self.max_buffered)
        if written is Written.SENT:
            page.sent += size
            return True
        if written is Written.OVER_BUDGET:
            close_slow(page.ws, policy="terminal")
        return False

    def _pump(self, page: Page) -> None:
        """Send a page the kept output it lacks, within its window; then ``exit`` once it
        has everything of an ended session."""
        replay = self.replay
        while page.sent < replay.end:
            if page.sent < replay.start:  # fell out of the buffer: a gap
                self._control(page, {"type": "gap", "from": page.sent, "offset": replay.start,
                                     "replay_end": replay.end})
                logger.info("event=term-gap session=%s remote=%s lost=%d", self.tag,
                            format_address(page.ws.remote_address), replay.start - page.sent)
                page.sent = page.acked = replay.start
            window = self.high_water - (page.sent - page.acked)
            if window <= 0:
                return
            chunk = replay.read(page.sent, min(window, 65536))
            if not self._send(page, data_frame(chunk, Opcode.BINARY), len(chunk)):
                return
        if self.ended and not page.exit_sent:
            self._send_exit(page)

    def _pace(self) -> None:
        """Read the PTY while the pace-setting pages are less than high_water behind."""
        stream = self.stream
        if stream.eof or stream.closed:
            return
        pacing = [page for page in self.pages if page.writer] or self.pages
        if not pacing or stream.buffered > stream.write_limit:  # see input()
            stream.resume_reading()
            return
        behind = self.replay.end - max(page.acked for page in pacing)
        if stream.reading:
            if behind >= self.high_water:
                stream.pause_reading()
        elif behind < self.low_water:
            stream.resume_reading()

    def _control(self, page: Page, message: dict[str, Any]) -> None:
        try:
            page.ws.send_nowait(dumps(message))
        except ConnectionClosed:
            pass

    # -- the end -------------------------------------------------------------------------------

    def _child_exited(self, returncode: int) -> None:
        self._reaped = returncode
        logger.info("event=term-exit session=%s pid=%d status=%s", self.tag, self.child.pid,
                    exit_description(returncode).replace(" ", "-"))
        self.stream.read_now()
        if self.stream.eof:
            self._end()
        else:  # the last output may still be on its way, or a background job holds the PTY
            self._drain_timer = self.loop.call_later(_EXIT_DRAIN, self._drain_timed_out)

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        if self.ended:
            return
        if not self.stream.reading and self.pages:  # paused for a page: not done yet
            self._drain_timer = self.loop.call_later(_EXIT_DRAIN, self._drain_timed_out)
            return
        self._end()

    def _output_ended(self) -> None:
        if self._reaped is not None:
            self._end()

    def _end(self) -> None:
        if self.ended:
            return
        assert self._reaped is not None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self.returncode = self._reaped
        self.stream.close()  # hangs up anything still on the PTY
        for page in list(self.pages):
            if page.sent == self.replay.end:
                self._send_exit(page)
        if not self.pages and self._keep_timer is None and self.keep is not None:
            self._keep_timer = self.loop.call_later(self.keep, self._keep_expired)

    def _send_exit(self, page: Page) -> None:
        assert self.returncode is not None
        page.exit_sent = True
        code = self.returncode
        self._control(page, {
            "type": "exit", "status": code if code >= 0 else None,
            "signal": -code if code < 0 else None, "description": exit_description(code),
        })
        page.ws.close_nowait(1000, exit_description(code))

    def terminate(self) -> asyncio.Task[int]:
        """End the program (SIGHUP, then SIGTERM and SIGKILL after ``kill_grace``) and
        forget the session once it is reaped."""
        if self._terminating is None:
            self._terminating = self.loop.create_task(self.child.terminate(self.kill_grace))
            self._terminating.add_done_callback(lambda task: self.forget())
        return self._terminating

    def forget(self) -> None:
        """No page may attach any more (the program has ended or is being ended)."""
        if self.forgotten:
            return
        self.forgotten = True
        if self._keep_timer is not None:
            self._keep_timer.cancel()
            self._keep_timer = None
        if self.on_forget is not None:
            self.on_forget(self)
