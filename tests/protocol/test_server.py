"""tether.protocol.server: the server's opening handshake, RFC 6455 §4.2, then the connection."""

from __future__ import annotations

import base64

import pytest

from tether.exceptions import HandshakeError, InvalidState
from tether.protocol.connection import State
from tether.protocol.events import BinaryMessage, Ping, TextMessage
from tether.protocol.http11 import Headers, Request, Response, ResponseParser
from tether.protocol.server import ServerProtocol

from .conftest import (
    BINARY,
    PING,
    PONG,
    SAMPLE_ACCEPT,
    SAMPLE_KEY,
    TEXT,
    assert_events,
    client_frame,
    parse_frames,
    request_bytes,
    server_handshake,
)

RFC_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"\r\n"
)


def parse_response(data: bytes) -> Response:
    """Parse what the server wrote as an HTTP response."""
    parser = ResponseParser()
    result = parser.feed(data)
    if result is None:
        return parser.feed_eof()
    return result[0]


def rejected(server: ServerProtocol, status: int) -> Response:
    """Check that ``server`` answered ``status``, closed, and return the response."""
    chunks = server.data_to_send()
    assert chunks[-1] == b"", "the server must close the connection after an error response"
    assert len(chunks) == 2
    response = parse_response(chunks[0])
    assert response.status == status
    # A one-line, plain-text body that says what was wrong.
    assert response.body.endswith(b"\n") and response.body.count(b"\n") == 1
    assert response.headers.get("Content-Type") == "text/plain; charset=utf-8"
    assert server.state is State.CLOSED
    assert server.handshake_error is not None
    assert server.handshake_error.status_hint == status
    assert server.input_closed
    # Anything that follows is ignored.
    server.receive_data(client_frame(TEXT, b"ignored"))
    assert server.events_received() == [] and server.data_to_send() == []
    return response


def respond(data: bytes, **options: object) -> ServerProtocol:
    """A server that received ``data`` and, if it got a request, answered ``accept()``."""
    server = ServerProtocol(**options)  # type: ignore[arg-type]
    server.receive_data(data)
    events = server.events_received()
    if events:
        [request] = events
        assert isinstance(request, Request)
        server.send_response(server.accept(request))
    return server


class TestOpeningHandshake:
    """RFC 6455 §4.2.2: the server's answer to a valid upgrade request."""

    def test_rfc_sample(self) -> None:
        server = ServerProtocol()
        assert server.state is State.CONNECTING
        server.receive_data(request_bytes())
        [request] = server.events_received()
        assert isinstance(request, Request)
        assert (request.method, request.target, request.http_version) == ("GET", "/chat", "1.1")
        assert request.headers.get("Sec-WebSocket-Key") == SAMPLE_KEY
        assert server.request is request
        assert server.data_to_send() == []
        response = server.accept(request)
        assert response.status == 101
        assert list(response.headers) == [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", SAMPLE_ACCEPT),
        ]
        server.send_response(response)
        assert server.data_to_send() == [RFC_RESPONSE]
        assert server.state is State.OPEN
        assert server.response is response
        assert server.handshake_error is None
        assert server.extension is None and server.subprotocol is None

    def test_response_changed_after_accept(self) -> None:
        # What goes on the wire is the response as sent, even when changed after accept().
        server = ServerProtocol()
        server.receive_data(request_bytes())
        [request] = server.events_received()
        response = server.accept(request)  # type: ignore[arg-type]
        response.headers.add("X-Served-By", "a")
        server.send_response(response)
        [sent] = server.data_to_send()
        assert sent == response.serialize()
        assert sent == RFC_RESPONSE[:-2] + b"X-Served-By: a\r\n\r\n"

    def test_messages_after_handshake(self) -> None:
        server = respond(request_bytes())
        server.data_to_send()
        server.receive_data(client_frame(TEXT, b"hi"))
        assert_events(server.events_received(), [TextMessage("hi")])
        server.send_binary(b"yo")
        assert server.data_to_send() == [b"\x82\x02yo"]

    def test_query_string(self) -> None:
        server = ServerProtocol()
        server.receive_data(request_bytes(target="/chat?room=a%20b&empty=&room=c"))
        [request] = server.events_received()
        assert isinstance(request, Request)
        assert request.path == "/chat"
        assert request.query == "room=a%20b&empty=&room=c"
        assert request.query_params == {"room": ["a b", "c"], "empty": [""]}

    @pytest.mark.parametrize(
        "replace",
        [
            {"Connection": "keep-alive, Upgrade"},
            {"Connection": "upgrade"},
            {"Connection": "Upgrade, keep-alive"},
            {"Upgrade": "WebSocket"},
            {"Upgrade": "WEBSOCKET"},
            {"Upgrade": "h2c, websocket"},
        ],
    )
    def test_tokens_are_case_insensitive_lists(self, replace: dict[str, str]) -> None:
        server = respond(request_bytes(replace=replace))
        assert server.state is State.OPEN, server.handshake_error
        assert parse_response(server.data_to_send()[0]).status == 101

    def test_lowercase_header_names(self) -> None:
        data = request_bytes().replace(b"Upgrade:", b"upgrade:").replace(
            b"Sec-WebSocket-Key", b"sec-websocket-key"
        )
        assert respond(data).state is State.OPEN

    def test_no_frames_before_response(self) -> None:
        server = ServerProtocol()
        with pytest.raises(InvalidState):
            server.send_text(b"too early")


def _key(n: int) -> str:
    return base64.b64encode(bytes(n)).decode()


class TestInvalidRequests:
    """RFC 6455 §4.2.1 (400) and §4.2.2 (426): what is wrong is said in the body."""

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (request_bytes(method="POST"), "requires GET, not POST"),
            (request_bytes(version="1.0"), "requires HTTP/1.1, not 1.0"),
            (request_bytes(drop=["Host"]), "missing Host"),
            (request_bytes(replace={"Upgrade": "h2c"}), "Upgrade header must include websocket"),
            (request_bytes(replace={"Connection": "keep-alive"}), "Connection header must include"),
            (request_bytes(drop=["Sec-WebSocket-Key"]), "missing Sec-WebSocket-Key"),
            (request_bytes(replace={"Sec-WebSocket-Key": "not*base64*at*all*!!!!!"}), "base64"),
            (request_bytes(replace={"Sec-WebSocket-Key": _key(15)}), "16 bytes, not 15"),
            (request_bytes(replace={"Sec-WebSocket-Key": _key(17)}), "16 bytes, not 17"),
            (
                request_bytes(add=[("Sec-WebSocket-Key", SAMPLE_KEY)]),
                "more than one Sec-WebSocket-Key",
            ),
            (request_bytes(replace={"Upgrade": "web socket"}), "invalid Upgrade header"),
        ],
    )
    def test_400(self, data: bytes, message: str) -> None:
        server = respond(data)
        response = rejected(server, 400)
        assert message.encode() in response.body
        assert response.headers.get("Content-Length") == str(len(response.body))
        assert response.headers.get("Connection") == "close"
        assert message in str(server.handshake_error)

    @pytest.mark.parametrize(
        ("data", "found"),
        [
            (request_bytes(replace={"Sec-WebSocket-Version": "8"}), "8"),
            (request_bytes(drop=["Sec-WebSocket-Version"]), "none"),
            (request_bytes(add=[("Sec-WebSocket-Version", "13")]), "13, 13"),
            (request_bytes(add=[("Sec-WebSocket-Version", "8")]), "13, 8"),
        ],
    )
    def test_unsupported_version_426(self, data: bytes, found: str) -> None:
        response = rejected(respond(data), 426)
        # §4.2.2: "... MUST ... send ... a |Sec-WebSocket-Version| header field indicating the
        # version(s) the server is capable of understanding".
        assert response.headers.get_all("Sec-WebSocket-Version") == ["13"]
        assert f"must be 13, not {found}".encode() in response.body

    def test_plain_http_426(self) -> None:
        data = b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept: text/html\r\n\r\n"
        response = rejected(respond(data), 426)
        # RFC 9110 §15.5.22: a 426 "MUST send an Upgrade header field".
        assert response.headers.get_all("Upgrade") == ["websocket"]
        assert b"WebSocket only" in response.body


class TestRequestLimits:
    """Bounded parsing of the upgrade request: 414, 431 and 400 for garbage."""

    def test_request_line_too_long(self) -> None:
        server = ServerProtocol()
        server.receive_data(request_bytes(target="/" + "a" * 9000))
        response = rejected(server, 414)
        assert b"request target exceeds 8192 bytes" in response.body

    def test_request_line_too_long_in_pieces(self) -> None:
        server = ServerProtocol(max_request_line=100)
        data = request_bytes(target="/" + "a" * 200)
        for i in range(0, len(data), 7):
            server.receive_data(data[i : i + 7])
            if server.handshake_error:
                break
        assert server.handshake_error is not None and i < 120
        rejected(server, 414)

    def test_too_many_headers(self) -> None:
        data = request_bytes(add=[(f"X-{i}", "y") for i in range(200)])
        server = ServerProtocol()
        server.receive_data(data)
        assert b"more than 128 header fields" in rejected(server, 431).body

    def test_max_headers_option(self) -> None:
        # The sample request has 6 fields.
        assert respond(request_bytes(add=[("X-1", "a")] * 4), max_headers=10).state is State.OPEN
        server = ServerProtocol(max_headers=10)
        server.receive_data(request_bytes(add=[("X-1", "a")] * 5))
        rejected(server, 431)

    def test_header_block_too_large_byte_by_byte(self) -> None:
        data = request_bytes(add=[("X-Big", "a" * 20_000)])
        server = ServerProtocol()
        for i in range(len(data)):
            server.receive_data(data[i : i + 1])
            if server.handshake_error is not None:
                break
        assert i == 16383  # stopped at the limit, not at the end of the request
        assert b"header block exceeds 16384 bytes" in rejected(server, 431).body

    def test_header_block_too_large_in_one_chunk(self) -> None:
        server = ServerProtocol()
        server.receive_data(request_bytes(add=[("X-Big", "a" * 10_000_000)]))
        rejected(server, 431)

    def test_many_headers_in_one_huge_chunk(self) -> None:
        server = ServerProtocol(max_headers=100_000)
        server.receive_data(request_bytes(add=[("X", "y")] * 10_000))
        rejected(server, 431)

    def test_header_block_at_the_limit(self) -> None:
        base = len(request_bytes(add=[("X-Pad", "")]))
        data = request_bytes(add=[("X-Pad", "p" * (1024 - base))])
        assert len(data) == 1024
        assert respond(data, max_header_bytes=1024).state is State.OPEN
        server = ServerProtocol(max_header_bytes=1023)
        server.receive_data(data)
        rejected(server, 431)

    @pytest.mark.parametrize(
        "data",
        [
            b"\x00\x01\x02\x03\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
            b"NOT A REQUEST\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        ],
    )
    def test_garbage(self, data: bytes) -> None:
        server = ServerProtocol()
        server.receive_data(data)
        assert b"invalid HTTP message" in rejected(server, 400).body


class TestPipelining:
    """Bytes after the request's header block belong to the WebSocket stream (§4.2.2: the
    server may receive frames right after the handshake request)."""

    def test_frames_in_the_same_chunk(self) -> None:
        server = ServerProtocol()
        frames = client_frame(TEXT, b"first") + client_frame(PING, b"p")
        server.receive_data(request_bytes() + frames)
        [request] = server.events_received()
        assert server.data_to_send() == []  # no pong before the 101
        server.send_response(server.accept(request))  # type: ignore[arg-type]
        assert_events(server.events_received(), [TextMessage("first"), Ping(b"p")])
        response, pong = server.data_to_send()
        assert response == RFC_RESPONSE
        assert parse_frames(pong) == [(True, 0, PONG, b"p", None)]

    def test_frames_in_later_chunks_before_the_response(self) -> None:
        server = ServerProtocol()
        data = client_frame(BINARY, b"abc")
        server.receive_data(request_bytes() + data[:3])
        server.receive_data(data[3:])
        server.receive_data(client_frame(TEXT, b"def"))
        [request] = server.events_received()
        server.send_response(server.accept(request))  # type: ignore[arg-type]
        assert_events(server.events_received(), [BinaryMessage(b"abc"), TextMessage("def")])

    def test_large_frame_in_the_same_chunk(self) -> None:
        # More bytes than max_header_bytes follow the request in one read.
        payload = bytes(range(256)) * 100
        server = ServerProtocol()
        server.receive_data(request_bytes() + client_frame(BINARY, payload))
        [request] = server.events_received()
        server.send_response(server.accept(request))  # type: ignore[arg-type]
        assert_events(server.events_received(), [BinaryMessage(payload)])

    def test_frames_dropped_when_rejected(self) -> None:
        server = ServerProtocol()
        server.receive_data(request_bytes(method="POST") + client_frame(TEXT, b"x"))
        [request] = server.events_received()
        server.send_response(server.accept(request))  # type: ignore[arg-type]
        assert server.events_received() == []
        rejected(server, 400)

    def test_split_at_every_byte_boundary(self) -> None:
        data = request_bytes(target="/chat?x=1") + client_frame(TEXT, b"after")
        expected_response = server_handshake(ServerProtocol(), data)
        for i in range(len(data) + 1):
            server = ServerProtocol()
            server.receive_data(data[:i])
            server.receive_data(data[i:])
            [request] = server.events_received()
            assert isinstance(request, Request)
            assert (request.method, request.target) == ("GET", "/chat?x=1")
            assert list(request.headers) == list(
                Headers(
                    [
                        ("Host", "server.example.com"),
                        ("Upgrade", "websocket"),
                        ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Key", SAMPLE_KEY),
                        ("Origin", "http://example.com"),
                        ("Sec-WebSocket-Version", "13"),
                    ]
                )
            )
            server.send_response(server.accept(request))
            assert server.data_to_send() == expected_response, i
            assert_events(server.events_received(), [TextMessage("after")])

    def test_byte_by_byte(self) -> None:
        data = request_bytes() + client_frame(TEXT, b"after")
        server = ServerProtocol()
        for i in range(len(data)):
            server.receive_data(data[i : i + 1])
        [request] = server.events_received()
        server.send_response(server.accept(request))  # type: ignore[arg-type]
        assert_events(server.events_received(), [TextMessage("after")])


class TestSubprotocols:
    """RFC 6455 §4.2.2 item 4 and §1.9: the server selects at most one offered subprotocol."""

    def _negotiate(self, offer: str | None, **options: object) -> ServerProtocol:
        add = [("Sec-WebSocket-Protocol", offer)] if offer is not None else []
        server = respond(request_bytes(add=add), **options)
        assert server.state is State.OPEN, server.handshake_error
        return server

    def test_selected(self) -> None:
        server = self._negotiate("superchat, chat", subprotocols=["chat"])
        assert server.subprotocol == "chat"
        assert server.response is not None
        assert server.response.headers.get_all("Sec-WebSocket-Protocol") == ["chat"]

    def test_server_preference_wins(self) -> None:
        server = self._negotiate("chat, superchat", subprotocols=["superchat", "chat"])
        assert server.subprotocol == "superchat"

    def test_repeated_header(self) -> None:
        add = [("Sec-WebSocket-Protocol", "a"), ("Sec-WebSocket-Protocol", "b")]
        server = respond(request_bytes(add=add), subprotocols=["b"])
        assert server.subprotocol == "b"

    def test_none_in_common(self) -> None:
        server = self._negotiate("chat", subprotocols=["other"])
        assert server.subprotocol is None
        assert server.response is not None
        assert "Sec-WebSocket-Protocol" not in server.response.headers

    def test_not_offered(self) -> None:
        assert self._negotiate(None, subprotocols=["chat"]).subprotocol is None

    def test_custom_selection(self) -> None:
        seen = []

        def select(offered: list[str], supported: list[str]) -> str | None:
            seen.append((list(offered), list(supported)))
            return offered[-1]

        server = self._negotiate("a, b", subprotocols=["x"], select_subprotocol=select)
        assert server.subprotocol == "b"
        assert seen == [(["a", "b"], ["x"])]

    def test_selection_of_unoffered_subprotocol_is_a_bug(self) -> None:
        server = ServerProtocol(select_subprotocol=lambda offered, supported: "other")
        server.receive_data(request_bytes(add=[("Sec-WebSocket-Protocol", "chat")]))
        [request] = server.events_received()
        with pytest.raises(ValueError, match="not offered"):
            server.accept(request)  # type: ignore[arg-type]

    def test_invalid_header(self) -> None:
        server = respond(request_bytes(add=[("Sec-WebSocket-Protocol", "chat;v=1")]))
        assert b"invalid Sec-WebSocket-Protocol header" in rejected(server, 400).body


class TestExtensionNegotiation:
    """RFC 6455 §9.1: the server accepts at most one of the client's offers, in its order."""

    def test_default_deflate(self) -> None:
        offer = "permessage-deflate; client_max_window_bits"
        server = respond(request_bytes(add=[("Sec-WebSocket-Extensions", offer)]))
        assert server.response is not None
        assert server.response.headers.get_all("Sec-WebSocket-Extensions") == [
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        ]
        assert server.extension is not None and server.extension.name == "permessage-deflate"

    def test_unknown_extension_is_ignored(self) -> None:
        add = [("Sec-WebSocket-Extensions", "x-webkit-deflate-frame, x-foo; bar=1")]
        server = respond(request_bytes(add=add))
        assert server.state is State.OPEN
        assert server.extension is None
        assert "Sec-WebSocket-Extensions" not in server.response.headers  # type: ignore[union-attr]

    def test_extensions_disabled(self) -> None:
        add = [("Sec-WebSocket-Extensions", "permessage-deflate")]
        server = respond(request_bytes(add=add), extensions=())
        assert server.extension is None
        assert "Sec-WebSocket-Extensions" not in server.response.headers  # type: ignore[union-attr]

    def test_first_acceptable_offer_wins(self) -> None:
        add = [
            ("Sec-WebSocket-Extensions", "x-foo"),
            ("Sec-WebSocket-Extensions", "permessage-deflate; server_no_context_takeover"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ]
        server = respond(request_bytes(add=add))
        assert server.response is not None
        assert server.response.headers.get_all("Sec-WebSocket-Extensions") == [
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
        ]

    def test_invalid_header(self) -> None:
        add = [("Sec-WebSocket-Extensions", "permessage-deflate; =")]
        server = respond(request_bytes(add=add))
        assert b"invalid Sec-WebSocket-Extensions header" in rejected(server, 400).body


class TestRejection:
    """Closing the connection without upgrading it."""

    def test_application_rejects(self) -> None:
        server = ServerProtocol()
        server.receive_data(request_bytes())
        [request] = server.events_received()
        response = server.reject(403, "no access\n", Headers([("Retry-After", "60")]))
        assert response.body == b"no access\n"
        server.send_response(response)
        sent = rejected(server, 403)
        assert sent.headers.get("Retry-After") == "60"
        assert sent.headers.get("Content-Length") == "10"
        # The refusal is recorded with what it told the client, for the server's log.
        assert str(server.handshake_error) == "no access"
        assert server.handshake_error.status_hint == 403

    def test_response_sent_twice(self) -> None:
        server = respond(request_bytes())
        with pytest.raises(RuntimeError, match="already sent"):
            server.send_response(Response(101))

    def test_101_without_accept(self) -> None:
        # A 101 not built by accept() negotiated nothing: it cannot open the connection.
        server = ServerProtocol()
        server.receive_data(request_bytes())
        server.send_response(Response(101))
        assert server.state is State.CLOSED
        assert server.data_to_send()[-1] == b""

    def test_eof_before_request(self) -> None:
        server = ServerProtocol()
        server.receive_data(request_bytes()[:20])
        server.receive_eof()
        assert isinstance(server.handshake_error, HandshakeError)
        assert "closed during the opening handshake" in str(server.handshake_error)
        assert server.state is State.CLOSED
        assert server.data_to_send() == [b""]
        assert server.events_received() == []

    def test_eof_after_request(self) -> None:
        server = ServerProtocol()
        server.receive_data(request_bytes())
        server.receive_eof()
        assert server.handshake_error is not None
        assert server.state is State.CLOSED

    def test_eof_after_bad_request_keeps_first_error(self) -> None:
        server = ServerProtocol()
        server.receive_data(b"\x00garbage\r\n\r\n")
        error = server.handshake_error
        server.receive_eof()
        assert server.handshake_error is error

    def test_426_on_the_wire(self) -> None:
        server = respond(request_bytes(replace={"Sec-WebSocket-Version": "7"}))
        raw = server.data_to_send()[0]
        assert raw.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
        assert b"\r\nUpgrade: websocket\r\n" in raw
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in raw
