"""tether's hub: pub/sub over WebSocket with topics, presence, bounded history and exact
resume after reconnect, speaking the JSON protocol of docs/hub-protocol.md.

::

    hub = Hub(SQLiteBackend("data/chat.sqlite3"))      # or Hub() for memory only
    router.add_websocket("/ws", lambda ws: hub.serve(ws, "alice"))
    await hub.publish("news", {"text": "hello"})         # from the server
    await hub.close()

Backends: :class:`MemoryBackend` (volatile), :class:`SQLiteBackend` (durable history in a
file); both keep the live feed and presence in-process. :class:`Backend` is the interface a
networked backend (Redis) implements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    Backend,
    BackendUnavailable,
    Envelope,
    HistoryResult,
    HubError,
    Listener,
    PresenceEvent,
)
from .fanout import HubStats
from .hub import Hub
from .memory import MemoryBackend

if TYPE_CHECKING:
    from .sqlite import SQLiteBackend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Envelope",
    "HistoryResult",
    "Hub",
    "HubError",
    "HubStats",
    "Listener",
    "MemoryBackend",
    "PresenceEvent",
    "SQLiteBackend",
]


def __getattr__(name: str) -> Any:
    if name == "SQLiteBackend":  # sqlite3 loads only when asked for
        from .sqlite import SQLiteBackend

        globals()[name] = SQLiteBackend
        return SQLiteBackend
    raise AttributeError(f"module 'tether.hub' has no attribute {name!r}")
