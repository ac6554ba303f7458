"""Broadcast: one message to many connections, framed once, never waiting for the slowest.

``broadcast(connections, message)`` serializes the frame once and writes the same ``bytes``
object to every open server-side connection. It is a plain function, not a coroutine: it never
waits for a slow client. Instead each connection has a budget of unsent bytes; a client already
over it when a message comes is closed (1013 "try again later" by default, with a reason) rather
than allowed to grow the server's memory, and the others keep their rate.

Slowness is judged by the bytes already queued before the new frame, never by the frame's own
size: a connection with nothing queued accepts any frame, so one message of ``max_size`` never
closes anyone, whatever the budget. What the server holds for one connection is therefore at
most ``max_buffered`` plus one frame.

The two steps are public for other fan-outs (the hub's topics): :func:`text_frame` frames a
payload once, :func:`write_frame` hands that frame to one connection within its budget, and
:func:`close_slow` closes a connection that is over it.

Frames go out uncompressed, even where permessage-deflate was negotiated: RFC 7692 §6 lets each
message choose, and a compressed frame could not be shared (every connection's compressor has
its own context).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from ..exceptions import InvalidState
from ..protocol.connection import Side, State
from ..protocol.frames import Opcode, serialize_header
from ..typing import Data
from .connection import _COALESCE_LIMIT, WebSocket, format_address, logger

__all__ = [
    "broadcast",
    "DEFAULT_MAX_BUFFERED",
    "Written",
    "close_slow",
    "data_frame",
    "text_frame",
    "write_frame",
]

_OPEN = State.OPEN

DEFAULT_MAX_BUFFERED = 2**20
"""Unsent bytes a connection may hold before a broadcast gives up on it (1 MiB)."""


class Written(IntEnum):
    """What :func:`write_frame` did with a frame."""

    SENT = 0
    """Handed to the transport."""
    NOT_OPEN = 1
    """Skipped: the connection is closing or closed."""
    OVER_BUDGET = 2
    """Not sent: the connection's unsent bytes, before this frame, pass ``max_buffered``."""


def data_frame(payload: bytes, opcode: int = Opcode.TEXT) -> bytes:
    """A whole, unmasked, uncompressed data frame holding ``payload``: a server's frame,
    shareable by every connection (RFC 6455 §5.2)."""
    return serialize_header(True, False, opcode, len(payload), False) + payload


def text_frame(payload: bytes) -> bytes:
    """A server's text frame holding ``payload`` (UTF-8, not checked here)."""
    return serialize_header(True, False, Opcode.TEXT, len(payload), False) + payload


def write_frame(ws: WebSocket, frame: bytes, max_buffered: int = DEFAULT_MAX_BUFFERED) -> Written:
    """Write a frame built by :func:`data_frame` to one server-side connection, unless the
    connection is not open or its unsent bytes already pass ``max_buffered``.

    The frame's own size does not count: a connection with nothing queued takes any frame.
    Never waits. The same ``frame`` object may go to any number of connections.
    """
    transport = ws.transport
    protocol = ws.protocol
    if transport is None or protocol.state is not State.OPEN:
        return Written.NOT_OPEN
    if transport.get_write_buffer_size() + ws._pending_size > max_buffered:
        return Written.OVER_BUDGET
    try:
        protocol.send_frame(frame)
    except InvalidState:
        return Written.NOT_OPEN
    ws.messages_sent += 1
    ws._write(protocol.data_to_send())
    return Written.SENT


def close_slow(ws: WebSocket, code: int = 1013, policy: str = "broadcast") -> None:
    """Start closing a connection that fell too far behind, with ``code`` and a reason that
    says how far; never waits (the close timer bounds the closing handshake). ``policy``
    names who cut it off, for the log and the metrics (``ws.cut_off_by``)."""
    if ws.protocol.state is not State.OPEN or ws.transport is None:
        return
    buffered = ws.buffered_amount
    ws.cut_off_by = policy
    logger.info("event=slow remote=%s buffered=%dB code=%d policy=%s",
                format_address(ws.remote_address), buffered, code, policy)
    ws.protocol.send_close(code, f"too slow: {buffered} bytes unsent")
    ws._write(ws.protocol.data_to_send())
    ws._start_close_timer()


def broadcast(
    connections: Iterable[WebSocket],
    message: Data,
    *,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    slow_code: int = 1013,
    policy: str = "broadcast",
) -> int:
    """Send ``message`` to every open connection; return how many it was handed to.

    Args:
        connections: any iterable of connections; closed and closing ones are skipped.
        message: ``str`` as text, bytes-like as binary.
        max_buffered: a connection that already has more unsent bytes than this (its
            ``buffered_amount``, before the new frame) is closed with ``slow_code`` instead.
            The frame itself never counts, so a message of any legal size reaches a
            connection that keeps up.
        slow_code: 1013 (try again later: the client may reconnect and resume) or 1008.
        policy: the name a connection closed for being slow is counted under
            (``ws.cut_off_by``, the metric ``tether_slow_consumers_total``).
    """
    if isinstance(message, str):
        payload: bytes = message.encode()
        opcode = Opcode.TEXT
    else:
        payload = bytes(message)
        opcode = Opcode.BINARY
    frame = data_frame(payload, opcode)
    size = len(frame)
    delivered = 0
    for ws in connections:
        protocol = ws.protocol
        if protocol.state is _OPEN and protocol._is_server and not protocol._send_opcode:
            # The hot path: what write_frame() and protocol.send_frame() do, inlined (same
            # checks, same order), and the frame joins the connection's writes of this loop
            # turn, written once when the turn ends: a fan-out can wait one turn, and a burst
            # of messages then costs one system call per connection, not one per message.
            transport = ws.transport
            buffered = ws._pending_size
            if transport is not None and buffered + size <= _COALESCE_LIMIT:
                if transport.get_write_buffer_size() + buffered > max_buffered:
                    close_slow(ws, slow_code, policy)
                    continue
                pending = ws._pending
                if pending is None:
                    ws._pending = [frame]
                    ws._turn.add(ws)
                else:
                    pending.append(frame)
                ws._pending_size = buffered + size
                ws.bytes_sent += size
                ws.messages_sent += 1
                delivered += 1
                continue
        if protocol.side is Side.CLIENT:  # masked per frame: cannot share bytes
            if ws.protocol.state is not State.OPEN or ws.transport is None:
                continue
            try:
                if opcode == Opcode.TEXT:
                    ws.protocol.send_text(payload)
                else:
                    ws.protocol.send_binary(payload)
            except InvalidState:
                continue
            ws.messages_sent += 1
            ws._write(ws.protocol.data_to_send())
            delivered += 1
            continue
        written = write_frame(ws, frame, max_buffered)
        if written is Written.SENT:
            delivered += 1
        elif written is Written.OVER_BUDGET:
            close_slow(ws, slow_code, policy)
    return delivered
