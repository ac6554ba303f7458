"""The sans-I/O WebSocket protocol core: RFC 6455 and RFC 7692, bytes in, events and bytes out.

Nothing in this package does I/O, reads a clock or imports asyncio.
"""

from .client import ClientProtocol, WebSocketURI, parse_uri
from .connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Side, State
from .events import BinaryMessage, CloseFrame, Event, Ping, Pong, TextMessage
from .frames import CloseCode, Opcode
from .http11 import Headers, Request, Response
from .server import ServerProtocol

__all__ = [
    "BinaryMessage",
    "ClientProtocol",
    "CloseCode",
    "CloseFrame",
    "Connection",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Event",
    "Headers",
    "Opcode",
    "Ping",
    "Pong",
    "Request",
    "Response",
    "ServerProtocol",
    "Side",
    "State",
    "TextMessage",
    "WebSocketURI",
    "parse_uri",
]
