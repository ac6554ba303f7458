"""tether.protocol.http11: header fields, requests, responses and their bounded parsers
(RFC 9110, RFC 9112)."""

from __future__ import annotations

import pytest

from tether.exceptions import HandshakeError, InvalidMessage
from tether.protocol.http11 import (
    MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
)

from .conftest import request_bytes


class TestHeaders:
    """RFC 9110 §5: field names are case-insensitive; repeated fields keep their order."""

    def test_lookup(self) -> None:
        headers = Headers([("Host", "h"), ("X-A", "1"), ("x-a", "2")])
        assert headers.get_all("X-A") == ["1", "2"]
        assert headers.get_all("missing") == []
        assert headers.get("x-A") == "1, 2"  # §5.3: combined with commas
        assert headers.get("missing") is None
        assert headers.get("missing", "default") == "default"
        assert "host" in headers and "HOST" in headers and "nope" not in headers
        assert 42 not in headers
        assert len(headers) == 3
        assert list(headers) == [("Host", "h"), ("X-A", "1"), ("x-a", "2")]

    def test_add(self) -> None:
        headers = Headers()
        headers.add("A", "1")
        headers.add("A", "2")
        assert headers.get_all("a") == ["1", "2"]

    @pytest.mark.parametrize(
        ("name", "value"),
        [("X", "a\r\nInjected: 1"), ("X", "a\nb"), ("X", "a\rb"), ("X\r\nY", "v"), ("X:Y", "v")],
    )
    def test_add_refuses_splitting(self, name: str, value: str) -> None:
        with pytest.raises(ValueError, match="invalid header field"):
            Headers().add(name, value)

    def test_equality_and_repr(self) -> None:
        assert Headers([("A", "1")]) == Headers([("A", "1")])
        assert Headers([("A", "1")]) != Headers([("a", "1")])
        assert Headers() != [("A", "1")]
        assert repr(Headers([("A", "1")])) == "Headers([('A', '1')])"

    def test_serialize(self) -> None:
        assert Headers([("A", "1"), ("B", "é")]).serialize() == b"A: 1\r\nB: \xe9\r\n"
        assert Headers().serialize() == b""


class TestRequest:
    """RFC 9112 §3: the request line; RFC 3986 §3.4: the query."""

    def test_attributes(self) -> None:
        request = Request("GET", "/a/b?x=1&y=&x=2", Headers([("Host", "h")]))
        assert request.http_version == "1.1"
        assert (request.path, request.query) == ("/a/b", "x=1&y=&x=2")
        assert request.query_params == {"x": ["1", "2"], "y": [""]}
        assert request.query_params is request.query_params  # computed once
        assert repr(request) == "Request(GET /a/b)"

    def test_no_query(self) -> None:
        request = Request("GET", "/", Headers())
        assert (request.path, request.query, request.query_params) == ("/", "", {})

    def test_serialize(self) -> None:
        request = Request("GET", "/chat", Headers([("Host", "h")]))
        assert request.serialize() == b"GET /chat HTTP/1.1\r\nHost: h\r\n\r\n"


class TestResponse:
    """RFC 9112 §4: the status line."""

    def test_reason_phrases(self) -> None:
        assert Response(101).reason == "Switching Protocols"
        assert Response(426).reason == "Upgrade Required"
        assert Response(599).reason == "Unknown"
        assert Response(200, reason="Fine").reason == "Fine"

    def test_serialize(self) -> None:
        response = Response(404, Headers([("Content-Length", "3")]), b"no\n")
        assert response.serialize() == b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n"
        assert repr(response) == "Response(404 Not Found)"
        assert Response(101).headers == Headers()


class TestRequestParser:
    """Incremental, bounded parsing of the upgrade request."""

    def test_defaults(self) -> None:
        assert (MAX_REQUEST_LINE, MAX_HEADERS, MAX_HEADER_BYTES, MAX_BODY) == (
            8192, 128, 16384, 65536
        )

    def test_whole(self) -> None:
        result = RequestParser().feed(request_bytes() + b"\x81\x80rest")
        assert result is not None
        request, rest = result
        assert rest == b"\x81\x80rest"
        assert (request.method, request.target, request.http_version) == ("GET", "/chat", "1.1")
        assert request.headers.get("Host") == "server.example.com"

    def test_incremental(self) -> None:
        parser = RequestParser()
        data = request_bytes()
        for i in range(len(data) - 1):
            assert parser.feed(data[i : i + 1]) is None
        result = parser.feed(data[-1:])
        assert result is not None and result[1] == b""

    def test_values_are_stripped_and_latin1(self) -> None:
        data = b"GET / HTTP/1.1\r\nHost: h\r\nX:   padded \t\r\nY: caf\xe9\r\n\r\n"
        result = RequestParser().feed(data)
        assert result is not None
        assert result[0].headers.get("X") == "padded"
        assert result[0].headers.get("Y") == "café"

    def test_plain_request_without_upgrade(self) -> None:
        result = RequestParser().feed(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
        assert result is not None
        assert result[0].path == "/health"

    def test_http_1_0(self) -> None:
        result = RequestParser().feed(b"GET / HTTP/1.0\r\n\r\n")
        assert result is not None and result[0].http_version == "1.0"

    def test_request_line_limit(self) -> None:
        assert RequestParser(max_request_line=10).feed(b"GET /123456789 HTTP/1.1\r\n\r\n")
        with pytest.raises(HandshakeError, match="exceeds 10 bytes") as info:
            RequestParser(max_request_line=10).feed(b"GET /1234567890 HTTP/1.1\r\n\r\n")
        assert info.value.status_hint == 414

    def test_header_count_limit(self) -> None:
        data = b"GET / HTTP/1.1\r\n" + b"A: 1\r\n" * 3 + b"\r\n"
        assert RequestParser(max_headers=3).feed(data)
        with pytest.raises(HandshakeError, match="more than 2 header fields") as info:
            RequestParser(max_headers=2).feed(data)
        assert info.value.status_hint == 431

    def test_header_bytes_limit(self) -> None:
        data = b"GET / HTTP/1.1\r\nA: 1\r\n\r\n"
        assert RequestParser(max_header_bytes=len(data)).feed(data)
        with pytest.raises(HandshakeError, match="exceeds 23 bytes") as info:
            RequestParser(max_header_bytes=len(data) - 1).feed(data)
        assert info.value.status_hint == 431

    def test_header_bytes_limit_across_feeds(self) -> None:
        parser = RequestParser(max_header_bytes=30)
        assert parser.feed(b"GET / HTTP/1.1\r\n") is None
        with pytest.raises(HandshakeError, match="exceeds 30 bytes"):
            parser.feed(b"X-Long: " + b"a" * 40)

    def test_malformed(self) -> None:
        with pytest.raises(InvalidMessage, match="invalid HTTP message") as info:
            RequestParser().feed(b"\x00\r\n\r\n")
        assert info.value.status_hint == 400


class TestResponseParser:
    """Incremental parsing of the handshake response, with the body of a non-101 one."""

    def test_101_and_leftover(self) -> None:
        data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        result = ResponseParser().feed(data + b"\x81\x00")
        assert result is not None
        response, rest = result
        assert (response.status, response.reason, rest) == (101, "Switching Protocols", b"\x81\x00")
        assert response.headers.get("Upgrade") == "websocket"

    def test_content_length_body(self) -> None:
        parser = ResponseParser()
        assert parser.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nab") is None
        result = parser.feed(b"cde")
        assert result is not None
        assert (result[0].status, result[0].body) == (403, b"abcde")

    def test_chunked_body(self) -> None:
        data = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        result = ResponseParser().feed(data)
        assert result is not None
        assert (result[0].status, result[0].reason, result[0].body) == (500, "Oops", b"abcde")

    def test_body_ended_by_eof(self) -> None:
        parser = ResponseParser()
        assert parser.feed(b"HTTP/1.1 502 Bad Gateway\r\n\r\npartial") is None
        response = parser.feed_eof()
        assert (response.status, response.body) == (502, b"partial")

    def test_eof_before_headers(self) -> None:
        parser = ResponseParser()
        parser.feed(b"HTTP/1.1 101 Swi")
        with pytest.raises(InvalidMessage, match="connection closed"):
            parser.feed_eof()

    def test_body_limit(self) -> None:
        parser = ResponseParser()
        parser.feed(b"HTTP/1.1 500 Oops\r\n\r\n")
        parser.feed(b"x" * MAX_BODY)
        with pytest.raises(InvalidMessage, match=f"body exceeds {MAX_BODY} bytes"):
            parser.feed(b"x")

    def test_limits(self) -> None:
        data = b"HTTP/1.1 101 Switching Protocols\r\nA: 1\r\nB: 2\r\n\r\n"
        with pytest.raises(HandshakeError) as info:
            ResponseParser(max_headers=1).feed(data)
        assert info.value.status_hint == 431
        with pytest.raises(HandshakeError, match="exceeds 20 bytes"):
            ResponseParser(max_header_bytes=20).feed(data)

    def test_malformed(self) -> None:
        with pytest.raises(InvalidMessage):
            ResponseParser().feed(b"HTTP/1.1 abc\r\n\r\n")
