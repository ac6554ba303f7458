"""The server's side: the opening handshake (RFC 6455 §4.2) in front of a :class:`Connection`.

Flow: :meth:`receive_data` until a :class:`Request` event; the application decides; then
``send_response(accept(request))`` to upgrade, or ``send_response(reject(status, text))``.
An unparseable request is answered by the core itself (400, 414 or 431) and the connection closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..exceptions import HandshakeError
from .connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Side, State
from .extensions.base import Extension, ServerExtensionFactory
from .extensions.permessage_deflate import ServerPerMessageDeflateFactory
from .handshake import accept_key, check_request, error_response_headers
from .headers import parse_extensions, parse_token_list, serialize_extensions
from .http11 import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Headers,
    Request,
    RequestParser,
    Response,
    parse_upgrade_request,
)

__all__ = ["ServerProtocol", "SelectSubprotocol"]

SelectSubprotocol = Callable[[Sequence[str], Sequence[str]], "str | None"]
"""(offered by the client, supported by the server) -> chosen subprotocol or None."""


# The default extensions, shared by every connection (the factory only holds its settings).
_DEFAULT_EXTENSIONS: tuple[ServerExtensionFactory, ...] = (ServerPerMessageDeflateFactory(),)

_ACCEPT_HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def _first_supported(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The server's most preferred subprotocol among those the client offered."""
    for subprotocol in supported:
        if subprotocol in offered:
            return subprotocol
    return None


class ServerProtocol(Connection):
    """A server connection, from the upgrade request to the end.

    Args:
        subprotocols: the subprotocols the server speaks, most preferred first.
        select_subprotocol: chooses among the client's offer; by default the server's most
            preferred one that the client offered.
        extensions: extension factories, in order of preference; by default
            permessage-deflate with memory-frugal settings. Pass ``()`` for none.
        max_message_size, auto_close_reply: see :class:`Connection`.
        max_request_line, max_headers, max_header_bytes: limits on the upgrade request.

    Attributes:
        request: the upgrade request, once received.
        response: the handshake response, once sent.
        handshake_error: why the handshake failed, or ``None``.
        subprotocol: the negotiated subprotocol, or ``None``.
    """

    __slots__ = (
        "subprotocols",
        "select_subprotocol",
        "extension_factories",
        "request",
        "response",
        "handshake_error",
        "subprotocol",
        "_limits",
        "_parser",
        "_pending",
        "_key",
        "_accepted",
        "_after_request",
    )

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = (),
        select_subprotocol: SelectSubprotocol | None = None,
        extensions: Sequence[ServerExtensionFactory] | None = None,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        auto_close_reply: bool = True,
        max_request_line: int = MAX_REQUEST_LINE,
        max_headers: int = MAX_HEADERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        super().__init__(Side.SERVER, state=State.CONNECTING,
            max_message_size=max_message_size, auto_close_reply=auto_close_reply,
        )
        # Tuples: a server passes the same ones to every connection, and tuple() of a tuple is
        # that tuple, so idle connections share them.
        self.subprotocols = tuple(subprotocols)
        self.select_subprotocol = select_subprotocol or _first_supported
        self.extension_factories = (
            _DEFAULT_EXTENSIONS if extensions is None else tuple(extensions)
        )
        self.request: Request | None = None
        self.response: Response | None = None
        self.handshake_error: HandshakeError | None = None
        self.subprotocol: str | None = None
        self._limits = (max_request_line, max_headers, max_header_bytes)
        # The parser of a request that did not come whole in the first bytes (see receive_data).
        self._parser: RequestParser | None = None
        self._pending: tuple[Extension | None, str | None] | None = None
        self._key: str | None = None  # set by validate()
        # The last 101 built by accept(): (response, its headers, its serialization).
        self._accepted: tuple[Response, Headers, bytes] | None = None
        self._after_request = b""

    def _receive_handshake(self, data: bytes) -> bool:
        parser = self._parser
        if parser is None:
            if self.request is not None:  # request complete, waiting for the response
                self._after_request += data
                return True
            # The first bytes: usually the whole request, which the fast path takes.
            result = parse_upgrade_request(data, *self._limits)
            if result is not None:
                self.request, self._after_request = result
                self._events.append(self.request)
                return True
            parser = self._parser = RequestParser(*self._limits)
        try:
            result = parser.feed(data)
        except HandshakeError as exc:
            self._parser = None
            self.handshake_error = exc
            self.send_response(self.reject(exc.status_hint, str(exc)))
            return True
        if result is not None:
            self.request, self._after_request = result
            self._parser = None
            self._events.append(self.request)
        return True

    def receive_eof(self) -> None:
        if self.state is State.CONNECTING:
            self._parser = None
            self.handshake_error = self.handshake_error or HandshakeError(
                "connection closed during the opening handshake"
            )
        super().receive_eof()

    def validate(self, request: Request) -> Response | None:
        """Check the upgrade request alone (RFC 6455 §4.2.1), before policies such as
        authentication run: ``None`` if it is a valid upgrade, else the error response (426
        for plain HTTP or a wrong version, 400 otherwise) to send."""
        try:
            self._key = check_request(request)
        except HandshakeError as exc:
            self.handshake_error = exc
            return self.reject(exc.status_hint, str(exc))
        return None

    def accept(self, request: Request) -> Response:
        """Validate the upgrade request and build the response: 101, or an error response
        (426 or 400) that says what was wrong. Send it with :meth:`send_response`."""
        try:
            key = self._key if self._key is not None else check_request(request)
            index = request.headers._lookup()
            if "sec-websocket-extensions" in index and self.extension_factories:
                extension, extensions_header = self._negotiate_extensions(request.headers)
            else:
                extension, extensions_header = None, ""
            if "sec-websocket-protocol" in index:
                subprotocol = self._negotiate_subprotocol(request.headers)
            else:
                subprotocol = None
        except HandshakeError as exc:
            self.handshake_error = exc
            return self.reject(exc.status_hint, str(exc))
        accept = accept_key(key)
        headers = Headers(
            [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)]
        )
        if extensions_header:
            headers.add("Sec-WebSocket-Extensions", extensions_header)
        if subprotocol is not None:
            headers.add("Sec-WebSocket-Protocol", subprotocol)
        response = Response(101, headers, b"", "Switching Protocols")
        self._pending = (extension, subprotocol)
        if not extensions_header and subprotocol is None:  # the three fields above only
            # What response.serialize() returns, unless the response is changed before it is
            # sent (send_response checks).
            self._accepted = (response, headers, _ACCEPT_HEAD + accept.encode() + b"\r\n\r\n")
        return response

    def reject(self, status: int, text: str, headers: Headers | None = None) -> Response:
        """Build a plain-text error response; ``text`` becomes its one-line body."""
        if self.handshake_error is None:
            self.handshake_error = HandshakeError(text.strip(), status)
        body = (text.rstrip("\n") + "\n").encode()
        response_headers = error_response_headers(status, body)
        for name, value in headers or ():
            response_headers.add(name, value)
        return Response(status, response_headers, body)

    def send_response(self, response: Response) -> None:
        """Send the handshake response. A 101 opens the connection (and processes any frames
        that followed the request); anything else closes it."""
        if self.state is not State.CONNECTING:
            raise RuntimeError("the handshake response was already sent")
        self.response = response
        accepted = self._accepted
        if (
            accepted is not None
            and accepted[0] is response
            and response.headers is accepted[1]
            and len(accepted[1]._fields()) == 3  # no field added since
            and response.status == 101
            and response.reason == "Switching Protocols"
            and not response.body
        ):
            self._output.append(accepted[2])  # response.serialize(), built by accept()
        else:
            self._output.append(response.serialize())
        self._accepted = None
        if response.status == 101 and self._pending is not None:
            self.extension, self.subprotocol = self._pending
            self.state = State.OPEN
            data = self._after_request
            if data:
                self._after_request = b""
                self.receive_data(data)
        else:
            if self.handshake_error is None:
                self.handshake_error = HandshakeError(
                    f"handshake rejected with HTTP {response.status}", response.status
                )
            self.input_closed = True
            self.state = State.CLOSED
            self._send_eof()

    def _negotiate_extensions(self, headers: Headers) -> tuple[Extension | None, str]:
        values = headers.get_all("Sec-WebSocket-Extensions")
        if not values or not self.extension_factories:
            return None, ""
        try:
            offers = parse_extensions(values)
        except HandshakeError as exc:
            raise HandshakeError(f"invalid Sec-WebSocket-Extensions header: {exc}") from None
        # RFC 6455 §9.1: offers are listed in the client's order of preference; accept the
        # first one a factory accepts. tether knows one extension using RSV1, so one at most.
        for name, params in offers:
            for factory in self.extension_factories:
                if factory.name != name:
                    continue
                accepted = factory.accept(params)
                if accepted is not None:
                    response_params, extension = accepted
                    return extension, serialize_extensions([(name, response_params)])
        return None, ""

    def _negotiate_subprotocol(self, headers: Headers) -> str | None:
        values = headers.get_all("Sec-WebSocket-Protocol")
        if not values:
            return None
        try:
            offered = parse_token_list(values, "subprotocol")
        except HandshakeError as exc:
            raise HandshakeError(f"invalid Sec-WebSocket-Protocol header: {exc}") from None
        chosen = self.select_subprotocol(offered, self.subprotocols)
        if chosen is not None and chosen not in offered:
            raise ValueError(f"select_subprotocol returned {chosen!r}, which was not offered")
        return chosen
