"""Fuzzing the parsers: random and mutated bytes into connections and handshake parsers.

The only allowed outcomes are events, or a connection failed with a documented
:class:`~tether.exceptions.ProtocolError` (1002, 1007, 1009) or, during the handshake, a
:class:`~tether.exceptions.HandshakeError`. Anything else escaping ``receive_data`` or recorded
on ``receive_error`` is a bug (the core would answer it with 1011).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.exceptions import HandshakeError, ProtocolError
from tether.protocol.client import ClientProtocol, parse_uri
from tether.protocol.connection import Connection, Side, State
from tether.protocol.events import BinaryMessage, CloseFrame, Ping, Pong, TextMessage
from tether.protocol.extensions.permessage_deflate import PerMessageDeflate
from tether.protocol.http11 import Request, Response
from tether.protocol.server import ServerProtocol

from ..protocol.conftest import (
    BINARY,
    CLOSE,
    CONT,
    KEY,
    PING,
    PONG,
    TEXT,
    frame,
    parse_frames,
    request_bytes,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ALLOWED_CLOSE_CODES = {1002, 1007, 1009}

_options = st.fixed_dictionaries(
    {
        "deflate": st.booleans(),
        "auto_close_reply": st.booleans(),
        "max_message_size": st.sampled_from([None, 64, 1000, 2**20]),
    }
)


def _connection(side: Side, options: dict) -> Connection:
    extension = PerMessageDeflate(False, False, 15, 15) if options["deflate"] else None
    return Connection(
        side,
        extension=extension,
        auto_close_reply=options["auto_close_reply"],
        max_message_size=options["max_message_size"],
    )


def _feed_and_check(conn: Connection, chunks: list[bytes]) -> None:
    """Feed ``chunks`` and check every invariant of the receive side."""
    events = []
    output = []
    for chunk in chunks:
        conn.receive_data(chunk)  # must never raise
        events += conn.events_received()
        output += conn.data_to_send()
    for event in events:
        assert type(event) in (TextMessage, BinaryMessage, Ping, Pong, CloseFrame), event
        if isinstance(event, TextMessage):
            assert isinstance(event.data, str)
        elif isinstance(event, CloseFrame):
            assert event.code == 1005 or 1000 <= event.code <= 4999
        else:
            assert isinstance(event.data, bytes)
    closes = [e for e in events if isinstance(e, CloseFrame)]
    assert len(closes) <= 1 and (not closes or events[-1] is closes[0])

    error = conn.receive_error
    if error is not None:
        # Never an unexpected exception type: that would be a bug, answered with 1011.
        assert isinstance(error, ProtocolError), repr(error)
        assert error.close_code in ALLOWED_CLOSE_CODES
        assert conn.input_closed
        if conn.close_reply_pending():
            conn.send_close()  # auto_close_reply=False: the I/O layer answers later
            output += conn.data_to_send()
        assert output and output[-1] == b"", "a failed connection closes TCP"
    # What the connection wrote is well-formed: masked by a client, unmasked by a server.
    frames = parse_frames(b"".join(output))
    for f in frames:
        assert (f.mask is not None) == (conn.side is Side.CLIENT)
        assert f.opcode in (TEXT, BINARY, CONT, CLOSE, PING, PONG)
    if error is not None:
        assert frames[-1].opcode == CLOSE
        assert struct.unpack("!H", frames[-1].payload[:2])[0] == error.close_code
    # Once input is closed, nothing more is read.
    if conn.input_closed:
        conn.receive_data(b"\x81\x80" + KEY + b"\x81\x00")
        assert conn.events_received() == []


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@st.composite
def _valid_stream(draw: st.DrawFn, masked: bool) -> bytes:
    """A valid stream of frames: messages, fragments, control frames, maybe a close."""
    mask = KEY if masked else None
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["text", "binary", "fragmented", "ping", "pong", "compressed"]))
        if kind == "text":
            parts.append(frame(TEXT, draw(st.text(max_size=50)).encode(), mask=mask))
        elif kind == "binary":
            parts.append(frame(BINARY, draw(st.binary(max_size=300)), mask=mask))
        elif kind in ("ping", "pong"):
            parts.append(frame(PING if kind == "ping" else PONG, draw(st.binary(max_size=125)), mask=mask))
        elif kind == "compressed":
            payload = PerMessageDeflate(False, False, 15, 15).encode(draw(st.binary(max_size=100)))
            parts.append(frame(BINARY, payload or b"", rsv1=True, mask=mask))
        else:
            data = draw(st.text(max_size=60)).encode()
            half = len(data) // 2
            parts.append(frame(TEXT, data[:half], fin=False, mask=mask))
            parts.append(frame(PING, b"", mask=mask))
            parts.append(frame(CONT, data[half:], mask=mask))
    if draw(st.booleans()):
        parts.append(frame(CLOSE, struct.pack("!H", 1000) + b"bye", mask=mask))
    return b"".join(parts)


@st.composite
def _mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few bytes flipped, replaced, inserted or deleted, or truncated."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "replace", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "replace" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


_cuts = st.lists(st.integers(0, 10**6), max_size=10)


class TestFrameParser:
    """Connection.receive_data on random, valid and mutated frame streams."""

    @FUZZ
    @given(data=st.binary(max_size=500), options=_options, cuts=_cuts)
    def test_random_bytes_server(self, data: bytes, options: dict, cuts: list[int]) -> None:
        _feed_and_check(_connection(Side.SERVER, options), _split(data, cuts))

    @FUZZ
    @given(data=st.binary(max_size=500), options=_options, cuts=_cuts)
    def test_random_bytes_client(self, data: bytes, options: dict, cuts: list[int]) -> None:
        _feed_and_check(_connection(Side.CLIENT, options), _split(data, cuts))

    @FUZZ
    @given(data=_mutated(_valid_stream(masked=True)), options=_options, cuts=_cuts)
    def test_mutated_stream_server(self, data: bytes, options: dict, cuts: list[int]) -> None:
        _feed_and_check(_connection(Side.SERVER, options), _split(data, cuts))

    @FUZZ
    @given(data=_mutated(_valid_stream(masked=False)), options=_options, cuts=_cuts)
    def test_mutated_stream_client(self, data: bytes, options: dict, cuts: list[int]) -> None:
        _feed_and_check(_connection(Side.CLIENT, options), _split(data, cuts))

    @settings(max_examples=100, deadline=None)
    @given(data=_valid_stream(masked=True), options=_options)
    def test_valid_stream_never_fails(self, data: bytes, options: dict) -> None:
        options = {**options, "deflate": True, "max_message_size": None}
        conn = _connection(Side.SERVER, options)
        _feed_and_check(conn, [data])
        assert conn.receive_error is None

    @FUZZ
    @given(
        header=st.binary(min_size=2, max_size=14),
        payload=st.binary(max_size=200),
        options=_options,
    )
    def test_random_headers(self, header: bytes, payload: bytes, options: dict) -> None:
        # Random header bits with a plausible payload: exercises every header check.
        for side in (Side.SERVER, Side.CLIENT):
            _feed_and_check(_connection(side, options), [header + payload])


def _check_server_handshake(server: ServerProtocol, chunks: list[bytes]) -> None:
    for chunk in chunks:
        server.receive_data(chunk)  # must never raise
    events = server.events_received()
    if server.handshake_error is not None:
        assert isinstance(server.handshake_error, HandshakeError)
        assert server.handshake_error.status_hint in (400, 414, 431)
        assert events == []
        out = server.data_to_send()
        assert out[-1] == b""
        assert out[0].startswith(b"HTTP/1.1 4")
        assert server.state is State.CLOSED
        return
    if not events:
        assert server.state is State.CONNECTING
        return
    [request] = events
    assert isinstance(request, Request)
    response = server.accept(request)  # must never raise for a parsed request
    assert response.status in (101, 400, 426)
    server.send_response(response)
    out = server.data_to_send()
    assert out[0].startswith(f"HTTP/1.1 {response.status} ".encode())
    if response.status == 101:
        # Bytes after the request are frames: garbage there fails the new connection.
        error = server.receive_error
        assert error is None or isinstance(error, ProtocolError), repr(error)
        assert server.state is (State.OPEN if error is None else State.CLOSING)
    else:
        assert server.state is State.CLOSED and out[-1] == b""


_request_headers = st.lists(
    st.tuples(
        st.sampled_from(
            ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
             "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Origin", "X-Other"]
        ),
        st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
            max_size=40,
        ),
    ),
    max_size=10,
)


class TestHandshakeParsers:
    """ServerProtocol and ClientProtocol during the opening handshake."""

    @FUZZ
    @given(data=st.binary(max_size=400), cuts=_cuts)
    def test_random_bytes_server(self, data: bytes, cuts: list[int]) -> None:
        _check_server_handshake(ServerProtocol(subprotocols=["chat"]), _split(data, cuts))

    @FUZZ
    @given(data=_mutated(st.just(request_bytes(add=[
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("Sec-WebSocket-Protocol", "chat, superchat"),
    ]))), cuts=_cuts)
    def test_mutated_request(self, data: bytes, cuts: list[int]) -> None:
        _check_server_handshake(ServerProtocol(subprotocols=["chat"]), _split(data, cuts))

    @FUZZ
    @given(headers=_request_headers, method=st.sampled_from(["GET", "POST", "HEAD"]),
           version=st.sampled_from(["1.0", "1.1"]))
    def test_random_header_values(self, headers: list[tuple[str, str]], method: str,
                                  version: str) -> None:
        lines = [f"{method} /chat HTTP/{version}"] + [f"{k}: {v}" for k, v in headers]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        _check_server_handshake(ServerProtocol(subprotocols=["chat"]), [data])

    @FUZZ
    @given(data=st.binary(max_size=400), cuts=_cuts, eof=st.booleans())
    def test_random_bytes_client(self, data: bytes, cuts: list[int], eof: bool) -> None:
        client = ClientProtocol(parse_uri("ws://example.com/"), subprotocols=["chat"])
        self._check_client(client, _split(data, cuts), eof)

    @FUZZ
    @given(data=st.data(), cuts=_cuts, eof=st.booleans())
    def test_mutated_response(self, data: st.DataObject, cuts: list[int], eof: bool) -> None:
        from tether.protocol.handshake import accept_key

        client = ClientProtocol(parse_uri("ws://example.com/"), subprotocols=["chat"])
        valid = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(client.key)}\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12\r\n"
            "Sec-WebSocket-Protocol: chat\r\n\r\n"
        ).encode() + frame(TEXT, b"hello") + frame(PING, b"p")
        mutated = data.draw(_mutated(st.just(valid)))
        self._check_client(client, _split(mutated, cuts), eof)

    @staticmethod
    def _check_client(client: ClientProtocol, chunks: list[bytes], eof: bool) -> None:
        for chunk in chunks:
            client.receive_data(chunk)  # must never raise
        if eof:
            client.receive_eof()
        events = client.events_received()
        if client.handshake_error is not None:
            assert isinstance(client.handshake_error, HandshakeError)
            assert client.state is State.CLOSED
            assert events == []
            assert client.data_to_send()[-1] == b""
        elif events:
            assert isinstance(events[0], Response) and events[0].status == 101
            assert client.state in (State.OPEN, State.CLOSING, State.CLOSED)
            error = client.receive_error
            assert error is None or isinstance(error, ProtocolError), repr(error)
        else:
            assert client.state is State.CONNECTING
