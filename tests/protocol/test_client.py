"""tether.protocol.client: WebSocket URIs and the client's opening handshake, RFC 6455 §3, §4.1."""

from __future__ import annotations

import base64

import pytest

from tether.exceptions import HandshakeError, InvalidMessage, InvalidStatus, InvalidURI
from tether.protocol.client import ClientProtocol, WebSocketURI, parse_uri
from tether.protocol.connection import State
from tether.protocol.events import BinaryMessage, Ping, TextMessage
from tether.protocol.handshake import accept_key
from tether.protocol.http11 import Request, RequestParser, Response

from .conftest import (
    BINARY,
    PING,
    PONG,
    TEXT,
    assert_events,
    output,
    server_frame,
    transfer,
)


def new_client(uri: str = "ws://example.com/chat", **options: object) -> ClientProtocol:
    client = ClientProtocol(parse_uri(uri), **options)  # type: ignore[arg-type]
    client.send_request(client.connect())
    client.data_to_send()
    return client


def response_bytes(
    client: ClientProtocol,
    *,
    status: str = "101 Switching Protocols",
    drop: tuple[str, ...] = (),
    add: tuple[tuple[str, str], ...] = (),
    accept: str | None = None,
) -> bytes:
    """A 101 response that matches ``client``'s key, with fields dropped or added."""
    fields = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept or accept_key(client.key)),
    ]
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{k}: {v}" for k, v in fields if k not in drop]
    lines += [f"{k}: {v}" for k, v in add]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_handshake_failed(client: ClientProtocol, error: type = HandshakeError) -> None:
    assert isinstance(client.handshake_error, error), repr(client.handshake_error)
    assert client.state is State.CLOSED
    assert client.events_received() == []
    assert client.data_to_send() == [b""]  # close the TCP connection
    assert client.extension is None and client.subprotocol is None
    client.receive_data(server_frame(TEXT, b"ignored"))
    assert client.events_received() == []


class TestURI:
    """RFC 6455 §3: ws-URI and wss-URI."""

    @pytest.mark.parametrize(
        ("uri", "expected", "host_header"),
        [
            ("ws://example.com", WebSocketURI(False, "example.com", 80, "/"), "example.com"),
            ("wss://example.com/", WebSocketURI(True, "example.com", 443, "/"), "example.com"),
            (
                "ws://example.com:8080/chat?room=1",
                WebSocketURI(False, "example.com", 8080, "/chat?room=1"),
                "example.com:8080",
            ),
            ("wss://example.com:443/a", WebSocketURI(True, "example.com", 443, "/a"), "example.com"),
            ("ws://example.com:443/", WebSocketURI(False, "example.com", 443, "/"), "example.com:443"),
            ("ws://[::1]:9000/", WebSocketURI(False, "::1", 9000, "/"), "[::1]:9000"),
            ("wss://[::1]/", WebSocketURI(True, "::1", 443, "/"), "[::1]"),
            ("ws://Example.COM/Path", WebSocketURI(False, "example.com", 80, "/Path"), "example.com"),
            ("ws://h/?q", WebSocketURI(False, "h", 80, "/?q"), "h"),
        ],
    )
    def test_valid(self, uri: str, expected: WebSocketURI, host_header: str) -> None:
        parsed = parse_uri(uri)
        assert parsed == expected
        assert parsed.host_header == host_header

    @pytest.mark.parametrize(
        ("uri", "message"),
        [
            ("http://example.com/", "not a WebSocket URI"),
            ("example.com", "not a WebSocket URI"),
            ("ws:///path", "has no host"),
            ("ws://example.com/#frag", "has a fragment"),
            ("ws://example.com:99999/", "not a valid URI"),
            ("ws://example.com:port/", "not a valid URI"),
        ],
    )
    def test_invalid(self, uri: str, message: str) -> None:
        with pytest.raises(InvalidURI, match=message):
            parse_uri(uri)


class TestRequest:
    """RFC 6455 §4.1: the client's opening handshake."""

    def test_request(self) -> None:
        client = ClientProtocol(parse_uri("ws://example.com:8000/chat?x=1"))
        assert client.state is State.CONNECTING
        request = client.connect()
        assert (request.method, request.target) == ("GET", "/chat?x=1")
        assert list(request.headers) == [
            ("Host", "example.com:8000"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", client.key),
            ("Sec-WebSocket-Version", "13"),
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits, "
                "permessage-deflate; client_no_context_takeover; client_max_window_bits",
            ),
        ]
        client.send_request(request)
        [data] = client.data_to_send()
        assert data.startswith(b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8000\r\n")
        assert data.endswith(b"\r\n\r\n")
        # A server can parse it.
        parsed = RequestParser().feed(data)
        assert parsed is not None and parsed[1] == b""
        assert list(parsed[0].headers) == list(request.headers)

    def test_key_is_16_random_bytes(self) -> None:
        keys = [ClientProtocol(parse_uri("ws://h/")).key for _ in range(20)]
        assert len(set(keys)) == 20
        for key in keys:
            assert len(key) == 24
            assert len(base64.b64decode(key, validate=True)) == 16

    def test_options(self) -> None:
        client = ClientProtocol(
            parse_uri("wss://example.com/"),
            origin="https://example.com",
            subprotocols=["chat", "superchat"],
            extensions=(),
            headers=[("Authorization", "Bearer x"), ("X-Trace", "1")],
        )
        headers = client.connect().headers
        assert headers.get("Origin") == "https://example.com"
        assert headers.get("Sec-WebSocket-Protocol") == "chat, superchat"
        assert "Sec-WebSocket-Extensions" not in headers
        assert headers.get("Authorization") == "Bearer x"
        assert list(headers)[-1] == ("X-Trace", "1")

    def test_extra_header_cannot_inject_fields(self) -> None:
        client = ClientProtocol(parse_uri("ws://h/"), headers=[("X", "a\r\nInjected: 1")])
        with pytest.raises(ValueError):
            client.connect()


BAD_UPGRADE_OR_CONNECTION = [
    (("Upgrade",), (), "Upgrade header does not include websocket"),
    (("Upgrade",), (("Upgrade", "h2c"),), "Upgrade header does not include websocket"),
    (("Connection",), (), "Connection header does not include Upgrade"),
    (("Connection",), (("Connection", "close"),), "Connection header does not include Upgrade"),
    (("Connection",), (("Connection", "up grade"),), "invalid Connection header"),
]


class TestResponse:
    """RFC 6455 §4.1: "the client MUST validate the server's response"."""

    def test_valid(self) -> None:
        client = new_client()
        client.receive_data(response_bytes(client))
        [response] = client.events_received()
        assert isinstance(response, Response) and response.status == 101
        assert client.response is response
        assert client.state is State.OPEN
        assert client.handshake_error is None
        assert client.data_to_send() == []
        client.send_text(b"hi")
        [(fin, rsv, opcode, payload, mask)] = output(client)[0]
        assert (opcode, payload) == (TEXT, b"hi") and mask is not None

    def test_tokens_are_case_insensitive(self) -> None:
        client = new_client()
        client.receive_data(
            response_bytes(client, drop=("Upgrade", "Connection"),
                           add=(("upgrade", "WebSocket"), ("connection", "keep-alive, upgrade")))
        )
        assert client.state is State.OPEN, client.handshake_error

    def test_split_at_every_byte_boundary(self) -> None:
        for i in range(len(response_bytes(new_client())) + 8):
            client = new_client()
            data = response_bytes(client) + server_frame(TEXT, b"after")
            client.receive_data(data[:i])
            client.receive_data(data[i:])
            [response, message] = client.events_received()
            assert isinstance(response, Response) and response.status == 101
            assert_events([message], [TextMessage("after")])

    def test_frames_right_after_the_101(self) -> None:
        client = new_client()
        frames = server_frame(TEXT, b"hello") + server_frame(PING, b"p") + server_frame(BINARY, b"b")
        client.receive_data(response_bytes(client) + frames)
        events = client.events_received()
        assert isinstance(events[0], Response)
        assert_events(events[1:], [TextMessage("hello"), Ping(b"p"), BinaryMessage(b"b")])
        [(fin, rsv, opcode, payload, mask)] = output(client)[0]
        assert (opcode, payload) == (PONG, b"p")

    def test_large_frame_in_the_same_read(self) -> None:
        # More bytes than max_header_bytes follow the 101 in one read.
        client = new_client()
        payload = bytes(range(256)) * 100
        client.receive_data(response_bytes(client) + server_frame(BINARY, payload))
        [response, message] = client.events_received()
        assert isinstance(response, Response)
        assert_events([message], [BinaryMessage(payload)])

    def test_wrong_accept(self) -> None:
        client = new_client()
        client.receive_data(response_bytes(client, accept=accept_key("other")))
        assert_handshake_failed(client)
        assert "Sec-WebSocket-Accept does not match" in str(client.handshake_error)

    def test_two_accepts(self) -> None:
        client = new_client()
        client.receive_data(
            response_bytes(client, add=(("Sec-WebSocket-Accept", accept_key(client.key)),))
        )
        assert_handshake_failed(client)

    def test_missing_accept(self) -> None:
        client = new_client()
        client.receive_data(response_bytes(client, drop=("Sec-WebSocket-Accept",)))
        assert_handshake_failed(client)

    @pytest.mark.parametrize(("drop", "add", "message"), BAD_UPGRADE_OR_CONNECTION)
    def test_missing_upgrade_or_connection(
        self, drop: tuple[str, ...], add: tuple[tuple[str, str], ...], message: str
    ) -> None:
        # llhttp stops at any 101, even one without the headers that make it an upgrade:
        # the error must still say what is missing, not "invalid HTTP message".
        client = new_client()
        client.receive_data(response_bytes(client, drop=drop, add=add))
        assert message in str(client.handshake_error)
        assert_handshake_failed(client)

    def test_missing_upgrade_with_frames_after(self) -> None:
        client = new_client()
        data = response_bytes(client, drop=("Upgrade",)) + server_frame(TEXT, b"x")
        client.receive_data(data)
        assert "Upgrade header does not include websocket" in str(client.handshake_error)
        assert_handshake_failed(client)

    def test_status_with_content_length_body(self) -> None:
        client = new_client()
        data = (
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
            b"go away, bot\n"
        )
        client.receive_data(data[:-5])
        assert client.state is State.CONNECTING  # the body is not complete yet
        client.receive_data(data[-5:])
        error = client.handshake_error
        assert isinstance(error, InvalidStatus)
        assert error.status_hint == 403
        assert error.response.status == 403
        assert error.response.reason == "Forbidden"
        assert error.response.body == b"go away, bot\n"
        assert str(error) == "server rejected WebSocket connection: HTTP 403: go away, bot"
        assert_handshake_failed(client, InvalidStatus)

    def test_status_with_body_ended_by_eof(self) -> None:
        client = new_client()
        client.receive_data(b"HTTP/1.1 500 Internal Server Error\r\n\r\nsomething")
        client.receive_data(b" broke")
        assert client.state is State.CONNECTING
        client.receive_eof()
        error = client.handshake_error
        assert isinstance(error, InvalidStatus)
        assert (error.response.status, error.response.body) == (500, b"something broke")
        assert client.state is State.CLOSED
        assert client.data_to_send() == [b""]

    def test_status_without_body(self) -> None:
        client = new_client()
        client.receive_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        assert isinstance(client.handshake_error, InvalidStatus)
        assert str(client.handshake_error) == "server rejected WebSocket connection: HTTP 404"

    def test_status_200_with_upgrade_headers(self) -> None:
        client = new_client()
        client.receive_data(response_bytes(client, status="200 OK", add=(("Content-Length", "0"),)))
        assert_handshake_failed(client, InvalidStatus)

    def test_status_with_large_body_in_one_read(self) -> None:
        # The header block limit splits this read; the body past it must not be lost.
        client = new_client()
        body = b"x" * 20_000
        client.receive_data(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 20000\r\n\r\n" + body
        )
        assert isinstance(client.handshake_error, InvalidStatus)
        assert client.handshake_error.response.body == body

    def test_eof_before_response(self) -> None:
        client = new_client()
        client.receive_data(b"HTTP/1.1 101 Switching")
        client.receive_eof()
        assert isinstance(client.handshake_error, InvalidMessage)
        assert client.state is State.CLOSED
        assert client.data_to_send() == [b""]

    def test_garbage_response(self) -> None:
        client = new_client()
        client.receive_data(b"SSH-2.0-OpenSSH_9.6\r\n")
        assert_handshake_failed(client, InvalidMessage)

    def test_too_many_headers(self) -> None:
        client = new_client(max_headers=5)
        client.receive_data(response_bytes(client, add=(("X", "1"),) * 3))
        assert_handshake_failed(client)
        assert client.handshake_error.status_hint == 431  # type: ignore[union-attr]

    def test_header_block_too_large(self) -> None:
        client = new_client(max_header_bytes=200)
        client.receive_data(response_bytes(client, add=(("X", "y" * 300),)))
        assert_handshake_failed(client)

    def test_eof_after_failure(self) -> None:
        client = new_client()
        client.receive_data(b"garbage\r\n\r\n")
        client.data_to_send()
        client.receive_eof()
        assert client.data_to_send() == []


class TestExtensionsAndSubprotocols:
    """RFC 6455 §4.1 items 5-6: only what the client offered, and one of each at most."""

    def test_extension_accepted(self) -> None:
        client = new_client()
        ext = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        client.receive_data(response_bytes(client, add=(("Sec-WebSocket-Extensions", ext),)))
        assert client.state is State.OPEN
        assert client.extension is not None
        assert str(client.extension) == ext

    def test_extension_not_offered(self) -> None:
        client = new_client(extensions=())
        ext = "permessage-deflate"
        client.receive_data(response_bytes(client, add=(("Sec-WebSocket-Extensions", ext),)))
        assert_handshake_failed(client)
        assert "permessage-deflate, which was not offered" in str(client.handshake_error)

    def test_unknown_extension(self) -> None:
        client = new_client()
        client.receive_data(response_bytes(client, add=(("Sec-WebSocket-Extensions", "x-foo"),)))
        assert_handshake_failed(client)

    def test_two_extensions(self) -> None:
        client = new_client()
        add = (("Sec-WebSocket-Extensions", "permessage-deflate, permessage-deflate"),)
        client.receive_data(response_bytes(client, add=add))
        assert_handshake_failed(client)
        assert "more than one extension" in str(client.handshake_error)

    def test_two_extension_headers(self) -> None:
        client = new_client()
        add = (
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
        )
        client.receive_data(response_bytes(client, add=add))
        assert_handshake_failed(client)

    def test_invalid_extension_header(self) -> None:
        client = new_client()
        add = (("Sec-WebSocket-Extensions", "permessage-deflate;;"),)
        client.receive_data(response_bytes(client, add=add))
        assert_handshake_failed(client)

    def test_invalid_extension_params(self) -> None:
        client = new_client()
        add = (("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=16"),)
        client.receive_data(response_bytes(client, add=add))
        assert_handshake_failed(client)

    def test_subprotocol_accepted(self) -> None:
        client = new_client(subprotocols=["chat", "superchat"])
        client.receive_data(response_bytes(client, add=(("Sec-WebSocket-Protocol", "superchat"),)))
        assert client.state is State.OPEN
        assert client.subprotocol == "superchat"

    def test_no_subprotocol_selected(self) -> None:
        client = new_client(subprotocols=["chat"])
        client.receive_data(response_bytes(client))
        assert client.state is State.OPEN and client.subprotocol is None

    def test_subprotocol_not_offered(self) -> None:
        client = new_client(subprotocols=["chat"])
        client.receive_data(response_bytes(client, add=(("Sec-WebSocket-Protocol", "other"),)))
        assert_handshake_failed(client)
        assert "subprotocol other, which was not offered" in str(client.handshake_error)

    def test_subprotocol_when_none_offered(self) -> None:
        client = new_client()
        client.receive_data(response_bytes(client, add=(("Sec-WebSocket-Protocol", "chat"),)))
        assert_handshake_failed(client)

    @pytest.mark.parametrize(
        "add",
        [
            (("Sec-WebSocket-Protocol", "chat, superchat"),),
            (("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "superchat")),
        ],
    )
    def test_two_subprotocols(self, add: tuple[tuple[str, str], ...]) -> None:
        client = new_client(subprotocols=["chat", "superchat"])
        client.receive_data(response_bytes(client, add=add))
        assert_handshake_failed(client)
        assert "more than one subprotocol" in str(client.handshake_error)

    def test_invalid_subprotocol_header(self) -> None:
        client = new_client(subprotocols=["chat"])
        client.receive_data(response_bytes(client, add=(("Sec-WebSocket-Protocol", "ch at"),)))
        assert_handshake_failed(client)


class TestBackToBack:
    """A ClientProtocol and a ServerProtocol talking through bytes only."""

    def test_full_session(self) -> None:
        from tether.protocol.server import ServerProtocol

        client = ClientProtocol(parse_uri("ws://example.com/chat"), subprotocols=["chat"])
        server = ServerProtocol(subprotocols=["chat"])
        client.send_request(client.connect())
        transfer(client, server)
        [request] = server.events_received()
        assert isinstance(request, Request)
        server.send_response(server.accept(request))
        server.send_text(b"welcome")
        transfer(server, client)
        [response, welcome] = client.events_received()
        assert isinstance(response, Response)
        assert_events([welcome], [TextMessage("welcome")])
        assert client.subprotocol == server.subprotocol == "chat"
        assert client.extension is not None and server.extension is not None
        client.send_text(b"x" * 1000)
        transfer(client, server)
        assert_events(server.events_received(), [TextMessage("x" * 1000)])
        client.send_close(1000, "bye")
        transfer(client, server)
        transfer(server, client)
        transfer(client, server)
        assert client.state is State.CLOSED and server.state is State.CLOSED
        assert client.close_rcvd is not None and client.close_rcvd.code == 1000
        assert server.close_rcvd is not None and server.close_rcvd.reason == "bye"
