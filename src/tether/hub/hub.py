"""The hub: topics, presence, history and resume over the JSON protocol of
docs/hub-protocol.md, for any number of connections.

``await hub.serve(ws, name)`` runs the protocol for one connection until it closes. Requests
from one connection are handled in order, one at a time; live messages reach it at any time
through the topic's :class:`~tether.hub.fanout.TopicFanout`.

Subscribing, step by step (this order is what makes a resume exact):

1. register the subscriber, holding its live frames, and make sure the backend feeds this
   topic to the hub (``listen``) — from here on nothing published can be missed;
2. join the topic's presence (others get a ``presence`` frame);
3. read the history: the messages after ``since``, or the last ``history_limit`` ones;
4. read the members (the presence snapshot; held presence frames older than it are dropped);
5. send ``subscribed``, the ``presence`` snapshot and the replayed messages (waiting for the
   connection to drain when needed; live frames are still held meanwhile);
6. flush the held frames whose ``seq`` the history did not cover, and go live.

Backend outages: the first request that fails because of the backend logs
``event=hub_unavailable`` (a warning, with the error); the requests that fail after it are only
counted. The first request (or :meth:`Hub.publish`) begun during the outage that succeeds ends
it, logging ``event=hub_recovered failures=N duration=S``: N requests answered ``unavailable``,
S seconds from the first failure to that success. One begun before the outage that returns
during it does not end it.

Publishing: a publish with an ``id`` is remembered (:class:`~tether.hub.dedup.PublishLog`)
under its sender's name, its ``id`` and its data; the same publish again, as a client sends it
after a reconnect when the ``ack`` was lost, gets the first ``ack`` and is not stored twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ..asyncio.broadcast import DEFAULT_MAX_BUFFERED, broadcast, text_frame, write_frame
from ..asyncio.connection import WebSocket
from ..exceptions import ConnectionClosed
from ..protocol.connection import State
from ..typing import Data
from . import protocol
from .base import Backend, BackendUnavailable, Envelope
from .dedup import DEFAULT_DEDUP_AGE, DEFAULT_DEDUP_SIZE, Key, PublishLog
from .fanout import HubStats, Subscriber, TopicFanout
from .memory import MemoryBackend
from .protocol import Members, Ping, Publish, RequestError, Subscribe, Unsubscribe

__all__ = ["Hub", "DEFAULT_HISTORY_LIMIT", "DEFAULT_MAX_FRAME", "DEFAULT_MAX_ERRORS",
           "DEFAULT_PRESENCE_SNAPSHOT"]

logger = logging.getLogger("tether.hub")

T = TypeVar("T")

DEFAULT_HISTORY_LIMIT = 50
"""Messages replayed to a ``subscribe`` without ``since``."""
DEFAULT_MAX_FRAME = 64 * 1024
"""Largest client frame the hub parses (bytes); larger ones get ``too_big``."""
DEFAULT_MAX_ERRORS = 20
"""Errors after which a connection is closed with 1008."""
DEFAULT_PRESENCE_SNAPSHOT = 1000
"""Names in a subscriber's presence snapshot; the ``members`` request pages through more."""


class _Session:
    """One connection served by the hub."""

    __slots__ = ("ws", "name", "member_id", "subscriptions", "errors")

    def __init__(self, ws: WebSocket, name: str, member_id: str) -> None:
        self.ws = ws
        self.name = name
        self.member_id = member_id
        self.subscriptions: dict[str, Subscriber] = {}
        self.errors = 0


class Hub:
    """Pub/sub with presence, bounded history and exact resume, over WebSocket.

    Args:
        backend: where messages are stored and how they travel; a new
            :class:`~tether.hub.MemoryBackend` when None.
        history_limit: messages replayed on ``subscribe`` without ``since``.
        max_buffered: unsent bytes a subscriber may hold before the slow policy applies.
        slow_policy: ``"close"`` (close with ``slow_code``) or ``"drop"`` (skip messages,
            then send a ``gap`` notice).
        slow_code: close code of the ``close`` policy (1013: try again later).
        max_frame: largest client frame parsed, in bytes; larger ones get ``too_big``.
        max_errors: a connection is closed with 1008 at its ``max_errors``-th error.
        dedup_size: publishes with an ``id`` remembered per topic, so that one sent again is
            answered with its first ``ack`` rather than stored twice; 0 turns this off.
        dedup_age: seconds such a publish is remembered.
        presence: whether topics keep presence (members, joined, left): True, False, or a
            function of the topic. Without it a subscription costs no backend call for its
            membership and no frame to anyone (tickers, dashboards).
        presence_snapshot: names in the snapshot a subscriber gets (sorted; ``count`` says
            how many there are, and the ``members`` request pages through the rest).

    Attributes:
        stats: :class:`~tether.hub.HubStats` counters (delivered, dropped,
            closed_for_slowness).
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        slow_policy: str = "close",
        slow_code: int = 1013,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_errors: int = DEFAULT_MAX_ERRORS,
        dedup_size: int = DEFAULT_DEDUP_SIZE,
        dedup_age: float = DEFAULT_DEDUP_AGE,
        presence: bool | Callable[[str], bool] = True,
        presence_snapshot: int = DEFAULT_PRESENCE_SNAPSHOT,
    ) -> None:
        if slow_policy not in ("close", "drop"):
            raise ValueError(f"unknown slow_policy {slow_policy!r}: use 'close' or 'drop'")
        if history_limit < 0 or max_buffered < 1 or max_frame < 1 or max_errors < 1:
            raise ValueError("history_limit must be >= 0; max_buffered, max_frame and "
                             "max_errors >= 1")
        if dedup_size < 0 or dedup_age <= 0:
            raise ValueError("dedup_size must be >= 0 and dedup_age > 0")
        if presence_snapshot < 1:
            raise ValueError("presence_snapshot must be >= 1")
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.history_limit = history_limit
        self.max_buffered = max_buffered
        self.slow_policy = slow_policy
        self.slow_code = slow_code
        self.max_frame = max_frame
        self.max_errors = max_errors
        self.presence = presence
        self.presence_snapshot = presence_snapshot
        self.stats = HubStats()
        self.publishes = PublishLog(dedup_size, dedup_age) if dedup_size else None
        self._topics: dict[str, TopicFanout] = {}
        self._sessions: set[_Session] = set()
        self._hub_id = secrets.token_hex(4)
        self._member_ids = itertools.count(1)
        self._closed = False
        self._outages = 0  # backend outages so far (the current one included)
        self._outage_start: float | None = None  # monotonic time of the outage's first failure
        self._outage_failures = 0  # requests answered `unavailable` since then

    # -- public API ----------------------------------------------------------------------

    async def serve(self, ws: WebSocket, name: str, *, subscribe: Iterable[str] = ()) -> None:
        """Run the hub's protocol on ``ws`` until it closes; ``name`` is the member's name
        in presence and the ``sender`` of what it publishes. On return the member has left
        every topic. Closes the connection with 1008 at the ``max_errors``-th error.

        Args:
            subscribe: topics to subscribe the connection to at once, as if it had sent
                ``subscribe`` (without ``since``) for each.

        Raises:
            ValueError: a topic in ``subscribe`` is not valid.
        """
        topics = [protocol.check_topic(topic) for topic in subscribe]
        name = name.encode("utf-8", "replace").decode()  # no lone surrogates
        session = _Session(ws, name, f"{self._hub_id}:{next(self._member_ids)}")
        self._sessions.add(session)
        try:
            for topic in topics:
                await self._dispatch(session, Subscribe(topic))
            async for frame in ws:
                await self._handle(session, frame)
                if session.errors >= self.max_errors:
                    await ws.close(1008, "too many errors")
                    break
        except ConnectionClosed:
            pass
        finally:
            self._sessions.discard(session)
            await self._leave_all(session)

    async def publish(self, topic: str, data: Any, sender: str | None = None) -> Envelope:
        """Publish from the server: stored, numbered and delivered like a client's message.

        Raises:
            ValueError: ``topic`` is not a valid topic, or ``data`` is not a JSON value.
            TypeError: ``data`` is not a JSON value.
            BackendUnavailable: the backend could not store it.
        """
        protocol.check_topic(topic)
        protocol.encode(data)  # JSON or nothing: the fan-out must not fail on it
        if sender is not None:
            sender = sender.encode("utf-8", "replace").decode()
        outages = self._outages
        envelope = await self._call("publish", self.backend.publish(topic, data, sender))
        self._backend_answered(outages)
        self.stats.publishes += 1
        return envelope

    def send_to(self, target: WebSocket | str, data: Any, sender: str | None = None) -> int:
        """Publish to one connection, or to every connection of one member (by name),
        outside any topic: a ``direct`` frame (docs/hub-protocol.md), not stored, without a
        seq. Framed once; a connection over its budget gets the slow policy's close.

        Returns:
            How many connections it was written to (0 if the target is not connected).

        Raises:
            TypeError, ValueError: ``data`` is not a JSON value.
        """
        frame = {"type": "direct", "data": data, "sender": sender,
                 "time": int(time.time() * 1000)}
        payload = protocol.encode(frame)
        targets = [s.ws for s in self._sessions if s.ws is target or s.name == target]
        if not targets:
            return 0
        return broadcast(targets, payload.decode(), max_buffered=self.max_buffered,
                         slow_code=self.slow_code)

    async def close(self) -> None:
        """Close every connection still served with 1001, then the backend."""
        if self._closed:
            return
        self._closed = True
        sessions = [s for s in self._sessions if s.ws.protocol.state is State.OPEN]
        if sessions:
            await asyncio.gather(
                *(s.ws.close(1001, "server shutting down") for s in sessions),
                return_exceptions=True,
            )
        await self.backend.close()

    def not_ready(self) -> str | None:
        """Why this hub cannot serve now (its backend is unreachable, or its requests fail
        with ``unavailable``), or None: a ``Server.ready_checks`` function."""
        reason = self.backend.not_ready()
        if reason is None and self._outage_start is not None:
            reason = "backend unavailable"
        return reason

    def topics(self) -> dict[str, int]:
        """Topics with local subscribers, and how many each has."""
        return {topic: len(fan.subscribers) for topic, fan in self._topics.items()}

    def topic_info(self) -> dict[str, dict[str, Any]]:
        """Per topic with local subscribers: ``subscribers`` (how many), ``members`` (their
        names, sorted, each once) and ``published`` (messages seen live here so far)."""
        names: dict[str, set[str]] = {topic: set() for topic in self._topics}
        for session in self._sessions:
            for topic in session.subscriptions:
                if topic in names:
                    names[topic].add(session.name)
        return {topic: {"subscribers": len(fan.subscribers),
                        "members": sorted(names[topic]), "published": fan.published}
                for topic, fan in self._topics.items()}

    async def kick(self, topic: str, name: str, reason: str = "kicked") -> int:
        """Remove the member ``name`` from ``topic`` on this hub: each of its connections
        subscribed here leaves the topic (the others get its ``left``) and is sent
        ``{"type": "unsubscribed", "topic": ..., "reason": ...}``; it stays connected and may
        subscribe again (a kick is not a ban). Returns how many connections were removed."""
        kicked = 0
        for session in list(self._sessions):
            subscriber = session.subscriptions.get(topic)
            if session.name != name or subscriber is None:
                continue
            await self._drop_subscription(session, topic, subscriber, leave=True)
            kicked += 1
            try:
                await self._send(session, {"type": "unsubscribed", "topic": topic,
                                           "reason": reason})
            except ConnectionClosed:
                pass
        return kicked

    # -- requests --------------------------------------------------------------------------

    async def _handle(self, session: _Session, frame: Data) -> None:
        try:
            request = protocol.parse_request(frame, self.max_frame)
        except RequestError as exc:
            await self._fail(session, exc)
            return
        await self._dispatch(session, request)

    async def _dispatch(self, session: _Session, request: protocol.Request) -> None:
        try:
            if isinstance(request, Publish):
                await self._publish(session, request)
            elif isinstance(request, Subscribe):
                await self._subscribe(session, request)
            elif isinstance(request, Members):
                await self._members(session, request)
            elif isinstance(request, Unsubscribe):
                await self._unsubscribe(session, request)
            else:
                assert isinstance(request, Ping)
                pong: dict[str, Any] = {"type": "pong"}
                if request.id is not None:
                    pong["id"] = request.id
                await self._send(session, pong)
        except RequestError as exc:
            await self._fail(session, exc)
        except BackendUnavailable as exc:
            self._backend_failed(exc)
            request_id = request.id if isinstance(request, (Publish, Ping)) else None
            await self._send(session, protocol.error(
                protocol.UNAVAILABLE, "the backend is unavailable; retry later", request_id))

    def _backend_failed(self, exc: BackendUnavailable) -> None:
        """A request failed for the backend: log the outage once, when it starts."""
        if self._outage_start is None:
            self._outages += 1
            self._outage_start = time.monotonic()
            self._outage_failures = 0
            logger.warning("event=hub_unavailable error=\"%s\"", exc)
        self._outage_failures += 1

    def _backend_answered(self, outages: int) -> None:
        """A backend call made when ``self._outages`` was ``outages`` succeeded: the end of
        the outage, if it was made during it (one made before could have been answered
        before the outage and only return now)."""
        if self._outage_start is not None and outages == self._outages:
            duration = time.monotonic() - self._outage_start
            self._outage_start = None
            logger.warning("event=hub_recovered failures=%d duration=%.3fs",
                           self._outage_failures, duration)

    async def _call(self, call: str, pending: Awaitable[T]) -> T:
        """Await a backend call, timed and counted (``stats.backend_seconds``,
        ``stats.backend_errors``) under its name."""
        start = time.perf_counter()
        try:
            return await pending
        except BackendUnavailable:
            self.stats.backend_errors[call] += 1
            raise
        finally:
            self.stats.timed(call).observe(time.perf_counter() - start)

    async def _fail(self, session: _Session, exc: RequestError) -> None:
        session.errors += 1
        await self._send(session, protocol.error(exc.code, exc.message, exc.id))

    async def _send(self, session: _Session, obj: dict[str, Any]) -> None:
        await session.ws.send(protocol.dumps(obj))

    async def _publish(self, session: _Session, request: Publish) -> None:
        if request.topic not in session.subscriptions:
            raise RequestError(protocol.NOT_SUBSCRIBED, "subscribe to the topic before "
                               "publishing to it", request.id)
        topic = request.topic
        log = self.publishes
        outages = self._outages
        if log is None or request.id is None:
            envelope = await self._call("publish", self.backend.publish(
                topic, request.data, session.name))
            self._backend_answered(outages)
            self.stats.publishes += 1
            await self._ack(session, request, envelope.seq)
            return
        key: Key = (session.name, request.id, _digest(request.data))
        while (known := log.get(topic, key)) is not None:
            if isinstance(known, int):
                self.stats.dedup_hits += 1
                await self._ack(session, request, known)  # a repeat: stored already
                return
            seq = await asyncio.shield(known)  # a repeat of a publish being stored now
            if seq is not None:
                self.stats.dedup_hits += 1
                await self._ack(session, request, seq)
                return
            # That attempt failed and was forgotten: this one stores it (or waits for
            # another repeat that got there first).
        pending: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        log.put(topic, key, pending)
        try:
            envelope = await self._call("publish", self.backend.publish(
                topic, request.data, session.name))
        except BaseException:
            log.settle(topic, key, pending, None)
            pending.set_result(None)
            raise
        log.settle(topic, key, pending, envelope.seq)
        pending.set_result(envelope.seq)
        self._backend_answered(outages)
        self.stats.publishes += 1
        await self._ack(session, request, envelope.seq)

    async def _ack(self, session: _Session, request: Publish, seq: int) -> None:
        await self._send(session, {"type": "ack", "id": request.id, "topic": request.topic,
                                   "seq": seq})

    async def _subscribe(self, session: _Session, request: Subscribe) -> None:
        topic = request.topic
        previous = session.subscriptions.get(topic)
        fan = self._topics.get(topic)
        if fan is None:
            fan = self._topics[topic] = TopicFanout(
                topic, self.stats, max_buffered=self.max_buffered,
                drop=self.slow_policy == "drop", slow_code=self.slow_code,
                snapshot_limit=self.presence_snapshot, resync=self._resync,
            )
        presence = self.has_presence(topic)
        if previous is not None:  # subscribing again: a new replay replaces the old state
            fan.remove(previous)
        subscriber = Subscriber(session.ws)
        fan.add(subscriber)  # 1. from here, live frames are held for it
        session.subscriptions[topic] = subscriber
        outages = self._outages
        try:
            await self._listen(fan)
            if previous is None and presence:
                await self._call("join", self.backend.join(
                    topic, session.member_id, session.name))  # 2.
            since = request.since
            reset = False
            continued = retracted = None
            limit = self.history_limit if since is None else None
            history = await self._call("history", self.backend.history(topic, since, limit))  # 3.
            if since is not None and request.epoch is not None and history.epoch != request.epoch:
                end = history.closed.get(request.epoch)
                if end is not None and since <= end:
                    continued = request.epoch  # a failover changed the epoch, not the messages
                else:
                    # Another life of the topic: everything it has is new. Or a failover lost
                    # messages this client saw: what the new master has after the last one
                    # it kept is new to the client, and the ones it saw are retracted.
                    reset = True
                    if end is not None:
                        retracted = [end + 1, since]
                    since = end or 0
                    if since != request.since:
                        history = await self._call(
                            "history", self.backend.history(topic, since, None))
            mark = fan.presence_mark()
            roster = await self._call("roster", self.backend.roster(
                topic, None, self.presence_snapshot)) if presence else None  # 4.
            self._backend_answered(outages)
        except BaseException:  # not subscribed after all (and no longer, if it was)
            await self._drop_subscription(session, topic, subscriber, leave=True)
            raise
        fan.snapshot_taken(subscriber, mark)
        if request.since is not None:
            self.stats.resumes["reset" if reset else "gap" if history.gap else "exact"] += 1
        reply: dict[str, Any] = {
            "type": "subscribed",
            "topic": topic,
            "epoch": history.epoch,
            "seq": history.last_seq,
            "replayed": len(history.messages),
            "gap": history.gap,
        }
        if history.gap:
            reply["first"] = history.first
        if continued is not None:
            reply["continues"] = continued
        if retracted is not None:
            reply["retracted"] = retracted
        if roster is None:
            reply["presence"] = False
        await self._send(session, reply)  # 5.
        if roster is not None:
            await self._send(session, protocol.snapshot(topic, roster.names, roster.count))
        for envelope in history.messages:
            await self._send(session, protocol.message(envelope))
        self.stats.delivered += len(history.messages)
        if subscriber.active:
            fan.finish_replay(subscriber, history.last_seq)  # 6.

    async def _members(self, session: _Session, request: Members) -> None:
        if request.topic not in session.subscriptions:
            raise RequestError(protocol.NOT_SUBSCRIBED, "subscribe to the topic before "
                               "asking for its members", request.id)
        if not self.has_presence(request.topic):
            raise RequestError(protocol.BAD_TOPIC, "this topic keeps no presence", request.id)
        limit = self.presence_snapshot
        roster = await self._call("roster", self.backend.roster(
            request.topic, request.after, limit + 1))  # one more: is there a next page?
        reply: dict[str, Any] = {"type": "members", "topic": request.topic,
                                 "members": roster.names[:limit], "count": roster.count}
        if len(roster.names) > limit:
            reply["more"] = True
        if request.after is not None:
            reply["after"] = request.after
        if request.id is not None:
            reply["id"] = request.id
        await self._send(session, reply)

    def has_presence(self, topic: str) -> bool:
        """Whether ``topic`` keeps presence (see the ``presence`` argument)."""
        presence = self.presence
        return presence(topic) if callable(presence) else bool(presence)

    def _resync(self, fan: TopicFanout, subscriber: Subscriber) -> None:
        """A subscriber skipped presence changes (drop policy): send it a new snapshot."""
        asyncio.get_running_loop().create_task(self._send_snapshot(fan, subscriber))

    async def _send_snapshot(self, fan: TopicFanout, subscriber: Subscriber) -> None:
        try:
            roster = await self._call("roster", self.backend.roster(
                fan.topic, None, self.presence_snapshot))
        except BackendUnavailable:
            subscriber.presence_stale = True  # tried again when it next catches up
            return
        if subscriber.active:
            frame = protocol.snapshot(fan.topic, roster.names, roster.count)
            write_frame(subscriber.ws, text_frame(protocol.encode(frame)), self.max_buffered)

    async def _unsubscribe(self, session: _Session, request: Unsubscribe) -> None:
        subscriber = session.subscriptions.get(request.topic)
        if subscriber is None:
            raise RequestError(protocol.NOT_SUBSCRIBED, "not subscribed to this topic")
        outages = self._outages
        await self._drop_subscription(session, request.topic, subscriber, leave=True)
        self._backend_answered(outages)

    # -- topics ----------------------------------------------------------------------------

    async def _listen(self, fan: TopicFanout) -> None:
        async with fan.lock:
            if not fan.listening:
                await self._call("listen", self.backend.listen(fan.topic, fan))
                fan.listening = True

    async def _drop_subscription(
        self, session: _Session, topic: str, subscriber: Subscriber, *, leave: bool
    ) -> None:
        if session.subscriptions.get(topic) is subscriber:
            del session.subscriptions[topic]
        fan = self._topics.get(topic)
        if fan is None:
            return
        fan.remove(subscriber)
        try:
            if leave and self.has_presence(topic):
                await self._call("leave", self.backend.leave(topic, session.member_id))
        finally:
            if not fan.subscribers:
                async with fan.lock:
                    if not fan.subscribers and fan.listening:
                        fan.listening = False
                        await self._call("unlisten", self.backend.unlisten(topic, fan))
                    if not fan.subscribers and self._topics.get(topic) is fan:
                        del self._topics[topic]

    async def _leave_all(self, session: _Session) -> None:
        for topic, subscriber in list(session.subscriptions.items()):
            try:
                await self._drop_subscription(session, topic, subscriber, leave=True)
            except BackendUnavailable:
                pass
            except Exception:
                logger.exception("hub: leaving topic %s failed", topic)


def _digest(data: Any) -> bytes:
    """What tells two publishes with the same sender and ``id`` apart: their data."""
    return hashlib.blake2b(protocol.encode(data), digest_size=16).digest()
