"""A non-blocking file descriptor on the event loop: a PTY's master side, or a pipe's end.

Reading is callback-driven (``on_data(chunk)``, then ``on_eof()`` once), with the descriptor
registered with the loop only while reading is wanted: ``pause_reading()`` is the whole of
flow control towards the child (the kernel's buffer fills and the child's writes block).
Writing never blocks either: what the descriptor does not take at once waits in a buffer and
goes out as it becomes writable; ``await drain()`` waits while that buffer is over its limit.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["FdStream", "READ_SIZE"]

READ_SIZE = 65536
"""Most bytes taken per read (a PTY gives at most about 4 KiB at a time on Linux)."""

_GONE = (errno.EIO, errno.EPIPE, errno.EBADF, errno.ECONNRESET)  # the other side went away


class FdStream:
    """One non-blocking descriptor, read and written on the loop. It owns ``fd`` and closes
    it in :meth:`close`.

    Args:
        fd: a non-blocking descriptor.
        loop: the event loop.
        on_data: called with each chunk read (a PTY's EIO after its slave closed is EOF).
        on_eof: called once when there is nothing more to read.
        write_limit: ``drain()`` waits while more than this many bytes wait to be written.
        readable, writable: whether the descriptor is read and written at all.
    """

    def __init__(
        self,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], object] | None = None,
        on_eof: Callable[[], object] | None = None,
        *,
        write_limit: int = 65536,
    ) -> None:
        self.fd = fd
        self.loop = loop
        self.on_data = on_data
        self.on_eof = on_eof
        self.write_limit = write_limit
        self.bytes_read = 0
        self.bytes_written = 0
        self.eof = False
        self.closed = False
        self._reading = False
        self._out: deque[memoryview] = deque()
        self._out_size = 0
        self._writing = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        if on_data is not None:
            self.resume_reading()

    # -- reading -------------------------------------------------------------------------------

    @property
    def reading(self) -> bool:
        """Whether the descriptor is being read (not paused, not at EOF, not closed)."""
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if not self._reading and not self.eof and not self.closed:
            self._reading = True
            self.loop.add_reader(self.fd, self._read)

    def read_now(self) -> None:
        """Read whatever the descriptor holds now, paused or not (until EOF or nothing)."""
        while not self.eof and not self.closed and self._read():
            pass

    def _read(self) -> bool:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            data = b""
        if not data:
            self._end()
            return False
        self.bytes_read += len(data)
        assert self.on_data is not None
        self.on_data(data)
        return True

    def _end(self) -> None:
        if self.eof:
            return
        self.pause_reading()
        self.eof = True
        if self.on_eof is not None:
            self.on_eof()

    # -- writing -------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes accepted by :meth:`write` and not yet taken by the descriptor."""
        return self._out_size

    def write(self, data: bytes) -> None:
        """Write ``data`` now as far as the descriptor takes it; keep the rest for later. Data
        written after the other side went away is dropped."""
        if self.closed or not data:
            return
        view = memoryview(data)
        if not self._out:
            sent = self._write_some(view)
            if sent < 0:
                return
            view = view[sent:]
            if not view:
                return
        self._out.append(view)
        self._out_size += len(view)
        if not self._writing:
            self._writing = True
            self.loop.add_writer(self.fd, self._flush)

    def _write_some(self, view: memoryview) -> int:
        """Bytes written, or -1 when the other side is gone (the buffer is dropped)."""
        try:
            sent = os.write(self.fd, view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            self._drop_output()
            return -1
        self.bytes_written += sent
        return sent

    def _flush(self) -> None:
        while self._out:
            view = self._out[0]
            sent = self._write_some(view)
            if sent < 0:
                return
            self._out_size -= sent
            if sent < len(view):
                self._out[0] = view[sent:]
                break
            self._out.popleft()
        if not self._out:
            self._stop_writing()
        if self._out_size <= self.write_limit:
            self._wake_drain()

    def _drop_output(self) -> None:
        self._out.clear()
        self._out_size = 0
        self._stop_writing()
        self._wake_drain()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.fd)

    def _wake_drain(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while more than ``write_limit`` bytes wait to be written."""
        while self._out_size > self.write_limit and not self.closed:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    async def drain_unless(self, other: Awaitable[object]) -> bool:
        """:meth:`drain`, or stop waiting when ``other`` completes first (say, the client
        went away while the program does not read its input). Returns whether drained."""
        drained = asyncio.ensure_future(self.drain())
        stopper = asyncio.ensure_future(other)
        try:
            await asyncio.wait([drained, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (drained, stopper):
                task.cancel()
        return drained.done() and not drained.cancelled()

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading and writing and close the descriptor (unsent data is dropped)."""
        if self.closed:
            return
        self.pause_reading()
        self._drop_output()
        self.closed = True
        os.close(self.fd)
