"""Broadcast: one message to many connections, framed once, never waiting for the slowest.

``broadcast(connections, message)`` serializes the frame once and writes the same ``bytes``
object to every open server-side connection. It is a plain function, not a coroutine: it never
waits for a slow client. Instead each connection has a budget of unsent bytes; a client already
over it when a message comes is closed (1013 "try again later" by default, with a reason) rather
than allowed to grow the server's memory, and the others keep their rate.

Frames go out uncompressed, even where permessage-deflate was negotiated: RFC 7692 §6 lets each
message choose, and a compressed frame could not be shared (every connection's compressor has
its own context).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..exceptions import InvalidState
from ..protocol.connection import Side, State
from ..protocol.frames import Opcode, serialize_header
from ..typing import Data
from .connection import WebSocket, logger

__all__ = ["broadcast", "DEFAULT_MAX_BUFFERED"]

DEFAULT_MAX_BUFFERED = 2**20
"""Unsent bytes a connection may hold before a broadcast gives up on it (1 MiB)."""


def broadcast(
    connections: Iterable[WebSocket],
    message: Data,
    *,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    slow_code: int = 1013,
) -> int:
    """Send ``message`` to every open connection; return how many it was handed to.

    Args:
        connections: any iterable of connections; closed and closing ones are skipped.
        message: ``str`` as text, bytes-like as binary.
        max_buffered: a connection with more unsent bytes than this (its ``buffered_amount``)
            plus the new frame is closed with ``slow_code`` instead.
        slow_code: 1013 (try again later: the client may reconnect and resume) or 1008.
    """
    if isinstance(message, str):
        payload: bytes = message.encode()
        opcode = Opcode.TEXT
    else:
        payload = bytes(message)
        opcode = Opcode.BINARY
    frame = serialize_header(True, False, opcode, len(payload), False) + payload
    size = len(frame)
    delivered = 0
    for ws in connections:
        protocol = ws.protocol
        if protocol.state is not State.OPEN or ws.transport is None:
            continue
        if protocol.side is Side.CLIENT:  # masked per frame: cannot share bytes
            try:
                protocol.send_text(payload) if opcode == Opcode.TEXT else protocol.send_binary(
                    payload)
            except InvalidState:
                continue
            ws._write(protocol.data_to_send())
            delivered += 1
            continue
        buffered = ws.transport.get_write_buffer_size()
        if buffered + size > max_buffered:
            _close_slow(ws, slow_code, buffered)
            continue
        try:
            protocol.send_frame(frame)
        except InvalidState:
            continue
        ws._write(protocol.data_to_send())
        delivered += 1
    return delivered


def _close_slow(ws: WebSocket, code: int, buffered: int) -> None:
    logger.info("event=slow remote=%s buffered=%dB code=%d", ws.remote_address, buffered, code)
    ws.protocol.send_close(code, f"too slow: {buffered} bytes unsent")
    ws._write(ws.protocol.data_to_send())
    ws._start_close_timer()
