"""Helpers for the sans-I/O protocol tests: build frames and requests by hand, decode what a
connection wrote, and wire a client and a server back-to-back.

Everything here is bytes in, bytes out: no event loop, no sockets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import pytest

from tether.accel._python import apply_mask
from tether.protocol.client import ClientProtocol, parse_uri
from tether.protocol.connection import Connection, Side, State
from tether.protocol.events import Event
from tether.protocol.server import ServerProtocol

# RFC 6455 §5.7's example masking key.
KEY = b"\x37\xfa\x21\x3d"

# RFC 6455 §1.3 / §4.2.2: the sample nonce and the matching Sec-WebSocket-Accept.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bytes | None = None,
    length: int | None = None,
    length_bits: int | None = None,
) -> bytes:
    """One frame as raw bytes, RFC 6455 §5.2, with every field under the test's control.

    Args:
        mask: the masking key, or ``None`` for an unmasked frame.
        length: the payload length to declare (default: the real one).
        length_bits: force a 7, 16 or 64-bit length encoding (default: the minimal one).
    """
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0)
    b0 |= (0x10 if rsv3 else 0) | opcode
    n = len(payload) if length is None else length
    if length_bits is None:
        length_bits = 7 if n < 126 else 16 if n < 0x10000 else 64
    mask_bit = 0x80 if mask is not None else 0
    if length_bits == 7:
        header = bytes((b0, mask_bit | n))
    elif length_bits == 16:
        header = bytes((b0, mask_bit | 126)) + struct.pack("!H", n)
    else:
        header = bytes((b0, mask_bit | 127)) + struct.pack("!Q", n)
    if mask is None:
        return header + payload
    return header + mask + apply_mask(payload, mask)


def client_frame(opcode: int, payload: bytes = b"", **kwargs: Any) -> bytes:
    """A frame as a client sends it (masked): what a server receives."""
    kwargs.setdefault("mask", KEY)
    return frame(opcode, payload, **kwargs)


def server_frame(opcode: int, payload: bytes = b"", **kwargs: Any) -> bytes:
    """A frame as a server sends it (unmasked): what a client receives."""
    return frame(opcode, payload, **kwargs)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class Parsed(NamedTuple):
    """A frame decoded from a connection's output."""

    fin: bool
    rsv: int  # the three RSV bits, RSV1 = 4
    opcode: int
    payload: bytes  # unmasked
    mask: bytes | None


def parse_frames(data: bytes) -> list[Parsed]:
    """Decode a byte stream of complete frames; fail the test on a truncated one."""
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        mask = None
        if b1 & 0x80:
            mask = bytes(data[pos : pos + 4])
            pos += 4
        payload = bytes(data[pos : pos + n])
        assert len(payload) == n, "truncated frame in output"
        pos += n
        if mask is not None:
            payload = apply_mask(payload, mask)
        frames.append(Parsed(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload, mask))
    return frames


def output(conn: Connection) -> tuple[list[Parsed], bool]:
    """Drain ``conn.data_to_send()``: the frames written, and whether EOF (b"") was written.

    Fails the test if anything follows the EOF marker.
    """
    chunks = conn.data_to_send()
    if b"" in chunks:
        eof_at = chunks.index(b"")
        assert all(not c for c in chunks[eof_at:]), "data written after EOF"
        return parse_frames(b"".join(chunks[:eof_at])), True
    return parse_frames(b"".join(chunks)), False


def close_frame_sent(conn: Connection) -> tuple[int | None, bytes]:
    """The (code, reason bytes) of the single close frame in ``conn``'s output."""
    frames, _ = output(conn)
    closes = [f for f in frames if f.opcode == CLOSE]
    assert len(closes) == 1, frames
    payload = closes[0].payload
    if not payload:
        return None, b""
    return struct.unpack("!H", payload[:2])[0], payload[2:]


def transfer(src: Connection, dst: Connection) -> list[bytes]:
    """Feed everything ``src`` wrote into ``dst``; b"" becomes ``receive_eof()``."""
    chunks = src.data_to_send()
    for chunk in chunks:
        if chunk:
            dst.receive_data(chunk)
        else:
            dst.receive_eof()
    return chunks


def feed(conn: Connection, data: bytes, sizes: Iterable[int] | None = None) -> list[Event]:
    """Feed ``data`` at once, or in pieces of the given sizes; return the events."""
    if sizes is None:
        conn.receive_data(data)
    else:
        pos = 0
        for size in sizes:
            conn.receive_data(data[pos : pos + size])
            pos += size
        conn.receive_data(data[pos:])
    return conn.events_received()


def request_bytes(
    *,
    method: str = "GET",
    target: str = "/chat",
    version: str = "1.1",
    drop: Sequence[str] = (),
    replace: dict[str, str] | None = None,
    add: Sequence[tuple[str, str]] = (),
) -> bytes:
    """RFC 6455 §1.2's sample upgrade request, with headers dropped, replaced or added."""
    headers = [
        ("Host", "server.example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", SAMPLE_KEY),
        ("Origin", "http://example.com"),
        ("Sec-WebSocket-Version", "13"),
    ]
    replace = replace or {}
    lines = [f"{method} {target} HTTP/{version}"]
    for name, value in headers:
        if name in drop:
            continue
        lines.append(f"{name}: {replace.get(name, value)}")
    lines.extend(f"{name}: {value}" for name, value in add)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def server_handshake(server: ServerProtocol, data: bytes) -> list[bytes]:
    """Feed an upgrade request to ``server``, accept it, and return what the server wrote."""
    server.receive_data(data)
    events = server.events_received()
    assert len(events) == 1, events
    server.send_response(server.accept(events[0]))  # type: ignore[arg-type]
    return server.data_to_send()


def handshake(
    server_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
    uri: str = "ws://example.com/chat",
) -> tuple[ClientProtocol, ServerProtocol]:
    """A client and a server, back-to-back, through the opening handshake; both OPEN."""
    client = ClientProtocol(parse_uri(uri), **(client_options or {}))
    server = ServerProtocol(**(server_options or {}))
    client.send_request(client.connect())
    transfer(client, server)
    [request] = server.events_received()
    server.send_response(server.accept(request))  # type: ignore[arg-type]
    transfer(server, client)
    [response] = client.events_received()
    assert server.state is State.OPEN, server.handshake_error
    assert client.state is State.OPEN, client.handshake_error
    assert response.status == 101  # type: ignore[union-attr]
    return client, server


@pytest.fixture
def server() -> Connection:
    """An OPEN server-side connection, no extension."""
    return Connection(Side.SERVER)


@pytest.fixture
def client() -> Connection:
    """An OPEN client-side connection, no extension."""
    return Connection(Side.CLIENT)


def assert_events(actual: Sequence[Event], expected: Sequence[Event]) -> None:
    """Compare events by type and value: ``Ping(b"x") == Pong(b"x")`` as plain tuples."""
    assert [(type(e).__name__, e) for e in actual] == [(type(e).__name__, e) for e in expected]


def assert_failed(
    conn: Connection, code: int, error: type[BaseException] | None = None
) -> list[Parsed]:
    """``conn`` failed while receiving: ``receive_error`` is set (of type ``error``), its last
    frame out is a close frame with ``code``, then EOF; no more input is read.

    Returns the frames written before the close frame.
    """
    from tether.exceptions import ProtocolError

    exc = conn.receive_error
    assert exc is not None, "connection did not fail"
    assert isinstance(exc, error or ProtocolError), repr(exc)
    if isinstance(exc, ProtocolError):
        assert exc.close_code == code
    frames, eof = output(conn)
    assert frames and frames[-1].opcode == CLOSE, frames
    assert struct.unpack("!H", frames[-1].payload[:2])[0] == code
    assert frames[-1].payload[2:].decode()  # a reason is always given
    assert eof
    assert conn.input_closed
    assert conn.close_expected()
    assert conn.close_sent is not None and conn.close_sent.code == code
    return frames[:-1]


def assert_not_failed(conn: Connection) -> None:
    assert conn.receive_error is None, repr(conn.receive_error)
    assert not conn.input_closed
