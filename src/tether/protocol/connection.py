"""The sans-I/O WebSocket connection, RFC 6455 §5-§7 and RFC 7692 §6: bytes in, events and bytes out.

Two rules hold everywhere in this module:

1. Peer misbehaviour never escapes :meth:`Connection.receive_data`. It becomes a
   :class:`~tether.exceptions.ProtocolError` (or, for a bug, any exception) recorded on
   ``receive_error``; the connection is failed with the matching close code in exactly one place,
   :meth:`Connection._fail_receiving`.
2. After every ``receive_*``, ``send_*`` or ``fail`` call, the I/O layer flushes
   :meth:`Connection.data_to_send`; an empty ``bytes`` in it means "close the TCP connection".

Nothing here touches sockets, clocks, threads or asyncio.
"""

from __future__ import annotations

import codecs
import struct
from secrets import token_bytes
from enum import IntEnum
from typing import Any

from ..accel import apply_mask, frame, mask_inplace, new_payload, parse_messages, take_payload
from ..exceptions import (
    FrameError,
    InvalidState,
    InvalidUTF8,
    MessageTooBig,
    ProtocolError,
)
from .events import BinaryMessage, CloseFrame, Event, Ping, Pong, TextMessage
from .extensions.base import Extension
from .frames import (
    MAX_CONTROL_PAYLOAD,
    CloseCode,
    Opcode,
    parse_close,
    serialize_close,
    serialize_header,
    truncate_reason,
)

__all__ = ["Connection", "State", "Side", "DEFAULT_MAX_MESSAGE_SIZE"]

DEFAULT_MAX_MESSAGE_SIZE = 2**20

_UNPACK_H = struct.Struct("!H").unpack_from
_UNPACK_Q = struct.Struct("!Q").unpack_from
# A named tuple built without its generated Python __new__ (one frame less per close frame).
_new_tuple = tuple.__new__
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")

# Frames with payloads up to this size are written as one bytes object (header + payload);
# larger ones as two, so the payload is never copied just to prepend a header.
_JOIN_LIMIT = 4096
# Incomplete frames with larger payloads are received straight into their payload (see
# _LargeFrame); smaller ones wait in the receive buffer.
_LARGE_FRAME = 65536

# The parts of a message when none is in progress: shared, never appended to (a message in
# progress gets its own list).
_NO_PARTS: list[bytes] = []

_TEXT = Opcode.TEXT.value
_BINARY = Opcode.BINARY.value
_CONT = Opcode.CONT.value
_CLOSE = Opcode.CLOSE.value
_PING = Opcode.PING.value
_PONG = Opcode.PONG.value


class State(IntEnum):
    """The connection's state, with the browser's readyState values."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class Side(IntEnum):
    """Which end of the connection this is."""

    SERVER = 0
    CLIENT = 1


class Connection:
    """One WebSocket connection after the opening handshake.

    Args:
        side: SERVER expects masked frames and sends unmasked ones; CLIENT the reverse.
        state: OPEN, or CONNECTING for the handshake subclasses.
        max_message_size: the largest message accepted, after decompression, in bytes;
            ``None`` for no limit. Checked from each frame's header, before buffering.
        auto_close_reply: answer a close frame, or fail the connection on a protocol error, at
            once (the default). When false, the I/O layer does it later with
            :meth:`send_close`, after the application has seen the valid messages that arrived
            first: RFC 6455 §5.5.1 lets an endpoint delay its reply ("as soon as practical"),
            and an echo server then answers every message it got, as Autobahn's strict
            expectations want (cases 3.2, 5.15, ...). Further input is discarded meanwhile.

    Attributes:
        state: see :class:`State`.
        extension: the negotiated extension (permessage-deflate), or ``None``.
        close_rcvd: the close frame received, or ``None``.
        close_sent: the close frame sent, or ``None``.
        close_rcvd_then_sent: whether the peer started the closing handshake.
        receive_error: why the connection was failed while receiving, or ``None``.
        eof_received: whether the peer closed its side of the TCP connection.
        input_closed: whether no more messages will be received: a close frame arrived, the
            connection failed, or the TCP connection ended. Incoming bytes are then ignored.
        large_frame: set while a frame over 64 KiB is being received in place: the I/O layer
            may then read straight into :meth:`receive_buffer`.
    """

    __slots__ = (
        "side",
        "auto_close_reply",
        "state",
        "max_message_size",
        "extension",
        "close_rcvd",
        "close_sent",
        "close_rcvd_then_sent",
        "receive_error",
        "eof_received",
        "eof_sent",
        "_pending_failure",
        "_is_server",
        "_events",
        "_output",
        "_buffer",
        "large_frame",
        "input_closed",
        "_msg_opcode",
        "_msg_compressed",
        "_msg_parts",
        "_msg_wire_size",
        "_msg_size",
        "_decoder",
        "_probe",
        "_send_opcode",
    )

    def __init__(
        self,
        side: Side,
        *,
        state: State = State.OPEN,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        extension: Extension | None = None,
        auto_close_reply: bool = True,
    ) -> None:
        self.side = side
        self.auto_close_reply = auto_close_reply
        self.state = state
        self.max_message_size = max_message_size
        self.extension = extension
        self.close_rcvd: CloseFrame | None = None
        self.close_sent: CloseFrame | None = None
        self.close_rcvd_then_sent: bool | None = None
        self.receive_error: BaseException | None = None
        self.eof_received = False
        self.eof_sent = False
        self._pending_failure: tuple[int, str] | None = None

        self._is_server = side is Side.SERVER
        self._events: list[Event] = []
        self._output: list[bytes] = []
        self._buffer = bytearray()
        # The large frame being received in place (see receive_buffer), or None.
        self.large_frame: _LargeFrame | None = None
        self.input_closed = False  # a plain attribute: read on every recv() that waits
        # The message being received, if it has more than one frame or is compressed.
        self._msg_opcode = 0  # 0 when no message is in progress
        self._msg_compressed = False
        self._msg_parts: list[bytes] | list[str] = _NO_PARTS  # a list once a message starts
        self._msg_wire_size = 0  # bytes of payload on the wire so far
        self._msg_size = 0  # bytes of payload after decompression so far
        self._decoder: codecs.IncrementalDecoder | None = None
        # Fail-fast UTF-8 check of a text frame still arriving: (probe decoder, bytes checked).
        self._probe: tuple[codecs.IncrementalDecoder, int] | None = None
        # The message being sent in fragments: its opcode, or 0.
        self._send_opcode = 0

    # -- results ------------------------------------------------------------------------------

    def events_received(self) -> list[Event]:
        """The events parsed since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """The bytes to write since the last call; ``b""`` stands for "half-close (EOF)"."""
        output, self._output = self._output, []
        return output

    def close_expected(self) -> bool:
        """Whether the TCP connection is expected to close soon: our close frame is sent, or
        the connection was failed. The I/O layer starts its close timeout then."""
        return self.close_sent is not None or self.receive_error is not None

    # -- receiving ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the network."""
        if self.state is State.CONNECTING and self._receive_handshake(data):
            return
        if self.input_closed or not data:
            return
        large = self.large_frame
        if large is not None:
            # The rest of a large frame's payload: straight into it.
            filled = large.filled
            n = min(len(data), large.size - filled)
            large.view[filled : filled + n] = data if n == len(data) else memoryview(data)[:n]
            if not self._receive_large(large, n) or n == len(data):
                return
            data = data[n:]  # the frames after it
        buffer = self._buffer
        source: bytes | bytearray
        pos = 0
        if buffer:
            buffer += data
            source = buffer
        else:
            source = data
            if not self._msg_opcode:
                # The common read: whole messages in plain frames, and nothing else. One call
                # (C when built) takes them all; _parse takes any other frame, and any error.
                pos = parse_messages(data, 0, self._is_server, self.max_message_size,
                                     self._events, TextMessage, BinaryMessage)
                if pos == len(data):
                    return
        try:
            pos = self._parse(source, pos)
        except ProtocolError as exc:
            self._fail_receiving(exc)
            return
        except Exception as exc:  # a bug: fail with 1011 rather than crash the I/O layer
            self._fail_receiving(exc)
            return
        if source is buffer:
            del buffer[:pos]
        elif pos < len(data):
            buffer += memoryview(data)[pos:]

    def _receive_handshake(self, data: bytes) -> bool:
        """Bytes received before the connection is open: the subclasses parse the opening
        handshake here and return True. (A hook rather than an override of receive_data, so
        that every frame after the handshake costs no extra call.)"""
        return False

    def receive_eof(self) -> None:
        """The peer closed its side of the TCP connection."""
        if self.eof_received:
            return
        self.eof_received = True
        self.input_closed = True
        self.state = State.CLOSED
        if not self.eof_sent:
            # RFC 6455 §7.1.1: the TCP connection is closed; close our side too.
            self._send_eof()

    def _parse(self, buf: bytes | bytearray, pos: int) -> int:
        """Parse every complete frame in ``buf[pos:]``; return the position after the last."""
        end_of_data = len(buf)
        expect_mask = 0x80 if self._is_server else 0
        events = self._events
        limit = self.max_message_size
        while end_of_data - pos >= 2:
            if not self._msg_opcode:
                # Whole messages in single plain frames, the common case, in one call (C when
                # built); the code below takes every other frame, and any error.
                start = parse_messages(buf, pos, self._is_server, limit, events, TextMessage,
                                       BinaryMessage)
                if start != pos:
                    pos = start
                    self._probe = None  # a frame it was checking is complete
                    if end_of_data - pos < 2:
                        break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if end_of_data - pos < 4:
                    return pos
                length = _UNPACK_H(buf, start)[0]
                start += 2
                if length < 126:
                    # RFC 6455 §5.2: "the minimal number of bytes MUST be used".
                    raise FrameError(f"{length}-byte payload length encoded in 16 bits")
            elif length == 127:
                if end_of_data - pos < 10:
                    return pos
                length = _UNPACK_Q(buf, start)[0]
                start += 8
                if length >> 63:
                    # §5.2: "the most significant bit MUST be 0".
                    raise FrameError("payload length with the most significant bit set")
                if length < 0x10000:
                    raise FrameError(f"{length}-byte payload length encoded in 64 bits")
            if (b1 & 0x80) != expect_mask:
                # §5.1: a server MUST close on an unmasked frame; a client on a masked one.
                raise FrameError("unmasked frame" if expect_mask else "masked frame")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            rsv1 = self._check_header(b0, opcode, fin, length)
            if expect_mask:
                start += 4
            end = start + length
            if end > end_of_data:
                if length > _LARGE_FRAME and start <= end_of_data:
                    # A frame arriving in dozens of reads: receive it in place, not by parsing
                    # a growing buffer again at each read.
                    self._start_large(buf, opcode, fin, rsv1, start, end, end_of_data)
                    return end_of_data
                if opcode != _BINARY and not rsv1 and length > 0:
                    self._check_partial_text(buf, opcode, start, end_of_data)
                return pos
            if self._probe is not None:
                self._probe = None  # the frame it checked is complete
            if expect_mask:
                payload = apply_mask(memoryview(buf)[start:end], buf[start - 4 : start])
            elif type(buf) is bytes:
                payload = buf[start:end]
            else:
                payload = bytes(memoryview(buf)[start:end])
            pos = end
            if opcode <= _BINARY:
                self._receive_data_frame(opcode, fin, rsv1, payload)
            elif opcode == _PING:
                self._events.append(Ping(payload))
                if self.close_sent is None:
                    # §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame
                    # in response ... with identical Application data".
                    self._write_frame(True, False, _PONG, payload)
            elif opcode == _PONG:
                self._events.append(Pong(payload))
            else:
                self._receive_close(payload)
                return end_of_data
        return pos

    def _check_header(self, b0: int, opcode: int, fin: int, length: int) -> int:
        """Validate a frame header against the connection's state; return RSV1.

        Runs before the payload is buffered, so limits apply from the header alone.
        """
        rsv = b0 & 0x70
        if rsv and (rsv != 0x40 or self.extension is None or opcode == _CONT or opcode > 7):
            # §5.2: RSV1-3 "MUST be 0 unless an extension is negotiated that defines meanings";
            # RFC 7692 §6.1: RSV1 only on the first frame of a data message.
            raise FrameError(f"reserved bits set ({rsv >> 4:03b}) on opcode {opcode}")
        if opcode == _CONT:
            if not self._msg_opcode:
                raise FrameError("continuation frame without a message to continue")
        elif opcode <= _BINARY:
            if self._msg_opcode:
                raise FrameError("new data frame before the previous message ended")
        elif opcode >= _CLOSE and opcode <= _PONG:
            # §5.5: "All control frames MUST have a payload length of 125 bytes or less and
            # MUST NOT be fragmented."
            if not fin:
                raise FrameError("fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameError(f"control frame with {length}-byte payload exceeds 125 bytes")
            return 0
        else:
            raise FrameError(f"reserved opcode {opcode}")
        limit = self.max_message_size
        if limit is not None:
            if rsv or (opcode == _CONT and self._msg_compressed):
                # Compressed frames are inflated as they arrive, so only one is ever buffered:
                # bound each frame (a frame may be slightly larger than what it inflates to;
                # zlib's deflateBound gives the slack) and the inflated size (in decode).
                if length > limit + (limit >> 11) + 64:
                    raise MessageTooBig(
                        f"compressed frame of {length} bytes exceeds limit of {limit} bytes"
                    )
            else:
                so_far = self._msg_wire_size if opcode == _CONT else 0
                if so_far + length > limit:
                    raise MessageTooBig(
                        f"message of at least {so_far + length} bytes exceeds limit of "
                        f"{limit} bytes"
                    )
        return rsv

    def _check_partial_text(
        self, buf: bytes | bytearray, opcode: int, start: int, end_of_data: int
    ) -> None:
        """Fail fast on invalid UTF-8 in the part of a text frame received so far.

        Autobahn 6.4.*: a receiver should fail on the first invalid byte, not when the frame
        ends. A probe decoder, started from a copy of the message decoder's state, checks each
        newly arrived byte once; the complete frame is then processed exactly as if it had
        arrived at once.
        """
        if self._probe is None:
            if opcode == _CONT:
                if self._msg_opcode != _TEXT or self._msg_compressed:
                    return
                state = self._decoder.getstate() if self._decoder is not None else (b"", 0)
            elif opcode == _TEXT:
                state = (b"", 0)
            else:
                return
            probe: codecs.IncrementalDecoder = _Utf8Decoder()
            probe.setstate(state)
            checked = 0
        else:
            probe, checked = self._probe
        first = start + checked
        if first >= end_of_data:
            return
        if self._is_server:
            mask = buf[start - 4 : start]
            if checked & 3:  # keep the mask aligned with the payload offset
                mask = mask[checked & 3 :] + mask[: checked & 3]
            chunk = apply_mask(memoryview(buf)[first:end_of_data], mask)
        else:
            chunk = bytes(memoryview(buf)[first:end_of_data])
        try:
            probe.decode(chunk, False)
        except UnicodeDecodeError:
            raise InvalidUTF8("invalid UTF-8 in text message") from None
        self._probe = (probe, end_of_data - start)

    def _start_large(
        self,
        buf: bytes | bytearray,
        opcode: int,
        fin: int,
        rsv1: int,
        start: int,
        end: int,
        end_of_data: int,
    ) -> None:
        """Start receiving a large data frame in place; its header is valid and within limits."""
        size = end - start
        try:
            payload = new_payload(size)
        except MemoryError:
            raise MessageTooBig(f"cannot reserve {size} bytes for a frame's payload") from None
        large = _LargeFrame(opcode, fin, rsv1, payload)
        if self._is_server:
            large.mask = bytes(buf[start - 4 : start])
        if not rsv1:
            # Uncompressed text fails on its first invalid byte (see _check_partial_text).
            if opcode == _TEXT:
                large.probe = _Utf8Decoder()
            elif opcode == _CONT and self._msg_opcode == _TEXT and not self._msg_compressed:
                large.probe = _Utf8Decoder()
                if self._decoder is not None:
                    large.probe.setstate(self._decoder.getstate())
        self._probe = None
        self.large_frame = large
        n = end_of_data - start
        if n:
            large.view[:n] = memoryview(buf)[start:end_of_data]
            self._receive_large(large, n, raising=True)

    def receive_buffer(self) -> memoryview | None:
        """Where the next bytes from the network may be written directly, or ``None``.

        While a large frame (over 64 KiB of payload) is arriving, this is the rest of its
        payload, and an I/O layer that can read into a buffer (``asyncio.BufferedProtocol``,
        ``socket.recv_into``) reads there and calls :meth:`receive_into`: the payload is then
        received without any copy. Reads never go past the frame, so what follows arrives through
        :meth:`receive_data` as usual. The view is only valid until the next ``receive_*`` call.
        """
        large = self.large_frame
        if large is None or self.input_closed:
            return None
        return large.view[large.filled :]

    def receive_into(self, nbytes: int) -> None:
        """``nbytes`` bytes were written at the start of the last :meth:`receive_buffer`."""
        large = self.large_frame
        if large is None or self.input_closed:
            return
        if not 0 <= nbytes <= large.size - large.filled:
            raise ValueError(f"{nbytes} bytes do not fit the receive buffer")
        if nbytes:
            self._receive_large(large, nbytes)

    def _receive_large(self, large: _LargeFrame, n: int, raising: bool = False) -> bool:
        """Take ``n`` more bytes of a large frame's payload, written in place; process the frame
        once it is whole. Return whether it is (and the connection has not failed)."""
        start = large.filled
        end = large.filled = start + n
        try:
            if large.mask is not None:
                mask_inplace(large.view, start, end, large.mask)
            if large.probe is not None:
                try:
                    large.probe.decode(large.view[start:end], False)
                except UnicodeDecodeError:
                    raise InvalidUTF8("invalid UTF-8 in text message") from None
            if end < large.size:
                return False
            self.large_frame = None
            large.view.release()
            payload = take_payload(large.payload)
            self._receive_data_frame(large.opcode, large.fin, large.rsv1, payload)
        except Exception as exc:
            self.large_frame = None
            if raising:
                raise  # inside _parse, which fails the connection
            self._fail_receiving(exc)
            return False
        return True

    def _receive_data_frame(self, opcode: int, fin: int, rsv1: int, payload: bytes) -> None:
        if opcode:
            if fin and not rsv1:
                # The common case: a whole message in one uncompressed frame.
                if opcode == _TEXT:
                    try:
                        self._events.append(TextMessage(payload.decode()))
                    except UnicodeDecodeError:
                        raise InvalidUTF8("invalid UTF-8 in text message") from None
                else:
                    self._events.append(BinaryMessage(payload))
                return
            self._msg_opcode = opcode
            self._msg_compressed = bool(rsv1)
            self._msg_parts = []
            self._msg_wire_size = 0
            self._msg_size = 0
            if opcode == _TEXT:
                if self._decoder is None:
                    self._decoder = _Utf8Decoder()
                else:
                    self._decoder.reset()
        self._msg_wire_size += len(payload)
        if self._msg_compressed:
            assert self.extension is not None
            limit = self.max_message_size
            remaining = None if limit is None else limit - self._msg_size
            payload = self.extension.decode(payload, bool(fin), remaining)
        self._msg_size += len(payload)
        if self._msg_opcode == _TEXT:
            assert self._decoder is not None
            try:
                text = self._decoder.decode(payload, bool(fin))
            except UnicodeDecodeError:
                raise InvalidUTF8("invalid UTF-8 in text message") from None
            if text:  # empty fragments cost nothing to keep: never keep them
                self._msg_parts.append(text)  # type: ignore[arg-type]
            if fin:
                self._events.append(TextMessage("".join(self._msg_parts)))  # type: ignore[arg-type]
        else:
            if payload:
                self._msg_parts.append(payload)  # type: ignore[arg-type]
            if fin:
                self._events.append(BinaryMessage(b"".join(self._msg_parts)))  # type: ignore[arg-type]
        if fin:
            self._msg_opcode = 0
            self._msg_parts = _NO_PARTS

    def _receive_close(self, payload: bytes) -> None:
        code, reason = parse_close(payload)
        self.close_rcvd = frame = _new_tuple(CloseFrame, (code, reason))
        self._events.append(frame)
        self.input_closed = True
        self.state = State.CLOSING
        if self.close_sent is None:
            if self.auto_close_reply:
                self._reply_close()
        elif self._is_server:
            # §7.1.1: "the server SHOULD close the underlying TCP connection first".
            self._send_eof()

    def _reply_close(self) -> None:
        # §5.5.1: "If an endpoint receives a Close frame and did not previously send a Close
        # frame, the endpoint MUST send a Close frame in response ... typically echos the
        # status code it received."
        assert self.close_rcvd is not None
        self.close_rcvd_then_sent = True
        self._send_close_frame(self.close_rcvd.code, "")
        if self._is_server:
            self._send_eof()

    def _fail_receiving(self, exc: BaseException) -> None:
        """The one place where a receive-side error becomes a close code."""
        self.receive_error = exc
        if isinstance(exc, ProtocolError):
            code, reason = exc.close_code, truncate_reason(str(exc)).decode()
        else:
            code, reason = CloseCode.INTERNAL_ERROR, "internal error"
        if self.auto_close_reply or self.close_sent is not None or self.state is not State.OPEN:
            self.fail(code, reason)
        else:
            self.input_closed = True
            self.state = State.CLOSING
            self._pending_failure = (code, reason)

    # -- sending ------------------------------------------------------------------------------

    def send_text(self, data: bytes, fin: bool = True) -> None:
        """Send a text message (UTF-8 ``data``), or its first fragment if ``fin`` is false.

        Raises:
            InvalidState: the connection is not open, or a fragmented message is in progress.
        """
        self._send_data(_TEXT, data, fin)

    def send_binary(self, data: bytes | bytearray | memoryview, fin: bool = True) -> None:
        """Send a binary message, or its first fragment if ``fin`` is false."""
        self._send_data(_BINARY, data, fin)

    def send_continuation(self, data: bytes | bytearray | memoryview, fin: bool) -> None:
        """Send the next fragment of the message in progress.

        Raises:
            InvalidState: no fragmented message is in progress.
        """
        if not self._send_opcode:
            raise InvalidState("no fragmented message in progress")
        self._check_open()
        self._write_frame(fin, False, _CONT, data)
        if fin:
            self._send_opcode = 0

    def _send_data(self, opcode: int, data: bytes | bytearray | memoryview, fin: bool) -> None:
        if self.close_sent is not None or self.eof_sent or self.state is State.CONNECTING:
            self._check_open()  # raises
        if self._send_opcode:
            raise InvalidState("a fragmented message is in progress; send its continuation")
        rsv1 = False
        if fin:
            if self.extension is not None:
                # Fragmented messages go uncompressed: simpler, and RFC 7692 §6 allows it.
                encoded = self.extension.encode(bytes(data))
                if encoded is not None:
                    data, rsv1 = encoded, True
            elif self._is_server and len(data) <= _JOIN_LIMIT:
                # The common case in one step: a small uncompressed message from a server.
                self._output.append(frame(0x80 | opcode, data))
                return
        else:
            self._send_opcode = opcode
        self._write_frame(fin, rsv1, opcode, data)

    def frame_message(self, opcode: int, data: bytes) -> bytes | None:
        """The frame of a whole small message (text: UTF-8 ``data``), returned for the I/O
        layer to write itself, as :meth:`send_text` / :meth:`send_binary` would queue it; or
        ``None`` when that general path is needed: a client (frames are masked), compression,
        a payload over 4 KiB, a fragmented message in progress, output not yet collected, or
        a connection that cannot send (where the general path raises).

        The hot path of a server's replies and pushes: one call instead of four.
        """
        if (
            self._is_server
            and self.extension is None
            and self.state is State.OPEN
            and self.close_sent is None
            and not self._send_opcode
            and not self._output
            and len(data) <= _JOIN_LIMIT
        ):
            return frame(0x80 | opcode, data)
        return None

    def send_frame(self, frame: bytes) -> None:
        """Send a complete frame serialized elsewhere: how a broadcast writes the same bytes
        to many connections. Only for servers (client frames are masked per connection). The
        bytes must be whole unmasked data messages: without RSV bits (valid with or without
        permessage-deflate, RFC 7692 §6), or with RSV1 and a payload compressed as this
        connection's permessage-deflate expects (see tether.hub.fanout, which shares frames
        among connections without context takeover).

        Raises:
            InvalidState: the connection cannot send, or a fragmented message is in progress.
        """
        if not self._is_server:
            raise InvalidState("only a server can send pre-framed messages")
        self._check_open()
        if self._send_opcode:
            raise InvalidState("a fragmented message is in progress; send its continuation")
        self._output.append(frame)

    def send_ping(self, data: bytes = b"") -> None:
        """Send a ping; ``data`` is at most 125 bytes.

        Raises:
            InvalidState: the connection is closing or closed.
            ValueError: ``data`` is too long.
        """
        self._check_control(data)
        self._write_frame(True, False, _PING, data)

    def send_pong(self, data: bytes = b"") -> None:
        """Send an unsolicited pong (a unidirectional heartbeat, §5.5.3)."""
        self._check_control(data)
        self._write_frame(True, False, _PONG, data)

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake, §7.1.2, or answer the peer's close frame (echoing its
        code) if one was received. Does nothing if a close frame was already sent.

        Raises:
            ValueError: the code is not valid on the wire, or the reason passes 123 bytes.
            InvalidState: the handshake is not complete.
        """
        if self.state is State.CONNECTING:
            raise InvalidState("cannot close a connection before the handshake completes")
        if self.close_sent is not None or self.eof_sent:
            return
        if self._pending_failure is not None:
            self.fail(*self._pending_failure)
            return
        if self.close_rcvd is not None:
            self._reply_close()
            return
        self._send_close_frame(code, reason)
        self.close_rcvd_then_sent = False

    def close_reply_pending(self) -> bool:
        """Whether a close frame was received, or a protocol error found, and the close frame
        that answers it is not sent yet (see ``auto_close_reply``)."""
        return (
            self.close_rcvd is not None or self._pending_failure is not None
        ) and self.close_sent is None and not self.eof_sent

    def fail(self, code: int = CloseCode.PROTOCOL_ERROR, reason: str = "") -> None:
        """Fail the WebSocket connection, §7.1.7: send a close frame if none was sent, stop
        reading, and close the TCP connection."""
        if self.state in (State.OPEN, State.CLOSING) and self.close_sent is None:
            self._send_close_frame(code, reason)
            self.close_rcvd_then_sent = False
        self.input_closed = True
        if self.state is not State.CLOSED:
            self.state = State.CLOSING
        self._send_eof()

    def _check_open(self) -> None:
        # Sending stays possible after a close frame is received until ours is sent (see
        # auto_close_reply); §5.5.1 only forbids data frames after *sending* a close frame.
        if self.state is State.CONNECTING or self.close_sent is not None or self.eof_sent:
            raise InvalidState(f"cannot send: connection is {self.state.name}")

    def _check_control(self, data: bytes) -> None:
        self._check_open()
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"control frame payload of {len(data)} bytes exceeds 125 bytes")

    def _send_close_frame(self, code: int, reason: str) -> None:
        payload = serialize_close(code, reason)
        self.close_sent = _new_tuple(CloseFrame, (code, reason))
        self._write_frame(True, False, _CLOSE, payload)
        self.state = State.CLOSING

    def _send_eof(self) -> None:
        if not self.eof_sent:
            self.eof_sent = True
            self._output.append(b"")

    def _write_frame(
        self, fin: bool, rsv1: bool, opcode: int, payload: bytes | bytearray | memoryview
    ) -> None:
        if self.eof_sent:
            return
        length = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
        if self._is_server:
            if length <= _JOIN_LIMIT:
                self._output.append(
                    frame((0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode, payload))
            else:
                header = serialize_header(fin, rsv1, opcode, length, False)
                self._output.append(header)
                self._output.append(payload)  # type: ignore[arg-type]
        else:
            # §5.3: the client masks every frame with a fresh key from a strong source.
            mask = token_bytes(4)
            header = serialize_header(fin, rsv1, opcode, length, True)
            if length <= _JOIN_LIMIT:
                self._output.append(header + mask + apply_mask(payload, mask))
            else:  # the masked copy is the only one: not joined to its header
                self._output.append(header + mask)
                self._output.append(apply_mask(payload, mask))


class _LargeFrame:
    """A data frame too large to wait in the receive buffer, received in place: its payload is
    a buffer of the frame's size (:func:`tether.accel.new_payload`), unmasked and checked as
    each read lands in it, and taken as ``bytes`` once whole."""

    __slots__ = ("opcode", "fin", "rsv1", "payload", "view", "size", "filled", "mask", "probe")

    def __init__(self, opcode: int, fin: int, rsv1: int, payload: Any) -> None:
        self.opcode = opcode
        self.fin = fin
        self.rsv1 = rsv1
        self.payload = payload
        self.view = memoryview(payload)
        self.size = len(self.view)
        self.filled = 0
        self.mask: bytes | None = None
        self.probe: codecs.IncrementalDecoder | None = None
