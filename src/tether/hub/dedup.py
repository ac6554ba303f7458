"""The hub's memory of recent publishes, so that a publish sent again is stored once.

A client that loses its connection before the ``ack`` of a publish cannot know whether the
message was stored; it sends the same publish again after reconnecting (tether.js does). The
hub recognises the repeat by its key (who sent it, its ``id``, its data) and answers with the
first ``ack`` instead of storing it a second time.

The memory is bounded: per topic, the ``size`` most recent keys, none older than ``age``
seconds; a topic that has seen no keyed publish for ``age`` seconds is forgotten entirely at
the next publish to any topic. No I/O and no event loop here; the hub keeps a future in place
of the ``seq`` while the first publish is being stored.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Union

__all__ = ["PublishLog", "Key", "Entry", "DEFAULT_DEDUP_SIZE", "DEFAULT_DEDUP_AGE"]

DEFAULT_DEDUP_SIZE = 1000
"""Keys remembered per topic."""
DEFAULT_DEDUP_AGE = 3600.0
"""Seconds a key is remembered (1 h)."""

Key = tuple[str, str, bytes]
"""(sender name, publish ``id``, digest of the data)."""
Entry = Union[int, "asyncio.Future[int | None]"]
"""The ``seq`` a publish was stored under, or a future of it while it is being stored (its
result is None when storing failed)."""


class PublishLog:
    """Recent publishes by key, per topic, bounded by count and by age.

    Args:
        size: keys remembered per topic (the oldest go first); at least 1.
        age: seconds a key is remembered.
        clock: monotonic seconds; tests pass a fake one.
    """

    def __init__(
        self, size: int = DEFAULT_DEDUP_SIZE, age: float = DEFAULT_DEDUP_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1 or age <= 0:
            raise ValueError("a publish log needs size >= 1 and age > 0")
        self.size = size
        self.age = age
        self.clock = clock
        # topic -> key -> (when, entry); topics in the order of their latest put().
        self._topics: OrderedDict[str, OrderedDict[Key, tuple[float, Entry]]] = OrderedDict()

    def get(self, topic: str, key: Key) -> Entry | None:
        """The entry of ``key`` in ``topic``, or None when it is unknown or too old."""
        table = self._topics.get(topic)
        found = table.get(key) if table is not None else None
        if found is None:
            return None
        when, entry = found
        if self.clock() - when > self.age:
            return None
        return entry

    def put(self, topic: str, key: Key, entry: Entry) -> None:
        """Remember ``key`` (again, as the newest) with ``entry``, then drop what is past the
        bounds: in this topic, the oldest keys beyond ``size`` and keys older than ``age``;
        elsewhere, topics whose newest key is older than ``age``."""
        now = self.clock()
        table = self._topics.pop(topic, None)
        if table is None:
            table = OrderedDict()
        self._topics[topic] = table
        table.pop(key, None)
        table[key] = (now, entry)
        while len(table) > self.size or now - next(iter(table.values()))[0] > self.age:
            table.popitem(last=False)
        # Topics are in the order of their latest put(): the first whose newest key is
        # young enough ends the search (this topic, the last, always is).
        while True:
            name, other = next(iter(self._topics.items()))
            if other and now - next(reversed(other.values()))[0] <= self.age:
                break
            del self._topics[name]

    def settle(self, topic: str, key: Key, pending: Entry, seq: int | None) -> None:
        """The publish that ``pending`` stood for is over: stored under ``seq``, or failed
        (None: the key is forgotten, so that a repeat is stored). Nothing happens when the key
        no longer holds ``pending`` (pushed out by the bounds meanwhile)."""
        table = self._topics.get(topic)
        found = table.get(key) if table is not None else None
        if table is None or found is None or found[1] is not pending:
            return
        if seq is None:
            del table[key]
        else:
            table[key] = (found[0], seq)  # same age and place

    def __len__(self) -> int:
        """Keys remembered, every topic together."""
        return sum(len(table) for table in self._topics.values())

    def topics(self) -> list[str]:
        """Topics with keys remembered, least recently published to first."""
        return list(self._topics)
