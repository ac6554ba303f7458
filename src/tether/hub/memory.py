"""The in-process backend: history in memory, live feed and presence as direct calls.

Volatile: a restart loses the history, and each topic gets a new random epoch, so resuming
clients learn that their ``since`` no longer means anything. :class:`LocalFeed` (listeners and
presence within one process) is shared with the SQLite backend.
"""

from __future__ import annotations

import bisect
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from .base import (
    check_history_bounds,
    DEFAULT_HISTORY_AGE,
    DEFAULT_HISTORY_SIZE,
    Backend,
    BackendUnavailable,
    Envelope,
    HistoryResult,
    Listener,
    PresenceEvent,
    Roster,
)

__all__ = ["LocalFeed", "MemoryBackend", "new_epoch"]

logger = logging.getLogger("tether.hub")


def new_epoch() -> str:
    """A random epoch: 16 hex digits."""
    return secrets.token_hex(8)


class LocalFeed:
    """Listeners and presence for one process: :meth:`notify` calls each listener of a
    topic in turn; members live in a dict. Not a backend by itself."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._members: dict[str, dict[str, str]] = {}  # topic -> member_id -> name
        self._names: dict[str, dict[str, int]] = {}  # topic -> name -> how many members
        self._sorted: dict[str, list[str]] = {}  # topic -> its names, sorted (the roster)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable("the backend is closed")

    def notify(self, topic: str, event: Envelope | PresenceEvent) -> None:
        """Hand ``event`` to every listener of ``topic``; a listener's error is logged and
        does not stop the others."""
        for listener in self._listeners.get(topic, ()):
            try:
                listener(event)
            except Exception:
                logger.exception("hub listener for topic %s failed", topic)

    async def listen(self, topic: str, listener: Listener) -> None:
        self._check_open()
        # Copy on write: notify() may be iterating over the old list.
        self._listeners[topic] = [*self._listeners.get(topic, ()), listener]

    async def unlisten(self, topic: str, listener: Listener) -> None:
        listeners = [x for x in self._listeners.get(topic, ()) if x is not listener]
        if listeners:
            self._listeners[topic] = listeners
        else:
            self._listeners.pop(topic, None)

    async def join(self, topic: str, member_id: str, name: str) -> None:
        self._check_open()
        members = self._members.setdefault(topic, {})
        previous = members.get(member_id)
        if previous == name:
            return  # joined again: a refresh
        if previous is not None:
            await self.leave(topic, member_id)
            members = self._members.setdefault(topic, {})
        members[member_id] = name
        names = self._names.setdefault(topic, {})
        names[name] = names.get(name, 0) + 1
        if names[name] == 1:
            bisect.insort(self._sorted.setdefault(topic, []), name)
            self.notify(topic, PresenceEvent(topic, joined=name))

    async def leave(self, topic: str, member_id: str) -> None:
        members = self._members.get(topic)
        if members is None or member_id not in members:
            return
        name = members.pop(member_id)
        names = self._names[topic]
        names[name] -= 1
        if names[name] == 0:
            del names[name]
            roster = self._sorted[topic]
            del roster[bisect.bisect_left(roster, name)]
            self.notify(topic, PresenceEvent(topic, left=name))
        if not members:
            del self._members[topic]
            del self._names[topic]
            del self._sorted[topic]

    async def members(self, topic: str) -> list[str]:
        self._check_open()
        return list(self._sorted.get(topic, ()))

    async def roster(self, topic: str, after: str | None = None,
                     limit: int | None = None) -> Roster:
        self._check_open()
        names = self._sorted.get(topic, [])
        start = 0 if after is None else bisect.bisect_right(names, after)
        end = len(names) if limit is None else start + limit
        return Roster(names[start:end], len(names))

    def _close_feed(self) -> None:
        self._closed = True
        self._listeners.clear()
        self._members.clear()
        self._names.clear()
        self._sorted.clear()


class _Topic:
    __slots__ = ("epoch", "last_seq", "messages")

    def __init__(self, size: int) -> None:
        self.epoch = new_epoch()
        self.last_seq = 0
        self.messages: deque[Envelope] = deque(maxlen=size)


class MemoryBackend(LocalFeed, Backend):
    """History in memory, per process. Each topic's epoch is random and lives as long as the
    backend; ``seq`` starts at 1.

    Args:
        history_size: messages kept per topic (default 1000).
        history_age: seconds a message is kept (default 24 h).
        clock: Unix time in seconds; tests pass a fake one.
    """

    def __init__(
        self,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_age: float = DEFAULT_HISTORY_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        check_history_bounds(history_size, history_age)
        self.history_size = history_size
        self.history_age = history_age
        self.clock = clock
        self._topics: dict[str, _Topic] = {}

    def _topic(self, topic: str) -> _Topic:
        self._check_open()
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic(self.history_size)
        return state

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _expire(self, state: _Topic, now: int) -> None:
        cutoff = now - self.history_age * 1000
        messages = state.messages
        while messages and messages[0].time < cutoff:
            messages.popleft()

    async def publish(self, topic: str, data: Any, sender: str | None = None) -> Envelope:
        state = self._topic(topic)
        now = self._now()
        state.last_seq += 1
        envelope = Envelope(topic, state.last_seq, state.epoch, data, sender, now)
        state.messages.append(envelope)
        self._expire(state, now)
        self.notify(topic, envelope)
        return envelope

    async def history(
        self, topic: str, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        state = self._topic(topic)
        self._expire(state, self._now())
        messages = state.messages
        first = messages[0].seq if messages else state.last_seq + 1
        start = 0 if since is None else max(0, since + 1 - first)
        selected = tuple(islice(messages, start, None))
        if limit is not None:
            selected = selected[-limit:] if limit > 0 else ()
        gap = since is not None and since < first - 1
        return HistoryResult(selected, gap, first, state.epoch, state.last_seq)

    async def epoch(self, topic: str) -> str:
        return self._topic(topic).epoch

    async def reset(self, topic: str) -> str:
        self._check_open()
        state = self._topics[topic] = _Topic(self.history_size)
        return state.epoch

    async def close(self) -> None:
        self._close_feed()
        self._topics.clear()
