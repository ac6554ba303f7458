"""The hub's storage interface: what a backend does and the values it hands back.

A :class:`Backend` assigns each published message its ``seq`` (per topic, from 1, +1 per
message), keeps a bounded history (by count and by age), names each life of a topic's history
with an ``epoch``, carries live messages and presence changes to the hubs that listen, and
keeps the members of each topic. Every method is a coroutine, so a networked backend (Redis:
pub/sub for the live feed, streams for history, a hash per topic for presence) fits behind
the same :class:`~tether.hub.Hub` as the in-process ones.

Rules every backend keeps, and the hub relies on for "no gap, no duplicate" on resume:

1. ``publish()`` stores the message before any listener sees it, and listeners see a topic's
   messages in ``seq`` order.
2. Once ``listen()`` returns, every message published afterwards reaches the listener.
   The hub therefore listens *before* it reads history, and skips live messages whose ``seq``
   the history already covered.
3. Listeners are plain callables run on the event loop; they must not block. A backend calls
   them from its own publish (in-process) or from its reader task (networked).
"""

from __future__ import annotations

import abc
import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from ..exceptions import BackendUnavailable, HubError

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Envelope",
    "HistoryResult",
    "HubError",
    "Listener",
    "PresenceEvent",
    "Roster",
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_HISTORY_AGE",
    "check_history_bounds",
]

def check_history_bounds(history_size: int, history_age: float) -> None:
    """The rule every backend applies to its history bounds.

    Raises:
        ValueError: a bound is negative.
    """
    if history_size < 0 or history_age < 0:
        raise ValueError("history_size and history_age cannot be negative")


DEFAULT_HISTORY_SIZE = 1000
"""Messages kept per topic."""
DEFAULT_HISTORY_AGE = 24 * 3600.0
"""Seconds a message stays in history (24 h)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One published message, as stored and as delivered.

    Attributes:
        topic: the topic it was published to.
        seq: its number in the topic: from 1, +1 per message, in publish order.
        epoch: the life of the topic's history it belongs to.
        data: any JSON value.
        sender: the publisher's name, or ``None`` for the server.
        time: when it was stored, Unix time in milliseconds.
    """

    topic: str
    seq: int
    epoch: str
    data: Any
    sender: str | None
    time: int


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What :meth:`Backend.history` found.

    Attributes:
        messages: the messages asked for, in ``seq`` order.
        gap: ``since`` was given and some messages after it are no longer kept.
        first: the oldest ``seq`` still kept; ``last_seq + 1`` when none is.
        epoch: the topic's current epoch.
        last_seq: the topic's latest ``seq`` (0 if nothing was ever published).
        closed: earlier epochs that a failover closed, each with the last ``seq`` it has on
            this data set: ``seq`` kept counting in the next epoch, so a client that saw up
            to that ``seq`` continues exactly; one that saw more saw messages that were lost
            (Redis with replicas; empty for the in-process backends).
    """

    messages: tuple[Envelope, ...]
    gap: bool
    first: int
    epoch: str
    last_seq: int
    closed: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """The members of a topic changed: one name appeared or disappeared (a change), or the
    listener must start its list over (a snapshot, after the backend lost track: a Redis
    reconnection).

    A change costs the same whatever the number of members: a backend never lists every
    member to announce one (issue 17: a join storm would cost O(n²)).

    Attributes:
        topic: the topic.
        joined: the name that appeared, or ``None``.
        left: the name that disappeared, or ``None``.
        members: ``None`` for a change; for a snapshot, every member's name, sorted.
    """

    topic: str
    joined: str | None = None
    left: str | None = None
    members: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Roster:
    """A page of a topic's members (see :meth:`Backend.roster`).

    Attributes:
        names: member names in sorted order (by code point), each once.
        count: how many members the topic has in all.
    """

    names: list[str]
    count: int


Listener = Callable[[Union[Envelope, PresenceEvent]], None]
"""Receives a topic's live messages and presence changes; must not block."""


class Backend(abc.ABC):
    """Storage and live feed for the hub. See the module docstring for the rules.

    Attributes:
        history_size: messages kept per topic (older ones are deleted).
        history_age: seconds a message is kept.
    """

    history_size: int = DEFAULT_HISTORY_SIZE
    history_age: float = DEFAULT_HISTORY_AGE

    def not_ready(self) -> str | None:
        """Why this backend cannot serve now (its server is unreachable), or None. Read by
        the server's ``/readyz``; never waits."""
        return None

    @abc.abstractmethod
    async def publish(self, topic: str, data: Any, sender: str | None = None) -> Envelope:
        """Store a message under the topic's next ``seq``, trim the history to its bounds,
        then hand the envelope to the topic's listeners.

        Raises:
            BackendUnavailable: the message was not stored.
            TypeError, ValueError: ``data`` is not a JSON value (backends that serialize).
        """

    @abc.abstractmethod
    async def history(
        self, topic: str, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        """The kept messages with ``seq > since`` (all kept ones when ``since`` is None),
        only the last ``limit`` of them when ``limit`` is given. Messages older than
        ``history_age`` are never returned, whether or not they were deleted yet.

        Raises:
            BackendUnavailable: the history cannot be read now.
        """

    @abc.abstractmethod
    async def epoch(self, topic: str) -> str:
        """The topic's current epoch (a topic never published to gets one, kept from now on)."""

    @abc.abstractmethod
    async def reset(self, topic: str) -> str:
        """Delete the topic's history and start a new epoch, with ``seq`` from 1 again;
        return the new epoch."""

    @abc.abstractmethod
    async def listen(self, topic: str, listener: Listener) -> None:
        """Deliver the topic's live messages and presence changes to ``listener`` from now
        on: when this returns, nothing published afterwards can be missed."""

    @abc.abstractmethod
    async def unlisten(self, topic: str, listener: Listener) -> None:
        """Stop delivering to ``listener`` (no error if it was not listening)."""

    @abc.abstractmethod
    async def join(self, topic: str, member_id: str, name: str) -> None:
        """Add a member to the topic. ``member_id`` is unique per connection (the hub makes
        it from its own random id and a counter) and ``name`` is what others see; several
        members may share a name, which then appears once. Joining again with the same id
        is allowed: a backend shared between processes will make members expire unless
        they join again in time (a heartbeat), so that a crashed hub's members go away.

        Sends a :class:`PresenceEvent` to the listeners when ``name`` was not there yet.
        """

    @abc.abstractmethod
    async def leave(self, topic: str, member_id: str) -> None:
        """Remove a member (no error if absent); sends a :class:`PresenceEvent` when its name
        is no longer there."""

    @abc.abstractmethod
    async def members(self, topic: str) -> list[str]:
        """The names of the topic's members, sorted, each once."""

    async def roster(self, topic: str, after: str | None = None,
                     limit: int | None = None) -> Roster:
        """The member names after ``after`` (all when None), sorted, at most ``limit`` of
        them, and how many members there are: a snapshot of a large topic costs ``limit``
        names, not all of them. Backends override this with a cheaper read; this default
        reads every member."""
        names = await self.members(topic)
        start = 0 if after is None else bisect.bisect_right(names, after)
        end = len(names) if limit is None else start + limit
        return Roster(names[start:end], len(names))

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the backend's resources; later calls raise :class:`BackendUnavailable`."""
