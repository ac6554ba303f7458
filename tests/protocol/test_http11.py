"""tether.protocol.http11: header fields, requests, responses and their bounded parsers
(RFC 9110, RFC 9112)."""

from __future__ import annotations

import random

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
    parse_upgrade_request,
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

    def test_add_after_lookup(self) -> None:
        # Lookups go through an index built on the first one; add() keeps it up to date.
        headers = Headers([("A", "1")])
        assert headers.get_all("b") == [] and "B" not in headers
        headers.add("b", "2")
        headers.add("A", "3")
        assert headers.get_all("B") == ["2"] and "B" in headers
        assert headers.get("a") == "1, 3"
        assert list(headers) == [("A", "1"), ("b", "2"), ("A", "3")]

    def test_get_all_returns_a_copy(self) -> None:
        headers = Headers([("A", "1")])
        headers.get_all("A").append("2")
        assert headers.get_all("A") == ["1"]

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


# The sample upgrade request and variations on it for the fast path.
UPGRADE = (
    b"GET /chat?x=1 HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x80ab"
)


def _parsed(result: tuple[Request, bytes] | None) -> object:
    if result is None:
        return None
    request, rest = result
    return (request.method, request.target, request.http_version, list(request.headers), rest)


class TestParseUpgradeRequest:
    """The fast path for a whole upgrade request: the same result as RequestParser, or None
    (RequestParser then decides); never a request that RequestParser would refuse."""

    @pytest.mark.parametrize(
        "data",
        [
            UPGRADE,
            request_bytes(),
            request_bytes(replace={"Connection": "keep-alive, Upgrade"}, add=[("X-Empty", "")]),
            request_bytes(add=[("X-A", "1"), ("x-a", "  2  "), ("Cookie", "a=b; c=d")]),
            b"GET / HTTP/1.1\r\nUpgrade:h2c\r\nConnection:upgrade\r\n\r\n",
        ],
    )
    def test_same_as_request_parser(self, data: bytes) -> None:
        fast = parse_upgrade_request(data)
        assert fast is not None
        assert _parsed(fast) == _parsed(RequestParser().feed(data))
        headers = fast[0].headers
        assert headers._lookup() == Headers(list(headers))._lookup()

    @pytest.mark.parametrize(
        "data",
        [
            UPGRADE[:40],  # incomplete
            b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n",  # not an upgrade
            UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive"),
            UPGRADE.replace(b"Upgrade: websocket", b"Upgrade:"),
            UPGRADE.replace(b"GET", b"POST"),
            UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"),
            UPGRADE.replace(b"/chat", b"http://h/chat"),
            UPGRADE.replace(b"h:1", b"caf\xe9"),  # not ASCII
            UPGRADE.replace(b"h:1", b"a\tb"),  # HTAB
            UPGRADE.replace(b"Host:", b"Host :"),
            UPGRADE.replace(b"Host: h:1\r\n", b"Host: h:1\r\n continued\r\n"),
            UPGRADE.replace(b"Host: h:1\r\n", b"Host: h:1\n"),
            UPGRADE.replace(b"Host: h:1\r\n", b"Content-Length: 2\r\n"),
            UPGRADE.replace(b"Host: h:1\r\n", b": empty name\r\n"),
            UPGRADE.replace(b"Host: h:1\r\n", b"No colon\r\n"),
        ],
    )
    def test_anything_else_is_left_to_the_parser(self, data: bytes) -> None:
        assert parse_upgrade_request(data) is None

    def test_limits_are_left_to_the_parser(self) -> None:
        assert parse_upgrade_request(UPGRADE, max_request_line=8) is None
        assert parse_upgrade_request(UPGRADE, max_headers=4) is None
        head = UPGRADE.index(b"\r\n\r\n") + 4
        assert parse_upgrade_request(UPGRADE, max_header_bytes=head - 1) is None
        assert parse_upgrade_request(UPGRADE, max_request_line=9, max_headers=5,
                                     max_header_bytes=head)

    def test_differential(self) -> None:
        # Random edits of upgrade requests: wherever the fast path answers, RequestParser
        # answers the same.
        rnd = random.Random(6455)
        pieces = [b" ", b"\t", b"\r", b"\n", b"\r\n", b":", b",", b"\x00", b"\x7f", b"\x85",
                  b"\xa0", b"a", b"/", b"?", b"%", b'"', b"upgrade", b"keep-alive", b"X: y\r\n",
                  b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
                  b"Upgrade: a\r\n", b"Connection: close\r\n", b"HTTP/1.0", b"\r\n\r\n"]
        bases = [UPGRADE, UPGRADE.replace(b"Connection: Upgrade", b"Connection: a,Upgrade ,b"),
                 b"GET /a HTTP/1.1\r\nConnection: close\r\nConnection: upgrade\r\nUpgrade: x\r\n"
                 b"X:\r\n\r\nzz"]
        limits = [(8192, 128, 16384), (10, 128, 16384), (8192, 5, 16384), (8192, 128, 150)]
        hits = 0
        for _ in range(3000):
            data = bytearray(rnd.choice(bases))
            for _ in range(rnd.choice((1, 1, 2, 3))):
                i = rnd.randrange(len(data) + 1)
                op = rnd.random()
                if op < 0.4:
                    data[i:i] = rnd.choice(pieces)
                elif op < 0.7:
                    del data[i:i + rnd.randint(1, 3)]
                else:
                    data[i:i + 1] = rnd.choice(pieces)
            limit = rnd.choice(limits)
            fast = parse_upgrade_request(bytes(data), *limit)
            if fast is None:
                continue
            hits += 1
            assert _parsed(fast) == _parsed(RequestParser(*limit).feed(bytes(data))), data
        assert hits > 300


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


def test_compact_drops_the_index_and_lookups_still_work() -> None:
    headers = Headers([("Host", "a"), ("X-Two", "1"), ("x-two", "2")])
    assert headers.get_all("x-TWO") == ["1", "2"]  # builds the index
    headers.compact()
    assert headers._index is None
    assert headers.get("host") == "a" and "X-TWO" in headers
    headers.add("Host", "b")
    assert headers.get_all("HOST") == ["a", "b"]


def test_compact_packs_the_fields_and_unpacks_them_unchanged() -> None:
    fields = [("Host", "example.com:80"), ("X-Empty", ""), ("Cookie", "a=1; b=:2"),
              ("x-two", "1"), ("X-Two", " spaced value ")]
    headers = Headers(fields)
    headers.compact()
    assert isinstance(headers._items, str)  # one string while idle
    assert list(headers) == fields
    assert headers.get_all("x-two") == ["1", " spaced value "]
    assert headers.serialize().startswith(b"Host: example.com:80\r\n")
    empty = Headers()
    empty.compact()
    assert list(empty) == [] and len(empty) == 0


def test_compact_keeps_fields_it_could_not_unpack_exactly() -> None:
    """Fields built by hand (not parsed, not add()ed) may hold what the packed form cannot:
    those stay as they are."""
    odd = [("Name:With-Colon", "v"), ("X", "line\nbreak")]
    for field in odd:
        headers = Headers([field])
        headers.compact()
        assert list(headers) == [field]
