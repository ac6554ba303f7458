"""The client's side: the opening handshake (RFC 6455 §4.1) in front of a :class:`Connection`.

Flow: ``send_request(connect())``; :meth:`receive_data` until a :class:`Response` event (the
connection is OPEN) or ``handshake_error`` is set (the connection is CLOSED).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..exceptions import HandshakeError, InvalidStatus, InvalidURI
from .connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Side, State
from .extensions.base import ClientExtensionFactory, Extension
from .extensions.permessage_deflate import ClientPerMessageDeflateFactory
from .handshake import accept_key, generate_key, has_token
from .headers import parse_extensions, parse_token_list, serialize_extensions
from .http11 import MAX_HEADER_BYTES, MAX_HEADERS, Headers, Request, Response, ResponseParser

__all__ = ["ClientProtocol", "WebSocketURI", "parse_uri", "redact_uri", "default_client_extensions"]


@dataclass(frozen=True)
class WebSocketURI:
    """A parsed ws:// or wss:// URI (RFC 6455 §3)."""

    secure: bool
    host: str
    port: int
    resource_name: str

    @property
    def host_header(self) -> str:
        """The Host header value: the port only when not the default one."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def redact_uri(uri: str) -> str:
    """``uri`` as error messages and logs may show it: scheme, host, port and path, without
    the user:password, query and fragment, where tokens travel
    (``ws://alice:pw@host:8765/feed?token=T`` → ``ws://host:8765/feed``). Works on URIs too
    malformed to parse, since those end up in messages too."""
    base = uri.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = base.partition("://")
    if not sep:
        return base.rpartition("@")[2]
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def parse_uri(uri: str) -> WebSocketURI:
    """Parse a WebSocket URI.

    Raises:
        InvalidURI: not ws:// or wss://, no host, or it has a fragment (§3 forbids it).
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"{redact_uri(uri)} is not a valid URI: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise InvalidURI(f"{redact_uri(uri)} is not a WebSocket URI (ws:// or wss://)")
    if not parts.hostname:
        raise InvalidURI(f"{redact_uri(uri)} has no host")
    if parts.fragment:
        raise InvalidURI(
            f"{redact_uri(uri)} has a fragment, which WebSocket URIs may not have")
    secure = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return WebSocketURI(secure, parts.hostname, port or (443 if secure else 80), resource)


def default_client_extensions() -> list[ClientExtensionFactory]:
    """permessage-deflate, offered twice, in order of preference (RFC 7692 §5 allows several
    offers): first with context takeover, which compresses a stream of similar messages best
    and is what most servers accept; then with ``client_no_context_takeover``, for servers that
    only ask a client to reset its window when the client said it can (Autobahn's 13.2, 13.5,
    13.6). Both offer ``client_max_window_bits`` so the server may limit our window."""
    return [
        ClientPerMessageDeflateFactory(),
        ClientPerMessageDeflateFactory(client_no_context_takeover=True),
    ]


class ClientProtocol(Connection):
    """A client connection, from the upgrade request to the end.

    Args:
        uri: where to connect.
        origin: the Origin header to send, if any (browsers always send one).
        subprotocols: subprotocols to offer, most preferred first.
        extensions: extension factories to offer; by default permessage-deflate. ``()`` for none.
        headers: extra request header fields.
        max_message_size, auto_close_reply: see :class:`Connection`.

    Attributes:
        response: the handshake response, once received.
        handshake_error: why the handshake failed, or ``None``. An :class:`InvalidStatus`
            carries the server's response, its status and its body.
        subprotocol: the negotiated subprotocol, or ``None``.
    """

    def __init__(
        self,
        uri: WebSocketURI,
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        extensions: Sequence[ClientExtensionFactory] | None = None,
        headers: Sequence[tuple[str, str]] = (),
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        auto_close_reply: bool = True,
        max_headers: int = MAX_HEADERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        super().__init__(Side.CLIENT, state=State.CONNECTING,
            max_message_size=max_message_size, auto_close_reply=auto_close_reply,
        )
        self.uri = uri
        self.origin = origin
        self.subprotocols = list(subprotocols)
        self.extension_factories = (
            default_client_extensions() if extensions is None else list(extensions)
        )
        self.extra_headers = list(headers)
        self.key = generate_key()
        self.response: Response | None = None
        self.handshake_error: HandshakeError | None = None
        self.subprotocol: str | None = None
        self._parser = ResponseParser(max_headers, max_header_bytes)

    def connect(self) -> Request:
        """Build the upgrade request (§4.1); send it with :meth:`send_request`."""
        headers = Headers([("Host", self.uri.host_header)])
        headers.add("Upgrade", "websocket")
        headers.add("Connection", "Upgrade")
        headers.add("Sec-WebSocket-Key", self.key)
        headers.add("Sec-WebSocket-Version", "13")
        if self.origin is not None:
            headers.add("Origin", self.origin)
        if self.extension_factories:
            offers = [(f.name, f.offer()) for f in self.extension_factories]
            headers.add("Sec-WebSocket-Extensions", serialize_extensions(offers))
        if self.subprotocols:
            headers.add("Sec-WebSocket-Protocol", ", ".join(self.subprotocols))
        for name, value in self.extra_headers:
            headers.add(name, value)
        return Request("GET", self.uri.resource_name, headers)

    def send_request(self, request: Request) -> None:
        """Queue the upgrade request for sending."""
        self._output.append(request.serialize())

    def _receive_handshake(self, data: bytes) -> bool:
        try:
            result = self._parser.feed(data)
        except HandshakeError as exc:
            self._fail_handshake(exc)
            return True
        if result is not None:
            response, after = result
            self._process_response(response)
            if self.handshake_error is None and after:
                self.receive_data(after)
        return True

    def receive_eof(self) -> None:
        if self.state is State.CONNECTING:
            try:
                response = self._parser.feed_eof()
            except HandshakeError as exc:
                self._fail_handshake(exc)
            else:
                self._process_response(response)
        super().receive_eof()

    def _fail_handshake(self, exc: HandshakeError) -> None:
        self.handshake_error = exc
        self.input_closed = True
        self.state = State.CLOSED
        self._send_eof()

    def _process_response(self, response: Response) -> None:
        self.response = response
        try:
            extension, subprotocol = self._check_response(response)
        except HandshakeError as exc:
            self._fail_handshake(exc)
            return
        self.extension = extension
        self.subprotocol = subprotocol
        self.state = State.OPEN
        self._events.append(response)

    def _check_response(self, response: Response) -> tuple[Extension | None, str | None]:
        """Validate the server's response, §4.1 "the client MUST validate the server's response"."""
        if response.status != 101:
            raise InvalidStatus(response)
        headers = response.headers
        if not has_token(headers, "Upgrade", "websocket"):
            raise HandshakeError("response Upgrade header does not include websocket")
        if not has_token(headers, "Connection", "upgrade"):
            raise HandshakeError("response Connection header does not include Upgrade")
        accept = headers.get_all("Sec-WebSocket-Accept")
        if accept != [accept_key(self.key)]:
            raise HandshakeError("response Sec-WebSocket-Accept does not match the key")
        return self._check_extensions(headers), self._check_subprotocol(headers)

    def _check_extensions(self, headers: Headers) -> Extension | None:
        values = headers.get_all("Sec-WebSocket-Extensions")
        if not values:
            return None
        accepted = parse_extensions(values)
        if len(accepted) > 1:
            raise HandshakeError("response accepts more than one extension")
        name, params = accepted[0]
        # The response does not say which offer it accepts; with several offers of one
        # extension, the first factory that accepts the parameters decides.
        errors = []
        for factory in self.extension_factories:
            if factory.name == name:
                try:
                    return factory.accept(params)
                except HandshakeError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]
        # §9.1: the server may only accept extensions the client offered.
        raise HandshakeError(f"response accepts extension {name}, which was not offered")

    def _check_subprotocol(self, headers: Headers) -> str | None:
        values = parse_token_list(headers.get_all("Sec-WebSocket-Protocol"), "subprotocol")
        if not values:
            return None
        if len(values) > 1:
            raise HandshakeError("response selects more than one subprotocol")
        if values[0] not in self.subprotocols:
            raise HandshakeError(f"response selects subprotocol {values[0]}, which was not offered")
        return values[0]
