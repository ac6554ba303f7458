"""The floor of uvicorn's WebSocket handshake: a ``--ws`` engine that does the least a
WebSocket server can (bench/asgi.py's ``uvicorn-floor``, row g only).

It answers the upgrade request uvicorn hands it with a 101 (the accept key, nothing else:
no validation, no scope, no app, no task, no heartbeat) and the client's close frame with a
close frame, then closes. What it costs per handshake is what uvicorn's own HTTP layer costs
before any engine runs (accepting the socket, its HTTP protocol object, httptools' parse,
rebuilding the request for the engine), plus two writes and a close. Never use it to serve.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FloorProtocol(asyncio.Protocol):
    def __init__(self, config: Any, server_state: Any, app_state: Any,
                 _loop: Any = None) -> None:
        self.transport: Any = None
        self.opened = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.opened:  # the client's close frame (g sends nothing else)
            self.transport.write(b"\x88\x02\x03\xe8")
            self.transport.close()
            return
        self.opened = True
        start = data.lower().index(b"sec-websocket-key:") + 18
        key = data[start:data.index(b"\r\n", start)].strip()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                             + b"\r\n\r\n")

    def shutdown(self) -> None:
        self.transport.close()
