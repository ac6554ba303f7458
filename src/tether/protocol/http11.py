"""HTTP/1.1 for the opening handshake and a few plain routes, on httptools (llhttp, Node's parser).

Parsing is incremental (bytes in, a :class:`Request` or :class:`Response` out) and bounded: the
request target, the number of header fields and the size of the header block have hard limits,
checked before anything past them is buffered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import httptools

from ..accel import pack_fields, parse_upgrade_head
from ..exceptions import HandshakeError, InvalidMessage

__all__ = [
    "Headers",
    "Request",
    "Response",
    "RequestParser",
    "ResponseParser",
    "parse_upgrade_request",
    "MAX_REQUEST_LINE",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_BODY",
]

MAX_REQUEST_LINE = 8192
MAX_HEADERS = 128
MAX_HEADER_BYTES = 16384
MAX_BODY = 65536


class Headers:
    """HTTP header fields: case-insensitive names, repeated fields kept in order."""

    __slots__ = ("_items", "_index")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # The fields, or after compact() the same packed in one string ("name:value" lines).
        self._items: list[tuple[str, str]] | str = list(items)
        # lowercased name -> values, built on the first lookup and kept up to date by add().
        self._index: dict[str, list[str]] | None = None

    def _fields(self) -> list[tuple[str, str]]:
        items = self._items
        if type(items) is str:  # packed by compact(): unpack on first use
            unpacked: list[tuple[str, str]] = []
            if items:
                for line in items.split("\n"):
                    name, _, value = line.partition(":")
                    unpacked.append((name, value))
            self._items = items = unpacked
        return items  # type: ignore[return-value]

    def _lookup(self) -> dict[str, list[str]]:
        """The index by lowercased name (shared: callers must not modify it)."""
        index = self._index
        if index is None:
            index = {}
            for name, value in self._fields():
                key = name.lower()
                values = index.get(key)
                if values is None:
                    index[key] = [value]
                else:
                    values.append(value)
            self._index = index
        return index

    def compact(self) -> None:
        """Pack the fields in one string and drop the lookup index (both rebuilt on the next
        use): for headers kept long after their last lookup, such as a connection's request
        and response once the handshake is done. About a kilobyte less per connection."""
        self._index = None
        items = self._items
        if type(items) is list:
            # Reversible unless a name holds ":" or a field a newline, which parsed and add()ed
            # fields never do (None then: kept as they are).
            packed = pack_fields(items)
            if packed is not None:
                self._items = packed

    def add(self, name: str, value: str) -> None:
        """Append a field; CR and LF are refused so a value can never split a header."""
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"invalid header field {name!r}")
        self._fields().append((name, value))
        index = self._index
        if index is not None:
            index.setdefault(name.lower(), []).append(value)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        values = self._lookup().get(name.lower())
        return values[:] if values is not None else []

    def get(self, name: str, default: str | None = None) -> str | None:
        """The values of ``name`` joined with ", " (RFC 9110 §5.3), or ``default``."""
        values = self._lookup().get(name.lower())
        return ", ".join(values) if values is not None else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return f"Headers({self._fields()!r})"

    def serialize(self) -> bytes:
        """The fields as they go on the wire, each followed by CRLF."""
        return "".join([f"{k}: {v}\r\n" for k, v in self._fields()]).encode("latin-1")


class Request:
    """An HTTP request, as received by a server or built by a client.

    Attributes:
        method: "GET", ...
        target: the request target as sent, e.g. ``/chat?token=x``.
        path: the target up to ``?``.
        query: the target after ``?`` ("" if none).
        headers: the header fields.
        http_version: "1.1", ...
        remote_address: the peer's address, set by the I/O layer that received the request
            (None in the sans-I/O core).
    """

    __slots__ = (
        "method", "target", "path", "query", "headers", "http_version", "remote_address",
        "_params",
    )

    def __init__(
        self, method: str, target: str, headers: Headers, http_version: str = "1.1"
    ) -> None:
        self.method = method
        self.target = target
        self.path, _, self.query = target.partition("?")
        self.headers = headers
        self.http_version = http_version
        self.remote_address: Any = None
        self._params: dict[str, list[str]] | None = None

    @property
    def query_params(self) -> dict[str, list[str]]:
        """The query string decoded: name -> list of values."""
        if self._params is None:
            self._params = parse_qs(self.query, keep_blank_values=True)
        return self._params

    @property
    def cookies(self) -> dict[str, str]:
        """The cookies of the Cookie header(s): name -> value (malformed ones skipped)."""
        jar: dict[str, str] = {}
        for value in self.headers.get_all("Cookie"):
            cookie = SimpleCookie()
            try:
                cookie.load(value)
            except CookieError:
                continue
            jar.update((name, morsel.value) for name, morsel in cookie.items())
        return jar

    def serialize(self) -> bytes:
        head = f"{self.method} {self.target} HTTP/{self.http_version}\r\n".encode("latin-1")
        return head + self.headers.serialize() + b"\r\n"

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path})"


class Response:
    """An HTTP response, as built by a server or received by a client."""

    __slots__ = ("status", "reason", "headers", "body")

    def __init__(
        self, status: int, headers: Headers | None = None, body: bytes = b"", reason: str = ""
    ) -> None:
        self.status = status
        self.reason = reason or _reason_phrase(status)
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def serialize(self) -> bytes:
        status, reason = self.status, self.reason
        head = _STATUS_LINES.get(status)
        if head is None or reason != _REASONS[status]:
            head = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
        return b"".join((head, self.headers.serialize(), b"\r\n", self.body))

    def __repr__(self) -> str:
        return f"Response({self.status} {self.reason})"


_REASONS: dict[int, str] = {int(status): status.phrase for status in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {
    status: f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
    for status, reason in _REASONS.items()
}


def _reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_ParserUpgrade = httptools.HttpParserUpgrade
_ParserError = httptools.HttpParserError


class _Parser:
    """What request and response parsing share: header collection under limits."""

    def __init__(self, max_headers: int, max_header_bytes: int) -> None:
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.headers = Headers()
        self._items = self.headers._fields()
        self.header_bytes = 0
        self.headers_complete = False
        self.message_complete = False
        self.body = bytearray()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        items = self._items
        if len(items) >= self.max_headers:
            raise HandshakeError(f"more than {self.max_headers} header fields", 431)
        # Header values are ISO-8859-1 at most (RFC 9110 §5.5); latin-1 never fails.
        items.append((name.decode("latin-1"), value.decode("latin-1").strip()))

    def on_headers_complete(self) -> None:
        self.headers_complete = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_BODY:
            raise InvalidMessage(f"body exceeds {MAX_BODY} bytes")
        self.body += body

    def on_message_complete(self) -> None:
        self.message_complete = True

    def _feed(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
              data: bytes) -> bytes | None:
        """Feed ``data``; once the headers are complete, return the bytes after the message
        (after an upgrade: the start of the WebSocket stream)."""
        if self.headers_complete:
            return self._feed_parser(parser, data)
        # Never hand the parser more than the header block may hold.
        allowance = self.max_header_bytes - self.header_bytes
        if len(data) <= allowance:
            head, rest = data, b""
        else:
            head, rest = data[:allowance], data[allowance:]
        self.header_bytes += len(head)
        leftover = self._feed_parser(parser, head)
        if not self.headers_complete:
            if rest or self.header_bytes >= self.max_header_bytes:
                raise HandshakeError(f"header block exceeds {self.max_header_bytes} bytes", 431)
            return None
        if not rest:
            return leftover
        if self.message_complete:
            return leftover + rest
        return self._feed_parser(parser, rest)  # the rest of a body

    def _feed_parser(
        self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, data: bytes
    ) -> bytes:
        try:
            parser.feed_data(data)
        except _ParserUpgrade as exc:
            args = exc.args
            self.message_complete = True
            return data[args[0]:] if args else b""
        except _ParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, HandshakeError) else None
            if cause is not None:
                raise cause from None
            if self.headers_complete and "Upgrade" in str(exc):
                # llhttp stops at every 101, but httptools reports an upgrade only when the
                # Upgrade and Connection headers say so. Hand the response over: the caller's
                # checks then say what is missing.
                self.message_complete = True
                return b""
            raise InvalidMessage(f"invalid HTTP message: {exc}") from None
        return b""


class RequestParser(_Parser):
    """Parse one HTTP request incrementally: :meth:`feed` until it returns a result.

    Raises:
        HandshakeError: with ``status_hint`` 400 (malformed), 414 (target too long) or 431
            (too many or too large header fields).
    """

    def __init__(
        self,
        max_request_line: int = MAX_REQUEST_LINE,
        max_headers: int = MAX_HEADERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        super().__init__(max_headers, max_header_bytes)
        self.max_request_line = max_request_line
        self._url = b""
        self._parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        url = self._url + url if self._url else url
        self._url = url
        if len(url) > self.max_request_line:
            raise HandshakeError(f"request target exceeds {self.max_request_line} bytes", 414)

    def feed(self, data: bytes) -> tuple[Request, bytes] | None:
        """Feed received bytes; once the header block is complete, return the request and
        the bytes that follow it (the start of the WebSocket stream, or a body)."""
        leftover = self._feed(self._parser, data)
        if leftover is None:
            return None
        parser = self._parser
        method = parser.get_method()
        return Request(
            _METHODS.get(method) or method.decode("ascii", "replace"),
            self._url.decode("latin-1"),
            self.headers,
            parser.get_http_version(),
        ), leftover


_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


def parse_upgrade_request(
    data: bytes,
    max_request_line: int = MAX_REQUEST_LINE,
    max_headers: int = MAX_HEADERS,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> tuple[Request, bytes] | None:
    """The fast path for the common case: ``data`` starts with a whole, plain WebSocket upgrade
    request (``GET /... HTTP/1.1``, Upgrade and "Connection: upgrade", no body, printable
    ASCII) within the limits. Returns what :meth:`RequestParser.feed` would return for it, or
    ``None`` for anything else, which :class:`RequestParser` then handles (or refuses).
    The parsing is :func:`tether.accel.parse_upgrade_head` (C when built)."""
    parsed = parse_upgrade_head(data, max_request_line, max_headers, max_header_bytes)
    if parsed is None:
        return None
    target, items, index, end = parsed
    headers = Headers.__new__(Headers)
    headers._items = items
    headers._index = index
    return Request("GET", target, headers, "1.1"), data[end:]


class ResponseParser(_Parser):
    """Parse one HTTP response incrementally, with its body when it is not a 101."""

    def __init__(
        self, max_headers: int = MAX_HEADERS, max_header_bytes: int = MAX_HEADER_BYTES
    ) -> None:
        super().__init__(max_headers, max_header_bytes)
        self._reason = b""
        self._parser = httptools.HttpResponseParser(self)
        self._leftover = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def feed(self, data: bytes) -> tuple[Response, bytes] | None:
        """Feed received bytes; return the response and the bytes after it once complete.

        A 101 response is complete at the end of its header block; any other at the end of
        its body (see :meth:`feed_eof` for a body delimited by the end of the connection).
        """
        leftover = self._feed(self._parser, data)
        if leftover is None:
            return None
        status = self._parser.get_status_code()
        if status != 101 and not self.message_complete:
            return None
        return self._response(status), leftover

    def feed_eof(self) -> Response:
        """The connection ended: return what was received, or raise if nothing usable."""
        if not self.headers_complete:
            raise InvalidMessage("connection closed while reading the HTTP response")
        return self._response(self._parser.get_status_code())

    def _response(self, status: int) -> Response:
        reason = self._reason.decode("latin-1")
        return Response(status, self.headers, bytes(self.body), reason)
