"""tether's hub: pub/sub over WebSocket with topics, presence, bounded history and exact
resume after reconnect, speaking the JSON protocol of docs/hub-protocol.md.

::

    hub = Hub(SQLiteBackend("data/chat.sqlite3"))      # or Hub() for memory only
    router.add_websocket("/ws", lambda ws: hub.serve(ws, "alice"))
    await hub.publish("news", {"text": "hello"})         # from the server
    await hub.close()

Backends: :class:`MemoryBackend` (volatile), :class:`SQLiteBackend` (durable history in a
file), both with the live feed and presence in-process; :class:`RedisBackend` (pub/sub for the
live feed, streams for history, presence with expiry) lets several processes and machines serve
one set of topics. :class:`Backend` is the interface they implement.
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
    from .redis import RedisBackend
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
    "RedisBackend",
    "SQLiteBackend",
]


def __getattr__(name: str) -> Any:
    # sqlite3 and the redis package load only when asked for (redis is an optional extra).
    if name == "SQLiteBackend":
        from .sqlite import SQLiteBackend

        globals()[name] = SQLiteBackend
        return SQLiteBackend
    if name == "RedisBackend":
        from .redis import RedisBackend

        globals()[name] = RedisBackend
        return RedisBackend
    raise AttributeError(f"module 'tether.hub' has no attribute {name!r}")
