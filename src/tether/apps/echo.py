"""The echo server: every message comes back as it came, text as text and binary as binary."""

from __future__ import annotations

from ..asyncio.connection import WebSocket


async def echo(ws: WebSocket) -> None:
    """Send every message back until the client closes."""
    async for message in ws:
        await ws.send(message)
