"""Every exception tether raises.

::

    TetherError
    ├── ProtocolError            the peer broke RFC 6455/7692; carries the close code to send
    │   ├── FrameError           1002: opcode, reserved bits, masking, control-frame rules
    │   ├── InvalidUTF8          1007: a text message or close reason is not UTF-8
    │   ├── MessageTooBig        1009: a message passes max_message_size
    │   └── ExtensionError       1002: an extension's data could not be decoded
    ├── HandshakeError           the opening handshake failed; carries status_hint
    │   ├── InvalidMessage       the HTTP request or response could not be parsed
    │   ├── InvalidStatus        the server answered with something other than 101
    │   └── ProxyError           the HTTP proxy did not open the tunnel (CONNECT)
    ├── InvalidState             local misuse, e.g. sending after close; raised at the call
    ├── InvalidURI               not a ws:// or wss:// URI
    ├── ConnectionClosed         the connection is closed; carries what was sent and received
    │   ├── ConnectionClosedOK     ... with 1000 or 1001 on both sides
    │   └── ConnectionClosedError  ... any other way
    └── HubError                 the hub could not do what was asked
        └── BackendUnavailable   the backend is down or closed: retry later

Protocol errors never escape :meth:`tether.protocol.Connection.receive_data`: the core records
them, fails the connection with their close code, and the I/O layer raises
:class:`ConnectionClosedError` with the recorded error as ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocol.events import CloseFrame
    from .protocol.http11 import Response

__all__ = [
    "TetherError",
    "ProtocolError",
    "FrameError",
    "InvalidUTF8",
    "MessageTooBig",
    "ExtensionError",
    "HandshakeError",
    "InvalidMessage",
    "InvalidStatus",
    "ProxyError",
    "InvalidState",
    "InvalidURI",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "HubError",
    "BackendUnavailable",
]


class TetherError(Exception):
    """Base class of every exception raised by tether."""


class ProtocolError(TetherError):
    """The peer sent bytes or a frame sequence that breaks the protocol.

    Attributes:
        close_code: the close code the connection is failed with.
    """

    close_code: int = 1002


class FrameError(ProtocolError):
    """A frame breaks RFC 6455's framing rules (1002)."""

    close_code = 1002


class InvalidUTF8(ProtocolError):
    """A text message or a close reason is not valid UTF-8 (1007)."""

    close_code = 1007


class MessageTooBig(ProtocolError):
    """A message passes the configured size limit (1009)."""

    close_code = 1009


class ExtensionError(ProtocolError):
    """An extension could not decode a frame, e.g. corrupt deflate data (1002)."""

    close_code = 1002


class HandshakeError(TetherError):
    """The opening handshake failed.

    Attributes:
        status_hint: the HTTP status a server answers this failure with.
    """

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class InvalidMessage(HandshakeError):
    """The HTTP request or response of the handshake could not be parsed."""


class InvalidStatus(HandshakeError):
    """The server answered the handshake with a status other than 101.

    Attributes:
        response: the whole response; ``response.status`` and ``response.body``.
    """

    def __init__(self, response: Response) -> None:
        body = response.body[:200].decode("utf-8", "replace").strip()
        detail = f": {body}" if body else ""
        super().__init__(
            f"server rejected WebSocket connection: HTTP {response.status}{detail}",
            response.status,
        )
        self.response = response


class ProxyError(HandshakeError):
    """The HTTP proxy did not open the tunnel.

    Attributes:
        response: the proxy's answer (``response.status``, ``.reason``, ``.headers``; the body
            is not read), or ``None`` when it sent no valid HTTP response.
    """

    def __init__(self, message: str, response: Response | None = None) -> None:
        super().__init__(message, response.status if response is not None else 502)
        self.response = response


class InvalidState(TetherError):
    """An operation is not allowed in the connection's current state."""


class InvalidURI(TetherError):
    """A URI is not a valid ws:// or wss:// URI."""


class ConnectionClosed(TetherError):
    """The WebSocket connection is closed.

    Attributes:
        rcvd: the close frame received from the peer, or ``None``.
        sent: the close frame sent to the peer, or ``None``.
        rcvd_then_sent: whether the peer started the closing handshake.
    """

    def __init__(
        self,
        rcvd: CloseFrame | None,
        sent: CloseFrame | None,
        rcvd_then_sent: bool | None = None,
    ) -> None:
        self.rcvd = rcvd
        self.sent = sent
        self.rcvd_then_sent = rcvd_then_sent
        super().__init__()  # described when shown (most are caught and never printed)

    def __str__(self) -> str:
        return self._describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()!r})"

    def __reduce__(self) -> Any:
        return type(self), (self.rcvd, self.sent, self.rcvd_then_sent)

    @property
    def code(self) -> int:
        """The close code as the browser's CloseEvent reports it (1006 if none)."""
        return self.rcvd.code if self.rcvd is not None else 1006

    @property
    def reason(self) -> str:
        """The close reason received from the peer ("" if none)."""
        return self.rcvd.reason if self.rcvd is not None else ""

    def _describe(self) -> str:
        if self.rcvd is None and self.sent is None:
            return "no close frame received or sent"
        if self.rcvd is None:
            return f"sent {self.sent}; no close frame received"
        if self.sent is None:
            return f"received {self.rcvd}; no close frame sent"
        if self.rcvd_then_sent:
            return f"received {self.rcvd}; then sent {self.sent}"
        return f"sent {self.sent}; then received {self.rcvd}"


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (1000 or 1001 both ways)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed abnormally or with an error code."""


class HubError(TetherError):
    """Base class of the hub's errors."""


class BackendUnavailable(HubError):
    """The backend cannot serve the request now (closed, down, disk full): retry later.
    The hub answers the client with an ``unavailable`` error and keeps the connection."""
