"""tether: a complete, fast WebSocket toolkit for Python.

Importing tether is cheap: the asyncio layer loads on first use of ``serve``, ``connect`` and the
other names below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    InvalidState,
    InvalidStatus,
    InvalidURI,
    ProtocolError,
    ProxyError,
    TetherError,
)
from .auth import OriginPolicy, TokenAuth
from .protocol import CloseCode, Headers, Request, Response, State

__version__ = "0.1.0"

__all__ = [
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "CloseCode",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HandshakeError",
    "Headers",
    "InvalidState",
    "InvalidStatus",
    "InvalidURI",
    "Listener",
    "ProtocolError",
    "ProxyError",
    "Request",
    "Response",
    "OriginPolicy",
    "Router",
    "Server",
    "State",
    "TetherError",
    "TokenAuth",
    "WebSocket",
    "broadcast",
    "connect",
    "run",
    "serve",
]

# The browser's readyState constants.
CONNECTING = State.CONNECTING
OPEN = State.OPEN
CLOSING = State.CLOSING
CLOSED = State.CLOSED

if TYPE_CHECKING:
    from .asyncio.broadcast import broadcast
    from .asyncio.client import connect
    from .asyncio.router import Router
    from .asyncio.connection import Listener, WebSocket
    from .asyncio.server import Server, serve
    from .asyncio.runner import run

_LAZY = {
    "broadcast": "tether.asyncio.broadcast",
    "Router": "tether.asyncio.router",
    "connect": "tether.asyncio.client",
    "WebSocket": "tether.asyncio.connection",
    "Listener": "tether.asyncio.connection",
    "Server": "tether.asyncio.server",
    "serve": "tether.asyncio.server",
    "run": "tether.asyncio.runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
