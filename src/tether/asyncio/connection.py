"""The asyncio connection: an ``asyncio.Protocol`` that drives a sans-I/O :class:`Connection`.

Everything runs in ``data_received``: the core parses, and complete messages go straight to a
waiting ``recv()`` or to a bounded queue. No task or coroutine exists per message. Flow control
both ways: reading pauses while more than ``max_queue`` messages wait for the application, and
``send()`` waits while the transport holds more than ``write_limit`` unsent bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import weakref
from collections import OrderedDict, deque
from operator import methodcaller
from time import perf_counter
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any

from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
)
from .. import accel
from ..logformat import log_event
from ..protocol.connection import _JOIN_LIMIT, Connection, Side, State
from ..protocol.events import BinaryMessage, CloseFrame, Pong, TextMessage
from ..protocol.http11 import Request, Response
from ..typing import Data

__all__ = ["WebSocket", "Listener"]

logger = logging.getLogger("tether")

# What a waiting recv() awaits: an asyncio.Future, or with the C accelerator one that the
# compiled read can resume without a loop turn (see accel.Waiter).
_Waiter: Any = accel.Waiter
_CLOSED: Any = object()  # wakes a waiting recv() when the connection closes
_UNKNOWN: Any = object()
# No ping waiting for its pong: shared by every such connection, and never modified.
_NO_PINGS: dict[bytes, Any] = {}
# The heartbeat pings' payloads, shared by every connection (see _send_heartbeat).
_HEARTBEATS = itertools.count()
_OK_CODES = (1000, 1001, 1005)
# Writes are coalesced within a loop turn up to this many bytes; a batch never grows past it
# (it counts in buffered_amount, and so against broadcast budgets, until written), and a
# larger chunk goes out as it is (joining would copy it).
_COALESCE_LIMIT = 16384


class _Due:
    """The connections of one event loop waiting for the same step of the heartbeat after the
    same delay, in the order they are due (with one delay, the order they were added), and one
    loop timer for the first of them, as the server's handshake timeouts have. A ping or its
    check then costs a dict entry instead of a libuv timer (allocated, put in the loop's heap,
    taken out and freed): 4-15 µs amid a handshake, and a heap of a million timers for a
    million connections."""

    __slots__ = ("delay", "step", "due", "armed")

    def __init__(self, delay: float, step: Any) -> None:
        self.delay = delay
        self.step = step  # calls ws._send_heartbeat() or ws._heartbeat_check()
        self.due: OrderedDict[WebSocket, float] = OrderedDict()
        self.armed = False  # the loop's timer is set (for the first entry, or earlier)

    def add(self, ws: WebSocket) -> None:
        loop = ws.loop
        when = loop.time() + self.delay
        due = self.due
        due[ws] = when
        due.move_to_end(ws)  # (at the end already, unless it was in: then its place moves)
        if not self.armed:
            self.armed = True
            loop.call_at(when, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self.armed = False
        due = self.due
        now = loop.time()
        step = self.step
        while due:
            ws = next(iter(due))
            when = due[ws]
            if when > now + 0.001:  # (a loop may run a timer up to its clock's tick early)
                self.armed = True
                loop.call_at(when, self._run, loop)
                return
            del due[ws]
            try:
                step(ws)  # may add it to another queue, or to this one's end
            except Exception:
                logger.exception("heartbeat failed")


class _Heartbeat:
    """A loop's heartbeat queues for one (ping_interval, ping_timeout): the first ping after
    the opening, the check ping_timeout after each ping, and the next ping after the check
    when ping_interval is the longer. Connections with the same settings share them."""

    __slots__ = ("first", "check", "rest")

    def __init__(self, interval: float, timeout: float | None) -> None:
        self.first = _Due(interval, _SEND)
        self.check = self.first if timeout is None else _Due(timeout, _CHECK)
        rest = interval - (timeout or 0.0)
        self.rest = _Due(rest, _SEND) if rest > 0 else None

    def discard(self, ws: WebSocket) -> None:
        self.first.due.pop(ws, None)
        self.check.due.pop(ws, None)
        if self.rest is not None:
            self.rest.due.pop(ws, None)


_SEND = methodcaller("_send_heartbeat")  # (a subclass's own, as the uvicorn adapter's)
_CHECK = methodcaller("_heartbeat_check")
# Not on the loop, and without a reference to it: queues that outlive their loop go with it.
_HEARTBEATS_OF: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[float, float | None], _Heartbeat]
] = weakref.WeakKeyDictionary()


def _heartbeat_of(loop: asyncio.AbstractEventLoop, interval: float,
                  timeout: float | None) -> _Heartbeat:
    beats = _HEARTBEATS_OF.get(loop)
    if beats is None:
        beats = _HEARTBEATS_OF[loop] = {}
    heartbeat = beats.get((interval, timeout))
    if heartbeat is None:
        heartbeat = beats[interval, timeout] = _Heartbeat(interval, timeout)
    return heartbeat


class Listener:
    """The low-level callback API: methods called on the event loop as things happen, with no
    task, coroutine or queue per message. The coroutine API (``async for``, ``recv()``) is
    this API with a listener that queues messages for the application.

    Subclass it, override what you need and pass an instance where a handler goes
    (``serve(Echo(), ...)``, a ``Router`` route). One instance serves every connection of its
    route; per-connection state belongs on the connection (``ws.anything = ...``) or in a
    dict keyed by it. Callbacks must not block. Send with :meth:`WebSocket.send_nowait`,
    close with :meth:`WebSocket.close_nowait`. An exception in a callback is logged and
    closes that connection with 1011.

    Example::

        class Echo(tether.Listener):
            def on_message(self, ws, message):
                ws.send_nowait(message)
    """

    def on_open(self, ws: WebSocket) -> None:
        """The connection is open (after the 101 response)."""

    def on_message(self, ws: WebSocket, message: Data) -> None:
        """A message arrived: ``str`` for text, ``bytes`` for binary."""

    def on_drain(self, ws: WebSocket) -> None:
        """The unsent data fell back under the low-water mark (a quarter of ``write_limit``)
        after passing ``write_limit``: a good time to send more. See ``buffered_amount``."""

    def on_close(self, ws: WebSocket) -> None:
        """The connection is closed; ``ws.close_code`` and ``ws.close_reason`` say how."""


class WebSocket(asyncio.Protocol):
    """An open WebSocket connection, on either side.

    Receive with ``async for message in ws`` or ``await ws.recv()``: ``str`` for text,
    ``bytes`` for binary. Send with ``await ws.send(message)``. Close with
    ``await ws.close(code, reason)``. The attributes follow the browser's WebSocket where they
    can: ``ready_state``, ``subprotocol``, ``extensions``, ``buffered_amount``,
    ``close_code``, ``close_reason``.

    Args:
        protocol: the sans-I/O connection to drive.
        max_queue: how many received messages may wait for the application before reading
            from the socket pauses.
        write_limit: how many unsent bytes the transport may hold before ``send()`` waits.
        close_timeout: how long to wait for the closing handshake and the TCP close.
        ping_interval: send a ping this often (seconds; None: never). Keeps idle links open
            through proxies and finds dead peers.
        ping_timeout: fail the connection with 1011 when a ping's pong does not come back in
            this time (None: never), whether or not the application reads its messages: when
            reading is paused because the application is behind, the connection reads on
            for one more ``ping_timeout`` to find the pong (the queue may grow by another
            ``max_queue`` messages meanwhile, plus what the last read holds).
    """

    # Slots keep an idle connection small; __dict__ stays available (created on first use)
    # for the application's own attributes, as in Node's ws.
    __slots__ = (
        "protocol",
        "ping_interval",
        "ping_timeout",
        "max_queue",
        "write_limit",
        "close_timeout",
        "loop",
        "transport",
        "request",
        "response",
        "remote_address",
        "_local_address",
        "latency",
        "bytes_received",
        "bytes_sent",
        "messages_received",
        "messages_sent",
        "cut_off_by",
        "opened_at",
        "_messages",
        "_waiter",
        "_processing",
        "_in_read",
        "_reading_paused",
        "_hunting",
        "_writing_paused",
        "_drain_waiters",
        "_pings",
        "_close_timer",
        "_heartbeat",
        "_keepalive_ping",
        "_remote_text",
        "_closed",
        "_lost",
        "_listener",
        "_pending",
        "_pending_size",
        "_turn",
        "__dict__",
    )

    def __init__(
        self,
        protocol: Connection,
        *,
        max_queue: int = 32,
        write_limit: int = 65536,
        close_timeout: float = 10.0,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        turn_end: TurnEnd | None = None,
    ) -> None:
        self.protocol = protocol
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.close_timeout = close_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.request: Request | None = None
        self.response: Response | None = None
        self.remote_address: Any = None
        self._remote_text: str | None = None  # remote_address as the log lines write it
        self._local_address: Any = _UNKNOWN  # asked of the transport on first use
        self.latency = 0.0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.messages_sent = 0
        # The policy that closed this connection for falling behind (see broadcast.close_slow)
        self.cut_off_by: str | None = None
        self.opened_at = 0.0

        # The messages waiting for the application; an empty tuple until the first one (an
        # empty deque costs 600 bytes, and most connections never queue anything).
        self._messages: deque[Data] | tuple[()] = ()
        self._waiter: asyncio.Future[Any] | None = None  # an accel.Waiter
        # True from handing a message to the application until it asks for the next one:
        # meanwhile it may still answer that message, so a close reply waits (see
        # _receive_close).
        self._processing = False
        # True while the compiled read hands its messages to recv() one at a time, running
        # the handler's step inside the read (see accel.fuse): recv() then leaves the replies
        # to the read's end, which writes them at once. Always False in pure Python.
        self._in_read = False
        self._reading_paused = False
        # Reading on past max_queue to find a heartbeat pong (see _heartbeat_lost).
        self._hunting = False
        self._writing_paused = False
        # Both empty and shared until first used (an idle connection then has neither).
        self._drain_waiters: list[asyncio.Future[None]] | tuple[()] = ()
        # The pings awaiting their pong: (the Future of a ping() or None for the heartbeat's,
        # when it was sent).
        self._pings: dict[bytes, tuple[asyncio.Future[float] | None, float]] = _NO_PINGS
        self._close_timer: asyncio.TimerHandle | None = None
        # The heartbeat's queues while it runs (see start_keepalive), else None.
        self._heartbeat: _Heartbeat | None = None
        self._keepalive_ping: bytes | None = None  # the heartbeat ping awaiting its pong
        self._closed: asyncio.Future[None] | None = None  # created by the first waiter
        self._lost = False
        self._listener: Listener | None = None
        # Small writes of the current loop turn after its first one (see _write), or None
        # when nothing was written yet this turn.
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        # Ends the loop turn of every connection that wrote in it (a server's are shared).
        self._turn = turn_end if turn_end is not None else TurnEnd(self.loop)

    # -- the browser's vocabulary ------------------------------------------------------------

    @property
    def ready_state(self) -> State:
        """CONNECTING (0), OPEN (1), CLOSING (2) or CLOSED (3), as in the browser."""
        return State.CLOSED if self._lost else self.protocol.state

    @property
    def local_address(self) -> Any:
        """This end's address (the socket's name), or None once the connection is closed
        if it was never asked before."""
        address = self._local_address
        if address is _UNKNOWN:
            transport = self.transport
            address = None if transport is None else transport.get_extra_info("sockname")
            if address is not None or self._lost:
                self._local_address = address
        return address

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected, or ``None``."""
        return getattr(self.protocol, "subprotocol", None)

    @property
    def extensions(self) -> str:
        """The negotiated extensions, as the browser reports them ("" when none)."""
        extension = self.protocol.extension
        return "" if extension is None else str(extension)

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by ``send()`` and not yet handed to the kernel."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size() + self._pending_size

    @property
    def close_code(self) -> int | None:
        """The close code from the peer: 1005 if its close frame had none, 1006 if the
        connection ended without one; ``None`` while the connection is not closed."""
        if self.protocol.close_rcvd is not None:
            return self.protocol.close_rcvd.code
        return 1006 if self._lost else None

    @property
    def close_reason(self) -> str | None:
        """The close reason from the peer ("" if none); ``None`` while not closed."""
        if self.protocol.close_rcvd is not None:
            return self.protocol.close_rcvd.reason
        return "" if self._lost else None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it (and no
        # typing.cast(): a call per connection).
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            self.write_limit, self.write_limit // 4)
        self.remote_address = transport.get_extra_info("peername")
        self.opened_at = self.loop.time()

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol.state is State.CONNECTING and self._handshake_received(data):
            return
        self.bytes_received += len(data)
        batch = self._pending is None
        if batch:  # gather what the events make us write, and write it once, below
            self._pending = []
        protocol.receive_data(data)
        # The core's events_received() and data_to_send(), inlined: this runs per read.
        events = protocol._events
        if events:
            protocol._events = []
            woke = self._process_events(events)
        else:
            woke = 0
        if protocol.receive_error is not None and self._close_timer is None:
            self._receive_close()  # a protocol error: answered like a close frame
        output = protocol._output
        if output:
            protocol._output = []
            self._write(output)
        if protocol.large_frame is not None and self.transport is not None:
            transport = self.transport
            if transport.get_protocol() is self:
                # The rest of a large frame: read it straight into its payload, no copies.
                transport.set_protocol(_PayloadReader(self))
        if batch:
            if woke:
                # The step of the handler that takes the message writes into this batch,
                # and its end (_end_turn, scheduled after the step) writes it: a lone reply
                # needs no TurnEnd. What the read itself answered (a pong) goes now.
                if self._pending:
                    self._flush()
            else:
                self._end_turn()

    def _handshake_received(self, data: bytes) -> bool:
        """Bytes received before the connection is open: a subclass that handles them
        itself returns True. (A hook rather than an override of data_received, so that every
        read after the handshake costs no extra call.)"""
        return False

    def _payload_received(self, nbytes: int) -> None:
        """``nbytes`` of a large frame were read in place (see _PayloadReader)."""
        self.bytes_received += nbytes
        protocol = self.protocol
        protocol.receive_into(nbytes)
        if protocol.large_frame is None:  # whole, or failed
            self.data_received(b"")  # the rest of its work: events, replies, output

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._process_events(self.protocol.events_received())
        self._write(self.protocol.data_to_send())
        # Returning None lets asyncio close the transport.

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self.protocol.eof_received:
            self.protocol.receive_eof()
        self.protocol.data_to_send()  # nowhere to send it any more
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._heartbeat is not None:
            self._heartbeat.discard(self)
            self._heartbeat = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(_CLOSED)
        self._waiter = None
        for drain in self._drain_waiters:
            if not drain.done():
                drain.set_result(None)
        self._drain_waiters = ()
        for future, _ in self._pings.values():
            if future is not None and not future.done():
                future.set_exception(self._closed_error())
                future.exception()  # retrieved here: nobody may be awaiting this ping
        self._pings = _NO_PINGS
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._log_close()
        listener = self._listener
        if listener is not None:
            try:
                listener.on_close(self)
            except Exception:
                logger.exception("listener on_close failed")

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for drain in self._drain_waiters:
            if not drain.done():
                drain.set_result(None)
        self._drain_waiters = ()
        listener = self._listener
        if listener is not None:
            try:
                listener.on_drain(self)
            except Exception:
                self._listener_failed("on_drain")

    # -- events and output -------------------------------------------------------------------

    def _process_events(self, events: list[Any]) -> int:
        """Hand the core's events on; return whether a waiting ``recv()`` got a message."""
        woke = 0  # 1: a waiting recv() got a message of this batch; 2: and _limit_queue is due
        received = 0
        for event in events:
            cls = type(event)
            if cls is TextMessage or cls is BinaryMessage:
                received += 1
                listener = self._listener
                if listener is not None:
                    try:
                        listener.on_message(self, event[0])
                    except Exception:
                        self._listener_failed("on_message")
                    continue
                waiter = self._waiter
                if waiter is not None and not waiter.done():
                    self._waiter = None
                    self._processing = True
                    # The task's step that this wakes writes its replies into the batch, and
                    # they go out right after it: handles run in order, and the step's was
                    # scheduled by set_result. (A plain call_soon: a done callback of the
                    # waiter costs 1,600 instructions more per message.)
                    waiter.set_result(event[0])
                    self.loop.call_soon(self._end_turn)
                    woke = 1
                else:
                    messages = self._messages
                    if not isinstance(messages, deque):
                        self._messages = messages = deque()
                    messages.append(event[0])
                    if len(messages) >= self.max_queue and not self._reading_paused:
                        if not self._hunting or len(messages) >= 2 * self.max_queue:
                            if not woke:
                                self._pause_reading()  # the application is behind
                            elif woke == 1:
                                # It was waiting and takes the rest in this loop turn: pause
                                # only if it has not by then (a pause and a resume cost a
                                # system call each; here they would come once per read).
                                woke = 2
                                self.loop.call_soon(self._limit_queue)
            elif cls is Pong:
                self._receive_pong(event.data)
            elif cls is CloseFrame:
                self._receive_close()
            else:
                self._process_other_event(event)
        if received:
            self.messages_received += received
        return woke

    def _limit_queue(self) -> None:
        """Pause reading if the application has not taken what one read queued past
        ``max_queue`` (see _process_events). Queued after the waiting task's wake-up, so it
        runs after the task's step; another read meanwhile pauses at once."""
        messages = self._messages
        bound = 2 * self.max_queue if self._hunting else self.max_queue
        if len(messages) >= bound and not self._reading_paused:
            self._pause_reading()

    def _listener_failed(self, callback: str) -> None:
        logger.exception("listener %s failed", callback)
        if self.protocol.state is State.OPEN:
            self.close_nowait(1011, "internal error")

    def _receive_close(self) -> None:
        if not self.protocol.close_reply_pending():
            self._start_close_timer()
        elif not self._messages and not self._processing:
            self._reply_close()  # nothing the application could still answer: reply now
        else:
            # The application has messages from before the close frame to read or answer:
            # reply when it asks for the next message, waits for the close or closes, and
            # after close_timeout at the latest.
            self._close_timer = self.loop.call_later(self.close_timeout, self._reply_close)

    def _reply_close(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.protocol.send_close()
        self._write(self.protocol.data_to_send())
        self._start_close_timer()

    def _process_other_event(self, event: Any) -> None:
        """Events the subclasses care about: the handshake's Request and Response."""

    def _write(self, output: list[bytes]) -> None:
        """Hand the core's output to the transport, coalescing small writes.

        Small chunks are gathered and written together, in one system call, at the first of:
        the end of ``data_received`` (replies sent from callbacks), ``recv()`` finding no
        message and about to wait (replies sent by a coroutine that has read everything
        there was), the end of the loop turn (anything else), 16 KiB gathered, a large chunk
        (written as it is, after what was gathered), or a close. A lone reply waits for
        nothing, and a burst of replies costs one system call instead of one each.
        """
        pending = self._pending
        if pending is not None and len(output) == 1:  # the usual case
            chunk = output[0]
            size = len(chunk)
            if 0 < size and self._pending_size + size <= _COALESCE_LIMIT:
                self.bytes_sent += size
                pending.append(chunk)
                self._pending_size += size
                return
        transport = self.transport
        if transport is None:
            return
        for chunk in output:
            if chunk:
                size = len(chunk)
                self.bytes_sent += size
                pending = self._pending
                if pending is None:
                    self._pending = [chunk]
                    self._pending_size = size
                    self._turn.add(self)
                elif self._pending_size + size > _COALESCE_LIMIT:
                    if pending and _scatters(self.loop):
                        # One system call, and the large chunk is not copied to join them.
                        pending.append(chunk)
                        transport.writelines(pending)
                        pending.clear()
                        self._pending_size = 0
                    else:
                        if pending:
                            self._flush()
                        transport.write(chunk)
                else:
                    pending.append(chunk)
                    self._pending_size += size
            else:
                # The core says: close the TCP connection.
                self._flush()
                protocol = self.protocol
                if protocol.close_rcvd is not None and protocol.close_sent is not None:
                    # The closing handshake is complete: the peer sends nothing more, so
                    # close at once (after what is still unsent).
                    transport.close()
                elif transport.can_write_eof():
                    # Failing, or the peer went away: half-close so that it can still read
                    # everything we sent, then wait (bounded) for it to close its side.
                    transport.write_eof()
                else:
                    transport.close()
                self._start_close_timer()

    def _flush(self) -> None:
        pending = self._pending
        if pending and self.transport is not None and not self._lost:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if pending:
            pending.clear()
            self._pending_size = 0

    def _end_turn(self) -> None:
        """Write what this turn gathered. Also scheduled when a message wakes a ``recv()``:
        it runs right after the task's step that the result resumes."""
        pending = self._pending
        self._pending = None
        self._pending_size = 0
        if pending and self.transport is not None and not self._lost:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _start_close_timer(self) -> None:
        if self._close_timer is None and not self._lost:
            transport = self.transport
            if (transport is not None and transport.is_closing()
                    and not transport.get_write_buffer_size()
                    and transport.get_extra_info("sslcontext") is None):
                # Closed with nothing left to send: connection_lost() follows for sure, without
                # a timer (one timer less per connection). TLS waits for the peer's
                # close_notify, and a buffer for the peer to read: those keep the timer.
                return
            self._close_timer = self.loop.call_later(self.close_timeout, self._abort)

    def _abort(self) -> None:
        self._close_timer = None
        if self.transport is not None:
            self.transport.abort()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    def _pause_reading(self) -> None:
        # Once our close frame is out, read on to find the peer's (close_timeout bounds it).
        if (self.transport is not None and not self.transport.is_closing()
                and self.protocol.close_sent is None):
            self._reading_paused = True
            self.transport.pause_reading()

    def _closed_ok(self) -> bool:
        """Whether the connection closed normally: 1000 or 1001 both ways."""
        rcvd, sent = self.protocol.close_rcvd, self.protocol.close_sent
        return (rcvd is not None and sent is not None and rcvd.code in _OK_CODES
                and sent.code in _OK_CODES)

    def _closed_error(self) -> ConnectionClosed:
        cls = ConnectionClosedOK if self._closed_ok() else ConnectionClosedError
        protocol = self.protocol
        error = cls(protocol.close_rcvd, protocol.close_sent, protocol.close_rcvd_then_sent)
        error.__cause__ = self.protocol.receive_error
        return error

    def _log_close(self) -> None:
        if not logger.isEnabledFor(logging.INFO) or self.response is None:
            return
        if self.response.status != 101:
            return
        error = self.protocol.receive_error
        detail = f' error="{error}"' if error is not None else ""
        log_event(
            logger,
            "event=close remote=%s path=%s code=%s duration=%.3fs in=%dB out=%dB%s",
            self._remote_text or self._remote(),
            self.request.path if self.request is not None else "-",
            self.close_code,
            self.loop.time() - self.opened_at,
            self.bytes_received,
            self.bytes_sent,
            detail,
        )

    def _remote(self) -> str:
        """``remote_address`` as the log lines write it (host:port, IPv6 in brackets),
        formatted once per connection."""
        text = self._remote_text
        if text is None:
            text = self._remote_text = format_address(self.remote_address)
        return text

    # -- heartbeat ---------------------------------------------------------------------------

    def start_keepalive(self) -> None:
        """Start the heartbeat (the I/O layer calls it once the connection is open)."""
        if self.ping_interval is not None and not self._lost:
            heartbeat = self._heartbeat = _heartbeat_of(self.loop, self.ping_interval,
                                                        self.ping_timeout)
            heartbeat.first.add(self)

    def _send_heartbeat(self) -> None:
        """Send the heartbeat's ping. What one costs decides how many connections a core can
        keep alive (a million at 20 s is 50,000 a second): no Future, no system call for its
        payload (a counter: it only has to differ from the other pings in flight), its frame
        written at once, and, with ping_timeout equal to ping_interval (the default), one
        entry per ping in a queue the loop's connections share (_Due)."""
        heartbeat = self._heartbeat
        if heartbeat is None or self._lost or self.protocol.state is not State.OPEN:
            return
        while True:
            payload = (next(_HEARTBEATS) & 0xFFFFFFFF).to_bytes(4, "big")
            if payload not in self._pings:  # else a ping() of the application's has it
                break
        self.protocol.send_ping(payload)
        self._keepalive_ping = payload
        self._add_ping(payload, None)
        batch = self._pending is None
        if batch:  # write it now rather than at the end of the loop turn (a call_soon)
            self._pending = []
        self._write(self.protocol.data_to_send())
        if batch:
            self._end_turn()
        heartbeat.check.add(self)  # (the next ping's queue when there is no ping_timeout)

    def _heartbeat_check(self) -> None:
        """ping_timeout after a heartbeat ping: the next ping if its pong came, else lost."""
        heartbeat = self._heartbeat
        if heartbeat is None or self._lost:
            return
        if self._keepalive_ping is not None:
            self._heartbeat_lost()
            return
        # The next ping goes out ping_interval after this one (at once if the timeout is the
        # longer of the two).
        if heartbeat.rest is not None:
            heartbeat.rest.add(self)
        else:
            self._send_heartbeat()

    def _heartbeat_lost(self) -> None:
        if self._reading_paused and not self._hunting:
            # The application is behind, so reading is paused and the pong may be sitting
            # unread. Read on for one more ping_timeout to find it: the queue may grow to
            # twice max_queue meanwhile. A live peer's pong comes right after what it sent
            # before our ping; a peer that floods without answering hits the bound and fails.
            self._hunting = True
            self._resume_reading()
            if self._heartbeat is not None:
                self._heartbeat.check.add(self)
            return
        logger.info("event=timeout remote=%s reason=keepalive", format_address(
            self.remote_address))
        # The peer is gone or stuck: send a close frame for form's sake and drop the link now
        # rather than wait close_timeout for a peer that does not answer.
        self.protocol.fail(1011, "keepalive ping timeout")
        self._write(self.protocol.data_to_send())
        self._abort()

    # -- receiving ---------------------------------------------------------------------------

    def recv(self) -> Coroutine[Any, Any, Data]:
        """The next message: ``str`` for text, ``bytes`` for binary. (A coroutine function:
        ``await ws.recv()``.)

        Raises:
            ConnectionClosedOK: the connection closed normally and every message was read.
            ConnectionClosedError: the connection closed with an error.
            RuntimeError: another coroutine is already waiting in ``recv()``.
        """
        return self._receive(False)

    def __aiter__(self) -> AsyncIterator[Data]:
        return self

    def __anext__(self) -> Coroutine[Any, Any, Data]:
        return self._receive(True)  # not a coroutine of its own: one frame less per message

    async def _receive(self, iterating: bool) -> Data:
        """recv() and ``async for`` in one coroutine: a waiting application holds one frame,
        and a normal close ends an iteration (StopAsyncIteration) where recv() raises."""
        messages = self._messages
        if messages:  # a queued message: no waiting (inlined, as this runs per message)
            self._processing = True
            message: Data = messages.popleft()
            if self._reading_paused and len(messages) <= self.max_queue // 4:
                self._resume_reading()
            return message
        self._processing = False
        if self._lost or self.protocol.input_closed:
            if self.protocol.close_reply_pending():
                self._reply_close()
            await self._wait_lost()
            raise self._end_error(iterating)
        if self._waiter is not None:
            raise RuntimeError("another coroutine is already waiting for the next message")
        if self._pending and not self._in_read:
            self._flush()  # the replies to what was read: out now, before waiting
        waiter = self._waiter = _Waiter(loop=self.loop)
        try:
            message = await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None
        if message is _CLOSED:
            raise self._end_error(iterating)
        return message

    def _end_error(self, iterating: bool) -> Exception:
        if iterating and self._closed_ok():
            return StopAsyncIteration()  # without building the ConnectionClosedOK it replaces
        return self._closed_error()

    # -- sending -----------------------------------------------------------------------------

    async def send(self, message: Data | bytearray | memoryview | Iterable[Data]) -> None:
        """Send a message: ``str`` as text, bytes-like as binary, an iterable of them as a
        fragmented message. Waits while the transport's buffer is above ``write_limit``.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: ``message`` is of another type.
        """
        try:
            self.send_nowait(message)
        except ConnectionClosed:
            await self._wait_lost_if_closing()
            raise self._closed_error() from None  # as the closing handshake ended
        if self._writing_paused:
            await self._drain()

    def send_nowait(self, message: Data | bytearray | memoryview | Iterable[Data]) -> None:
        """Send a message now and never wait, as ``send()`` does but without its pause above
        ``write_limit``: for callbacks (:class:`Listener`), which watch ``buffered_amount``
        or ``on_drain`` themselves.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: ``message`` is of another type.
        """
        protocol = self.protocol
        cls = type(message)
        if cls is str or cls is bytes:
            if cls is str:
                data: Any = message.encode()  # type: ignore[union-attr]
                chunk = protocol.frame_message(1, data)
            else:
                data = message
                chunk = protocol.frame_message(2, data)
            if chunk is not None:  # the common case: a small message from a server
                self.messages_sent += 1
                pending = self._pending
                size = len(chunk)
                if pending is not None and self._pending_size + size <= _COALESCE_LIMIT:
                    self.bytes_sent += size
                    pending.append(chunk)
                    self._pending_size += size
                else:
                    self._write([chunk])
                return
        else:
            data = None
        try:
            if cls is str:
                protocol.send_text(data)  # encoded above
            elif isinstance(message, (bytes, bytearray, memoryview)):
                protocol.send_binary(message)
            elif isinstance(message, str):  # a str subclass
                protocol.send_text(message.encode())
            elif isinstance(message, Iterable):
                self._send_fragments(message)
            else:
                raise TypeError(f"cannot send {type(message).__name__}: use str or bytes")
        except InvalidState:
            if protocol.state is State.OPEN:
                raise  # misuse, e.g. a new message while a fragmented one is in progress
            raise self._closed_error() from None
        self.messages_sent += 1
        self._write(protocol.data_to_send())

    def _send_fragments(self, fragments: Iterable[Data]) -> None:
        iterator = iter(fragments)
        current = next(iterator, None)
        if current is None:
            raise ValueError("cannot send an empty sequence of fragments")
        text = isinstance(current, str)
        first = True
        while current is not None:
            if isinstance(current, str) != text:
                raise TypeError("all fragments of a message must be str, or all bytes")
            data = current.encode() if isinstance(current, str) else current
            following = next(iterator, None)
            fin = following is None
            if first:
                if text:
                    self.protocol.send_text(data, fin)
                else:
                    self.protocol.send_binary(data, fin)
                first = False
            else:
                self.protocol.send_continuation(data, fin)
            current = following

    async def _drain(self) -> None:
        if self._lost:
            raise self._closed_error()
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self._drain_waiters:
            self._drain_waiters.append(waiter)
        else:
            self._drain_waiters = [waiter]
        await waiter
        if self._lost:
            raise self._closed_error()

    async def ping(self, data: bytes | None = None) -> float:
        """Send a ping and wait for its pong; return the round trip in seconds.

        Raises:
            ConnectionClosed: the connection closed before the pong arrived.
        """
        if data is None:
            data = os.urandom(4)
            while data in self._pings:
                data = os.urandom(4)
        elif data in self._pings:
            raise ValueError("a ping with this payload is already waiting for its pong")
        try:
            self.protocol.send_ping(data)
        except InvalidState:
            raise self._closed_error() from None
        future: asyncio.Future[float] = self.loop.create_future()
        self._add_ping(data, future)
        self._write(self.protocol.data_to_send())
        return await future

    def _add_ping(self, data: bytes, future: asyncio.Future[float] | None) -> None:
        if self._pings is _NO_PINGS:
            self._pings = {}
        self._pings[data] = (future, perf_counter())

    def _pong_received(self, latency: float) -> None:
        """A pong answered one of our pings after ``latency`` seconds (for subclasses)."""

    async def pong(self, data: bytes = b"") -> None:
        """Send an unsolicited pong (a one-way heartbeat)."""
        try:
            self.protocol.send_pong(data)
        except InvalidState:
            raise self._closed_error() from None
        self._write(self.protocol.data_to_send())

    def _receive_pong(self, data: bytes) -> None:
        if data not in self._pings:
            return  # unsolicited (a one-way heartbeat, §5.5.3) or late: nothing to settle
        now = perf_counter()  # not loop.time(): uvloop's ticks in milliseconds
        # A pong answers its ping and, implicitly, every earlier one (RFC 6455 §5.5.3).
        for key in list(self._pings):
            future, sent_at = self._pings.pop(key)
            if future is not None and not future.done():
                future.set_result(now - sent_at)
            if key == self._keepalive_ping:
                # The timer that follows the ping (_heartbeat_check) sends the next one.
                self._keepalive_ping = None
                if self._hunting:  # found: back to the usual bound on the queue
                    self._hunting = False
                    if len(self._messages) >= self.max_queue and not self._reading_paused:
                        self._pause_reading()
            if key == data:
                self.latency = now - sent_at
                self._pong_received(self.latency)
                break
        if not self._pings:
            self._pings = _NO_PINGS

    # -- closing -----------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: send a close frame, wait for the peer's and for the TCP
        close, at most ``close_timeout`` seconds; then abort.

        ``code`` 1005 sends a close frame without a code (and then ``reason`` must be empty).

        Raises:
            ValueError: ``code`` is not valid on the wire or ``reason`` passes 123 bytes.
        """
        self.close_nowait(code, reason)
        await self._wait_lost()

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        """Start closing and return at once: ``close()`` for callbacks. The connection is
        closed when ``on_close`` runs (or ``wait_closed()`` returns).

        Raises:
            ValueError: ``code`` is not valid on the wire or ``reason`` passes 123 bytes.
        """
        if self.protocol.state is State.CONNECTING:
            self._abort()
        elif self.protocol.close_reply_pending():
            self._reply_close()
        else:
            self.protocol.send_close(code, reason)
            self._write(self.protocol.data_to_send())
            self._start_close_timer()
            if self._reading_paused:  # the peer's close frame may be behind unread messages
                self._resume_reading()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        if self.protocol.close_reply_pending():
            self._reply_close()
        await self._wait_lost()

    async def _wait_lost(self) -> None:
        if self._lost:
            return
        if self._closed is None:
            self._closed = self.loop.create_future()
        await asyncio.shield(self._closed)

    async def _wait_lost_if_closing(self) -> None:
        if self.protocol.state is not State.OPEN:
            self._start_close_timer()
            await self._wait_lost()


# With the C accelerator, data_received, send_nowait, _end_turn, _flush, recv and __anext__
# take their common case (whole messages in plain frames for a Listener or a waiting recv(),
# whose step runs inside the read; a server's small message; the turn's write; a recv() that
# waits) in C, and call the methods above, their specification, for everything else: see
# accel.fuse and tests/asyncio/test_fused.py.
accel.fuse(WebSocket, Connection, State.OPEN, TextMessage, BinaryMessage, _JOIN_LIMIT,
           _COALESCE_LIMIT, getattr(asyncio.tasks, "_current_tasks", None), _CLOSED)


class TurnEnd:
    """The end of the loop turn for every connection that gathered writes in it: one
    ``call_soon`` for all of them instead of one per connection (a broadcast to 1,000 clients
    in one turn, or the replies of 100 handlers woken by the same poll). A server's
    connections share one; a client's has its own."""

    __slots__ = ("_call_soon", "_connections")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call_soon = loop.call_soon
        self._connections: list[WebSocket] = []

    def add(self, ws: WebSocket) -> None:
        """``ws`` has writes gathered in ``_pending``: end its turn with the others'."""
        connections = self._connections
        if not connections:
            self._call_soon(self._run)
        connections.append(ws)

    def _run(self) -> None:
        connections = self._connections
        self._connections = []
        for ws in connections:
            try:
                ws._end_turn()
            except Exception:  # one transport's failure must not keep the others' bytes
                logger.exception("writing to %s failed", format_address(ws.remote_address))


class _PayloadReader(asyncio.BufferedProtocol):
    """The transport's protocol while large frames arrive: reads go straight into the frame's
    payload (``Connection.receive_buffer()``), which becomes the message without any copy.

    Between two frames, a read takes the header of a large frame and no more (14 bytes from a
    client, whose frames are masked; 10 from a server) and hands it to the WebSocket's
    ``data_received``: the payload after it is then read in place too, where a larger read
    would copy its first part twice (out of the read buffer, into the payload). The reader
    stays while such a read starts another large frame, and gives the transport back to the
    WebSocket once one does not: a stream of large messages is read without switching
    protocols (each switch stops and restarts reading, two ``epoll_ctl``).
    """

    __slots__ = ("ws", "_header", "_header_out")

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        # The largest frame header, 2 + 8 length bytes, + 4 mask bytes in a client's frames.
        # A memoryview, not the bytearray: asyncio's TLS transport reads the rest of a short
        # read into buf[offset:], which must be a view (a bytearray's slice is a copy, and
        # those bytes would be lost).
        self._header = memoryview(bytearray(14 if ws.protocol.side is Side.SERVER else 10))
        self._header_out = False

    def get_buffer(self, sizehint: int) -> Any:
        view = self.ws.protocol.receive_buffer()
        if view is not None:
            self._header_out = False
            return view
        self._header_out = True
        return self._header

    def buffer_updated(self, nbytes: int) -> None:
        ws = self.ws
        if not self._header_out:
            ws._payload_received(nbytes)
            return
        ws.data_received(self._header[:nbytes].tobytes())
        transport = ws.transport
        if (ws.protocol.large_frame is None and transport is not None
                and transport.get_protocol() is self):
            transport.set_protocol(ws)  # small frames again: back to data_received

    def eof_received(self) -> bool | None:
        return self.ws.eof_received()  # type: ignore[func-returns-value]

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.connection_lost(exc)

    def pause_writing(self) -> None:
        self.ws.pause_writing()

    def resume_writing(self) -> None:
        self.ws.resume_writing()


_SCATTERING_LOOPS: dict[type, bool] = {}
# asyncio's writelines() writes with one sendmsg() since Python 3.12, but before 3.12.9 and
# 3.13.2 it never paused the protocol above the transport's high-water mark (CPython
# gh-127655, GHSA-fw89-6wjj-8j95): a peer that reads nothing would grow the buffer without
# bound, as send() would never wait. There tether joins and write()s instead.
_ASYNCIO_WRITELINES = (3, 12, 9) <= sys.version_info < (3, 13) or sys.version_info >= (3, 13, 2)


def _scatters(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop's ``transport.writelines()`` writes its chunks in one vectored system
    call rather than joining them first (a copy), and pauses the protocol as write() does:
    uvloop's does, and asyncio's since Python 3.12.9 and 3.13.2 (see _ASYNCIO_WRITELINES)."""
    kind = type(loop)
    scatters = _SCATTERING_LOOPS.get(kind)
    if scatters is None:
        scatters = kind.__module__.startswith("uvloop") or _ASYNCIO_WRITELINES
        _SCATTERING_LOOPS[kind] = scatters
    return scatters


def format_address(address: Any) -> str:
    """host:port, with brackets around IPv6 hosts."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        if type(host) is not str:
            host = str(host)
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)
