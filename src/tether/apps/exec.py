"""``tether exec -- CMD ARGS...``: a program's stdin and stdout as a WebSocket (websocketd's
idea, on tether's process plumbing).

Each connection gets its own process: each text message is a line on its stdin, each line it
prints a text message (``binary=True``: its output in raw chunks as binary messages, and
binary messages go to stdin as they are). Its stderr goes to the server's log. When it
exits, the socket closes with 1000, or with 1011 and the exit status as the reason; when the
client leaves first, the process gets EOF on stdin, then SIGHUP, SIGTERM and SIGKILL a grace
time apart. ``broadcast=True`` runs one process for every client: its output goes to all of
them (framed once; a client that falls ``max_buffered`` bytes behind is closed with 1013, as
``tether broadcast`` does) and every client's messages go to its stdin.

Backpressure both ways: a client that reads slowly stops the reading of its process's
stdout (the process blocks on a full pipe); a process that does not read its stdin stops the
reading of that client's socket (TCP pushes back on the client).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..asyncio.broadcast import DEFAULT_MAX_BUFFERED, broadcast
from ..asyncio.connection import WebSocket, format_address
from ..asyncio.router import Router, text_response
from ..exceptions import ConnectionClosed
from ..process import FdStream, PipeChild, exit_description, spawn_pipes
from ..protocol.http11 import Headers, Request, Response
from ..typing import Data

__all__ = ["ExecApp", "LineSplitter"]

logger = logging.getLogger("tether")

Deliver = Callable[[list[Data]], None]

_EXIT_DRAIN = 1.0  # seconds to wait for the last output after the process exited
_STDERR_LINE = 1000  # characters of a stderr line kept in the log


class LineSplitter:
    """Cuts a byte stream into lines (without ``\\n`` or ``\\r\\n``); a line longer than
    ``max_line`` bytes is cut into pieces of ``max_line``."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._partial
        buffer += data
        limit = self.max_line
        lines = []
        start = 0
        while True:
            # A line is at most `limit` bytes, then "\n" or "\r\n".
            end = buffer.find(b"\n", start, start + limit + 2)
            if end >= 0:
                stop = end - 1 if end > start and buffer[end - 1] == 13 else end
                if stop - start <= limit:
                    lines.append(bytes(buffer[start:stop]))
                    start = end + 1
                    continue
            # No end of line within reach: cut a piece once the line is known to be longer
            # (a "\r" right after `limit` bytes may still be the start of "\r\n").
            rest = len(buffer) - start
            if rest > limit + 1 or (rest == limit + 1 and buffer[start + limit] != 13):
                lines.append(bytes(buffer[start:start + limit]))
                start += limit
                continue
            break
        del buffer[:start]
        return lines

    def flush(self) -> list[bytes]:
        """The last line, if the stream did not end with a newline."""
        rest, self._partial = bytes(self._partial), bytearray()
        return [rest] if rest else []


class _Process:
    """One running process and its three pipes; ``deliver(messages)`` gets its output."""

    def __init__(self, app: ExecApp, child: PipeChild, deliver: Deliver) -> None:
        self.app = app
        self.child = child
        loop = child.loop
        self.deliver = deliver
        self.splitter = None if app.binary else LineSplitter(app.max_line)
        self.err_splitter = LineSplitter(_STDERR_LINE)
        self.stdin = FdStream(child.stdin, loop)
        self.stdout = FdStream(child.stdout, loop, self._output, self._output_ended)
        self.stderr = FdStream(child.stderr, loop, self._errors, self._errors_ended)
        self.done: asyncio.Future[int] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        child.add_exit_callback(self._exited)

    def _output(self, chunk: bytes) -> None:
        if self.splitter is None:
            self.deliver([chunk])
        else:
            lines = self.splitter.feed(chunk)
            if lines:
                self.deliver([line.decode("utf-8", "replace") for line in lines])

    def _output_ended(self) -> None:
        if self.splitter is not None:
            rest = self.splitter.flush()
            if rest:
                self.deliver([rest[0].decode("utf-8", "replace")])
        if self.child.returncode is not None:
            self._finish()

    def _errors(self, chunk: bytes) -> None:
        for line in self.err_splitter.feed(chunk):
            self._log_error(line)

    def _errors_ended(self) -> None:
        for line in self.err_splitter.flush():
            self._log_error(line)

    def _log_error(self, line: bytes) -> None:
        logger.info("event=stderr pid=%d line=%r", self.child.pid,
                    line.decode("utf-8", "replace")[:_STDERR_LINE])

    def _exited(self, returncode: int) -> None:
        self.stdout.read_now()
        self.stderr.read_now()
        if self.stdout.eof:
            self._finish()
        else:
            self._timer = self.child.loop.call_later(_EXIT_DRAIN, self._drain_timed_out)

    def _drain_timed_out(self) -> None:
        if not self.stdout.reading and not self.stdout.eof:  # paused for a slow client
            self._timer = self.child.loop.call_later(_EXIT_DRAIN, self._drain_timed_out)
        else:
            self._finish()

    def _finish(self) -> None:
        if self.done.done():
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self.child.returncode is not None
        logger.info("event=exec-exit pid=%d status=%s", self.child.pid,
                    exit_description(self.child.returncode).replace(" ", "-"))
        self.done.set_result(self.child.returncode)

    def write(self, message: Data) -> bool:
        """A client's message to stdin; returns whether the caller should await drain."""
        if isinstance(message, str):
            self.stdin.write(message.encode() + b"\n")
        else:
            self.stdin.write(message)
        return self.stdin.buffered > self.stdin.write_limit

    async def stop(self) -> None:
        """EOF on stdin, then SIGHUP, SIGTERM and SIGKILL a grace time apart; then close."""
        self.stdin.close()
        if self.child.returncode is None:
            try:
                await asyncio.wait_for(self.child.wait(), min(self.app.kill_grace, 0.5))
            except asyncio.TimeoutError:
                await self.child.terminate(self.app.kill_grace)
        self.close()

    def close(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            stream.close()
        if self._timer is not None:
            self._timer.cancel()
        self.child.close()


class ExecApp:
    """The exec server's WebSocket handler (at ``/``) and its processes.

    Args:
        command: the program and its arguments. Nothing a client sends reaches them.
        binary: raw output chunks as binary messages instead of lines as text messages.
        broadcast: one process for every client instead of one per connection.
        max_processes: per connection, refuse connections past this many running processes
            (503 before the upgrade).
        cwd: the process's working directory.
        max_buffered: with ``broadcast``, how far behind a client may fall (see
            :func:`tether.broadcast`).
        max_line: longest line sent as one message; longer ones are cut.
        kill_grace: seconds between the steps of ending a process.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        binary: bool = False,
        broadcast: bool = False,
        max_processes: int | None = None,
        cwd: str | None = None,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        max_line: int = 2**20,
        kill_grace: float = 2.0,
    ) -> None:
        if not command:
            raise ValueError("no command to run")
        if max_processes is not None and max_processes < 1:
            raise ValueError("max_processes must be at least 1")
        self.command = list(command)
        self.binary = binary
        self.broadcast = broadcast
        self.max_processes = max_processes
        self.cwd = cwd
        self.max_buffered = max_buffered
        self.max_line = max_line
        self.kill_grace = kill_grace
        self.processes: set[_Process] = set()
        self.clients: set[WebSocket] = set()
        self._shared: _Process | None = None
        self.router = Router()
        self.router.add_websocket("/", self.serve)
        self.router.add_http("/", self._upgrade_required)

    @staticmethod
    def _upgrade_required(request: Request) -> Response:
        return text_response(426, "this is a WebSocket: connect with new WebSocket(url)",
                             Headers([("Upgrade", "websocket")]))

    def process_request(self, ws: WebSocket, request: Request) -> Response | None:
        """``serve(process_request=...)``: 503 past ``max_processes`` (one per connection)."""
        if (not self.broadcast and self.max_processes is not None
                and len(self.processes) >= self.max_processes):
            return text_response(503, f"{self.max_processes} processes running; try again "
                                 "later", Headers([("Retry-After", "5")]))
        return None

    def _spawn(self, deliver: Deliver) -> _Process:
        child = spawn_pipes(self.command, cwd=self.cwd, env=os.environ)
        process = _Process(self, child, deliver)
        self.processes.add(process)
        logger.info("event=exec-start pid=%d command=%s", child.pid, self.command[0])
        return process

    async def serve(self, ws: WebSocket) -> None:
        if self.broadcast:
            await self._serve_shared(ws)
        else:
            await self._serve_own(ws)

    async def _serve_own(self, ws: WebSocket) -> None:
        if self.max_processes is not None and len(self.processes) >= self.max_processes:
            await ws.close(1013, "too many processes; try again later")
            return
        sender = _Sender(ws)
        try:
            process = self._spawn(sender.deliver)
        except (OSError, ValueError) as exc:
            logger.error("event=exec-spawn-failed command=%s error=%r", self.command[0], exc)
            await ws.close(1011, "cannot start the command")
            return
        sender.stream = process.stdout
        reader = asyncio.ensure_future(self._relay_input(ws, process))
        try:
            waiting: list[asyncio.Future[Any]] = [reader, process.done]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if process.done.done():
                await sender.flushed()
                code = process.done.result()
                await ws.close(1000 if code == 0 else 1011, exit_description(code))
        finally:
            reader.cancel()
            await process.stop()  # cancelled by a server shutdown: close() ends it then
            self.processes.discard(process)  # counted until it is reaped

    async def _relay_input(self, ws: WebSocket, process: _Process) -> None:
        try:
            async for message in ws:
                if process.write(message):  # the program is not reading its input
                    await process.stdin.drain_unless(ws.wait_closed())
        except ConnectionClosed:
            pass

    # -- one process for every client ----------------------------------------------------------

    def _deliver_all(self, messages: list[Data]) -> None:
        for message in messages:
            broadcast(self.clients, message, max_buffered=self.max_buffered, policy="exec")

    async def _serve_shared(self, ws: WebSocket) -> None:
        process = self._shared
        if process is None:
            try:
                process = self._shared = self._spawn(self._deliver_all)
            except (OSError, ValueError) as exc:
                logger.error("event=exec-spawn-failed command=%s error=%r", self.command[0],
                             exc)
                await ws.close(1011, "cannot start the command")
                return
            process.done.add_done_callback(lambda _: self._shared_ended(process))
        self.clients.add(ws)
        try:
            await self._relay_input(ws, process)
        finally:
            self.clients.discard(ws)

    def _shared_ended(self, process: _Process) -> None:
        if self._shared is process:
            self._shared = None
        self.processes.discard(process)
        code = process.done.result()
        for ws in list(self.clients):
            ws.close_nowait(1000 if code == 0 else 1011, exit_description(code))
        process.close()

    async def start(self) -> None:
        """With ``broadcast``, start the process before the first client comes."""
        if self.broadcast and self._shared is None:
            process = self._shared = self._spawn(self._deliver_all)
            process.done.add_done_callback(lambda _: self._shared_ended(process))

    async def close(self) -> None:
        """End every process (for a server's shutdown)."""
        await asyncio.gather(*(process.stop() for process in list(self.processes)),
                             return_exceptions=True)
        self.processes.clear()


class _Sender:
    """One connection's output: messages go out at once; while the client is behind, they
    wait in order and the process's stdout is not read (so what waits is bounded)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.stream: FdStream | None = None
        self._queue: deque[Data] | None = None
        self._task: asyncio.Task[None] | None = None

    def deliver(self, messages: list[Data]) -> None:
        if self._queue is not None:
            self._queue.extend(messages)
            return
        ws = self.ws
        for index, message in enumerate(messages):
            if ws.buffered_amount + len(message) > ws.write_limit:
                # Behind: the rest waits for send(), and stdout is not read meanwhile.
                self._queue = deque(messages[index:])
                if self.stream is not None:
                    self.stream.pause_reading()
                self._task = asyncio.ensure_future(self._send_queued())
                return
            try:
                ws.send_nowait(message)
            except ConnectionClosed:
                return

    async def _send_queued(self) -> None:
        queue = self._queue
        assert queue is not None
        try:
            while queue:
                await self.ws.send(queue.popleft())
        except ConnectionClosed:
            return
        self._queue = None
        if self.stream is not None:
            self.stream.resume_reading()

    async def flushed(self) -> None:
        """Wait until the output that waited for the client has been handed over."""
        if self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
