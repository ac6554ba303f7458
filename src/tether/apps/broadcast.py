"""The broadcast server from the articles: every message a client sends goes to every open
client, including the sender. A small page at ``/`` is the chat room's client."""

from __future__ import annotations

from importlib.resources import files

from ..asyncio.broadcast import broadcast
from ..asyncio.connection import WebSocket
from ..asyncio.router import Router
from ..asyncio.server import ServerConnection
from ..protocol.http11 import Headers, Request, Response

__all__ = ["make_router"]


def make_router() -> Router:
    """``/``: the page on a plain GET, the WebSocket on an upgrade."""
    router = Router()
    page = files("tether.apps").joinpath("static/broadcast.html").read_bytes()

    @router.http("/")
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

    @router.websocket("/")
    async def relay(ws: WebSocket) -> None:
        assert isinstance(ws, ServerConnection)
        async for message in ws:
            broadcast(ws.server.connections, message)

    return router
