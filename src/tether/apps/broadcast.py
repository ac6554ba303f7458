"""The broadcast server from the articles: every message a client sends goes to every open
client, including the sender. A small page at ``/`` is the chat room's client.

Alone, a node broadcasts to its own clients. With a hub backend shared by several nodes
(``tether broadcast --redis URL``), each message goes through the backend's ``broadcast`` topic
and every node delivers it to its own clients, in the same order everywhere.
"""

from __future__ import annotations

import base64
from importlib.resources import files
from typing import Any

from ..asyncio.broadcast import DEFAULT_MAX_BUFFERED, broadcast
from ..asyncio.connection import WebSocket
from ..asyncio.router import Router
from ..hub.base import Backend, Envelope, PresenceEvent
from ..protocol.http11 import Headers, Request, Response
from ..typing import Data

__all__ = ["BroadcastApp", "TOPIC"]

TOPIC = "broadcast"
"""The backend topic that carries the messages between nodes."""


def _encode(message: Data) -> dict[str, str]:
    if isinstance(message, str):
        return {"text": message}
    return {"binary": base64.b64encode(message).decode()}


def _decode(data: Any) -> Data | None:
    if isinstance(data, dict):
        if isinstance(data.get("text"), str):
            return str(data["text"])
        if isinstance(data.get("binary"), str):
            return base64.b64decode(data["binary"])
    return None


class BroadcastApp:
    """The broadcast application: its router, and its link to other nodes.

    Args:
        backend: a hub backend shared by every node (Redis), or None for this node alone.
        max_buffered: each client's budget of unsent bytes; a client already past it when a
            message comes is closed with 1013 (see :func:`tether.broadcast`).
    """

    def __init__(
        self, backend: Backend | None = None, *, max_buffered: int = DEFAULT_MAX_BUFFERED
    ) -> None:
        self.backend = backend
        self.max_buffered = max_buffered
        self.clients: set[WebSocket] = set()
        """The open connections of this node, like ``wss.clients`` in Node's ws."""
        self.router = Router()
        page = files("tether.apps").joinpath("static/broadcast.html").read_bytes()

        @self.router.http("/")
        def index(request: Request) -> Response:
            headers = Headers(
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(page))),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Content-Security-Policy", "default-src 'self'; connect-src 'self'; "
                     "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"),
                ]
            )
            return Response(200, headers, page)

        self.router.add_websocket("/", self.relay)

    async def start(self) -> None:
        """With a backend, subscribe to the other nodes' messages.

        Call it before the server listens: a client that connects afterwards then gets every
        message published after it connected, whichever node it was sent to.
        """
        if self.backend is not None:
            await self.backend.listen(TOPIC, self._deliver)

    async def relay(self, ws: WebSocket) -> None:
        self.clients.add(ws)
        try:
            async for message in ws:
                if self.backend is None:
                    broadcast(self.clients, message, max_buffered=self.max_buffered)
                else:
                    await self.backend.publish(TOPIC, _encode(message))
        finally:
            self.clients.discard(ws)

    def _deliver(self, event: Envelope | PresenceEvent) -> None:
        if isinstance(event, Envelope):
            message = _decode(event.data)
            if message is not None:
                broadcast(self.clients, message, max_buffered=self.max_buffered)


def make_router() -> Router:
    """``/``: the page on a plain GET, the WebSocket on an upgrade (this node alone)."""
    return BroadcastApp().router
