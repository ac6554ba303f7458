"""Fan-out: one topic's live messages to its local subscribers, framed once.

Each live message is serialized to JSON once and framed once. The frames of one turn of the
event loop are written together when it ends: one ``bytes`` object (their concatenation),
shared by every subscriber, through :func:`tether.asyncio.broadcast.write_frame`, which never
waits; under load this is one write (one system call) per subscriber for many messages. No
task or coroutine exists per subscriber or per message. A turn's frames that would take a
subscriber past its budget go to it frame by frame instead, and a subscriber whose unsent bytes
already pass the budget when a frame comes (the frame's own size never counts, as in
:func:`tether.asyncio.broadcast.broadcast`) gets the slow-consumer policy:

- ``close`` (default): closed with 1013 (try again later); it reconnects and resumes with
  ``since``, losing nothing still in history.
- ``drop``: the messages are skipped for it until its backlog is down to half the budget;
  then it gets ``{"type": "gap", "topic", "from", "to"}`` naming the skipped ``seq`` range,
  and the messages that follow.

While a subscriber replays history (after ``subscribe``), its live messages are held and
flushed when the replay ends, skipping those the replay covered: see
:meth:`TopicFanout.finish_replay`.

Compression: frames go uncompressed (RSV1 clear), which RFC 7692 §6 allows on any connection,
to every subscriber whose compressor keeps its context between messages: its compressed bytes
depend on its own history and cannot be shared. Subscribers whose server side negotiated
``server_no_context_takeover`` are grouped by their settings (window bits, level, memLevel),
and each group's live frames are compressed once per turn, ending each message with
``Z_FULL_FLUSH`` so the bytes do not depend on anything sent before, and shared by the group.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..asyncio.broadcast import Written, close_slow, text_frame, write_frame
from ..asyncio.connection import WebSocket
from ..asyncio.stats import Histogram
from ..protocol.connection import State
from ..protocol.extensions.permessage_deflate import EMPTY_UNCOMPRESSED_BLOCK, PerMessageDeflate
from ..protocol.frames import Opcode, serialize_header
from . import protocol
from .base import Envelope, PresenceEvent

__all__ = ["HubStats", "Subscriber", "TopicFanout", "GAP_POLL_INTERVAL"]

GAP_POLL_INTERVAL = 0.05
"""Seconds between checks of a dropping subscriber's backlog (drop policy only)."""
RECENT_CHANGES = 4096
"""Presence changes remembered after they went out (see TopicFanout.snapshot_taken)."""
PRESENCE_WINDOW = 0.05
"""Seconds presence changes are gathered before they go out as one frame: a storm of joins
costs each subscriber a frame per window, not one per join. The window grows with the topic's
local subscribers (+50 ms per 500 of them, at most :data:`MAX_PRESENCE_WINDOW`): each window
costs one write per subscriber, so a large room gathers longer."""
MAX_PRESENCE_WINDOW = 1.0


@dataclass(slots=True)
class HubStats:
    """The hub's counters, plain numbers read at scrape time (see :mod:`tether.metrics`).

    Attributes:
        delivered: message frames handed to subscribers (live, held then flushed, replayed).
        dropped: messages skipped for a slow subscriber (drop policy).
        closed_for_slowness: subscribers closed for being too slow (close policy).
        publishes: messages stored by this hub (from clients and from ``Hub.publish``).
        dedup_hits: publishes recognised as repeats and acknowledged without storing.
        resumes: subscribes with ``since``, by outcome: ``exact`` (every message after it),
            ``gap`` (some were no longer kept), ``reset`` (another epoch: started over).
        backend_errors: backend calls that failed (``BackendUnavailable``), by call.
        backend_seconds: how long backend calls took, by call (publish, history, join...).
    """

    delivered: int = 0
    dropped: int = 0
    closed_for_slowness: int = 0
    publishes: int = 0
    dedup_hits: int = 0
    resumes: Counter[str] = field(default_factory=Counter)
    backend_errors: Counter[str] = field(default_factory=Counter)
    backend_seconds: dict[str, Histogram] = field(default_factory=dict)

    def timed(self, call: str) -> Histogram:
        """The latency histogram of one kind of backend call."""
        histogram = self.backend_seconds.get(call)
        if histogram is None:
            histogram = self.backend_seconds[call] = Histogram()
        return histogram


class Subscriber:
    """One connection's subscription to one topic.

    Attributes:
        ws: the connection.
        held: frames kept back while the history is replayed, as (seq, frame), seq 0 for a
            presence frame; None once live.
        gap_from, gap_to: the ``seq`` range skipped so far (drop policy); 0 when none.
        presence_stale: a presence change was skipped (drop policy): the subscriber gets a
            new snapshot once it catches up.
        presence_since: the number of the last presence change its snapshot covers.
    """

    __slots__ = ("ws", "held", "held_bytes", "gap_from", "gap_to", "timer", "active", "group",
                 "presence_stale", "presence_since")

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.group = compression_group(ws)
        self.held: list[tuple[int, bytes]] | None = []
        self.held_bytes = 0
        self.gap_from = 0
        self.gap_to = 0
        self.timer: asyncio.TimerHandle | None = None
        self.active = True
        self.presence_stale = False
        self.presence_since = 0


CompressionGroup = tuple[int, int, int]
"""(window bits, level, memLevel) of subscribers that can share compressed frames."""


def compression_group(ws: WebSocket) -> CompressionGroup | None:
    """The group whose compressed frames ``ws`` can take, or None for uncompressed frames."""
    extension = ws.protocol.extension
    if (
        isinstance(extension, PerMessageDeflate)
        and extension.local_no_context_takeover
        and extension.local_max_window_bits >= 9  # zlib cannot compress with 8 bits
    ):
        return (extension.local_max_window_bits, extension.compress_level, extension.mem_level)
    return None


def _own_batch(subscriber: Subscriber, batch: list[tuple[int, bytes]],
               substitutes: list[tuple[bytes, dict[Subscriber, bytes | None]]]
               ) -> list[tuple[int, bytes]]:
    """The batch as this subscriber gets it: ``batch`` itself, or a copy where presence
    frames have its own form (or are left out)."""
    mine = [(frame, own[subscriber]) for frame, own in substitutes if subscriber in own]
    if not mine:
        return batch
    out = []
    for seq, frame in batch:
        if not seq:
            for original, replacement in mine:
                if frame is original:
                    if replacement is not None:
                        out.append((0, replacement))
                    break
            else:
                out.append((seq, frame))
        else:
            out.append((seq, frame))
    return out


def _payload(frame: bytes) -> bytes:
    """The payload of an unmasked server frame built by ``text_frame``."""
    length = frame[1] & 0x7F
    return frame[2 if length < 126 else 4 if length == 126 else 10 :]


class TopicFanout:
    """The local subscribers of one topic, and the listener that writes to them.

    An instance is the backend listener for its topic (it is callable with an
    :class:`Envelope` or a :class:`PresenceEvent`).

    Args:
        topic: the topic.
        stats: counters shared by the hub's topics.
        max_buffered: unsent bytes a subscriber may have before the slow policy applies.
        drop: True for the ``drop`` policy, False for ``close``.
        slow_code: the close code of the ``close`` policy.
    """

    def __init__(
        self, topic: str, stats: HubStats, *, max_buffered: int, drop: bool, slow_code: int,
        snapshot_limit: int | None = None,
        resync: Callable[[TopicFanout, Subscriber], None] | None = None,
    ) -> None:
        self.topic = topic
        self.stats = stats
        self.max_buffered = max_buffered
        self.drop = drop
        self.slow_code = slow_code
        self.subscribers: dict[Subscriber, None] = {}
        self.lock = asyncio.Lock()  # serializes listen/unlisten with the backend
        self.listening = False
        self.published = 0  # messages of this topic seen live here (the admin page's rate)
        self.snapshot_limit = snapshot_limit
        self.resync = resync  # sends a subscriber whose presence is stale a new snapshot
        self._pending: list[tuple[int, bytes]] = []
        self._flush_handle: asyncio.Handle | None = None
        # This window's changes: name -> (+1 joined or -1 left: its last change, the one
        # that decides, and that change's number). Numbered so that a subscriber whose
        # snapshot was read during the window gets only what the snapshot missed.
        self._changes: dict[str, tuple[int, int]] = {}
        self._change_no = 0
        # The changes sent lately, (number, name, +1/-1), for a subscriber whose snapshot
        # was read while they arrived (see snapshot_taken).
        self._recent: deque[tuple[int, str, int]] = deque(maxlen=RECENT_CHANGES)
        self._changes_handle: asyncio.TimerHandle | None = None
        # Frames of this turn's batch that some subscribers get in another form:
        # (frame, {subscriber: its own frame, or None for nothing}).
        self._substitutes: list[tuple[bytes, dict[Subscriber, bytes | None]]] = []
        self._compressors: dict[CompressionGroup, zlib._Compress] = {}

    # -- membership ------------------------------------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        """Add a subscriber; it starts in the replay state, holding its live frames."""
        self.subscribers[subscriber] = None

    def remove(self, subscriber: Subscriber) -> None:
        subscriber.active = False
        if subscriber.timer is not None:
            subscriber.timer.cancel()
            subscriber.timer = None
        self.subscribers.pop(subscriber, None)
        if not self.subscribers and self._changes_handle is not None:
            self._changes_handle.cancel()  # nobody left to tell
            self._changes_handle = None
            self._changes.clear()

    # -- live delivery ---------------------------------------------------------------------

    def __call__(self, event: Envelope | PresenceEvent) -> None:
        if type(event) is Envelope:
            self.published += 1
            self.deliver(event.seq, text_frame(protocol.encode(protocol.message(event))))
        elif isinstance(event, PresenceEvent):
            if event.members is not None:  # start over: what was gathered is superseded
                self._changes.clear()
                names = list(event.members)
                page = names if self.snapshot_limit is None else names[:self.snapshot_limit]
                self.deliver(0, text_frame(protocol.encode(
                    protocol.snapshot(self.topic, page, len(names)))))
                return
            changes = self._changes
            for name, step in ((event.left, -1), (event.joined, 1)):
                if name is not None:
                    # The last change of a name decides (set semantics): applied to a
                    # snapshot read at any point of the window, the frame gives the right list.
                    self._change_no += 1
                    changes[name] = (step, self._change_no)
            if changes and self._changes_handle is None:
                self._changes_handle = asyncio.get_running_loop().call_later(
                    self.presence_window(), self.flush_changes)

    def presence_window(self) -> float:
        """How long this topic gathers presence changes (see PRESENCE_WINDOW)."""
        return min(MAX_PRESENCE_WINDOW,
                   PRESENCE_WINDOW * (1 + len(self.subscribers) // 500))

    def flush_changes(self) -> None:
        """Send the presence changes gathered in this window as one frame; a subscriber
        whose snapshot was read during the window gets only the changes after it."""
        if self._changes_handle is not None:
            self._changes_handle.cancel()
            self._changes_handle = None
        changes, self._changes = self._changes, {}
        if not changes:
            return
        self._recent.extend(sorted((number, name, step)
                                   for name, (step, number) in changes.items()))
        frame = self._changes_frame(changes, 0)
        assert frame is not None
        first = min(number for _, number in changes.values())
        own = {subscriber: self._changes_frame(changes, subscriber.presence_since)
               for subscriber in self.subscribers if subscriber.presence_since >= first}
        if own:
            self._substitutes.append((frame, own))
        self.deliver(0, frame)

    def _changes_frame(self, changes: dict[str, tuple[int, int]], after: int) -> bytes | None:
        joined = sorted(name for name, (step, number) in changes.items()
                        if step > 0 and number > after)
        left = sorted(name for name, (step, number) in changes.items()
                      if step < 0 and number > after)
        if not joined and not left:
            return None
        return text_frame(protocol.encode(protocol.changes(self.topic, joined, left)))

    def deliver(self, seq: int, frame: bytes) -> None:
        """Queue one frame for every subscriber: a message (``seq`` > 0) or a presence
        change (``seq`` 0). The frames queued during one turn of the event loop go out
        together at its end (:meth:`flush`): one write per subscriber, whatever their
        number."""
        self._pending.append((seq, frame))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued frames to every subscriber, as one ``bytes`` object shared by
        all of them (held instead for a subscriber still replaying)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        substitutes, self._substitutes = self._substitutes, []
        if not batch:
            return
        blob = batch[0][1] if len(batch) == 1 else b"".join([frame for _, frame in batch])
        blobs: dict[CompressionGroup, bytes] = {}
        messages = sum(1 for seq, _ in batch if seq)
        max_buffered = self.max_buffered
        delivered = 0
        for subscriber in self.subscribers:
            if substitutes:
                own = _own_batch(subscriber, batch, substitutes)
                if own is not batch:  # a presence change in another form: frame by frame
                    if subscriber.held is not None:
                        for seq, frame in own:
                            self._hold(subscriber, seq, frame)
                    elif (subscriber.gap_from or subscriber.presence_stale) and \
                            not self._end_gap(subscriber):
                        for seq, _ in own:
                            self._drop(subscriber, seq)
                    else:
                        delivered += self._write_each(subscriber, own)
                    continue
            if subscriber.held is not None:
                for seq, frame in batch:
                    self._hold(subscriber, seq, frame)
                continue
            if (subscriber.gap_from or subscriber.presence_stale) and \
                    not self._end_gap(subscriber):
                for seq, _ in batch:
                    self._drop(subscriber, seq)
                continue
            group = subscriber.group
            if group is None:
                shared = blob
            else:
                shared = blobs.get(group) or blobs.setdefault(group, self._compress(group, batch))
            if len(batch) > 1 and subscriber.ws.buffered_amount + len(shared) > max_buffered:
                # The whole turn would pass the budget: each frame is judged alone.
                delivered += self._write_each(subscriber, batch)
                continue
            written = write_frame(subscriber.ws, shared, max_buffered)
            if written is Written.SENT:
                delivered += messages
            elif written is Written.OVER_BUDGET:
                delivered += self._write_each(subscriber, batch)
        self.stats.delivered += delivered

    def _compress(self, group: CompressionGroup, batch: list[tuple[int, bytes]]) -> bytes:
        """The batch's frames compressed once for a group: RSV1 set, each message ending with
        a full flush, so the bytes suit every connection of the group wherever it is in its
        stream."""
        compressor = self._compressors.get(group)
        if compressor is None:
            bits, level, mem_level = group
            compressor = self._compressors[group] = zlib.compressobj(
                level, zlib.DEFLATED, -bits, mem_level)
        frames = []
        for _, frame in batch:
            data = compressor.compress(_payload(frame)) + compressor.flush(zlib.Z_FULL_FLUSH)
            if data.endswith(EMPTY_UNCOMPRESSED_BLOCK):
                data = data[:-4]
            frames.append(serialize_header(True, True, Opcode.TEXT, len(data), False) + data)
        return b"".join(frames)

    def _write_each(self, subscriber: Subscriber, frames: list[tuple[int, bytes]]) -> int:
        """Write frames one by one, each within the budget; the slow policy applies from
        the first that does not fit. Return how many messages were written."""
        delivered = 0
        ws = subscriber.ws
        for seq, frame in frames:
            if subscriber.gap_from and (not seq or seq >= subscriber.gap_from):
                self._drop(subscriber, seq)  # the gap notice goes after the frames before it
                continue
            written = write_frame(ws, frame, self.max_buffered)
            if written is Written.SENT:
                if seq:
                    delivered += 1
            elif written is Written.OVER_BUDGET:
                self._slow(subscriber, seq)
            if ws.protocol.state is not State.OPEN:
                break
        return delivered

    def _hold(self, subscriber: Subscriber, seq: int, frame: bytes) -> None:
        assert subscriber.held is not None
        if subscriber.gap_from:
            self._drop(subscriber, seq)
            return
        if subscriber.held_bytes > self.max_buffered:  # the frame's own size never counts
            self._slow(subscriber, seq)
            return
        subscriber.held.append((seq, frame))
        subscriber.held_bytes += len(frame)

    def _slow(self, subscriber: Subscriber, seq: int) -> None:
        if self.drop:
            self._drop(subscriber, seq)
            return
        if subscriber.ws.protocol.state is State.OPEN:
            self.stats.closed_for_slowness += 1
            close_slow(subscriber.ws, self.slow_code, policy="hub")
        if subscriber.held is not None:
            subscriber.held.clear()
            subscriber.held_bytes = 0

    def _drop(self, subscriber: Subscriber, seq: int) -> None:
        if not seq:
            # A presence change: once it catches up, the subscriber gets a new snapshot.
            if not subscriber.presence_stale:
                subscriber.presence_stale = True
                if subscriber.held is None:
                    self._watch_gap(subscriber)
            return
        self.stats.dropped += 1
        if subscriber.gap_from:
            subscriber.gap_from = min(subscriber.gap_from, seq)
            subscriber.gap_to = max(subscriber.gap_to, seq)
            return
        subscriber.gap_from = subscriber.gap_to = seq
        if subscriber.held is None:
            self._watch_gap(subscriber)

    def _end_gap(self, subscriber: Subscriber) -> bool:
        """Send the gap notice (and ask for a presence snapshot, if changes were skipped)
        if the subscriber caught up; return whether it did."""
        ws = subscriber.ws
        if ws.protocol.state is not State.OPEN or ws.buffered_amount > self.max_buffered // 2:
            return False
        if subscriber.gap_from:
            notice = protocol.gap(self.topic, subscriber.gap_from, subscriber.gap_to)
            write_frame(ws, text_frame(protocol.encode(notice)), self.max_buffered)
        subscriber.gap_from = subscriber.gap_to = 0
        if subscriber.presence_stale:
            subscriber.presence_stale = False
            if self.resync is not None:
                self.resync(self, subscriber)
        if subscriber.timer is not None:
            subscriber.timer.cancel()
            subscriber.timer = None
        return True

    def _watch_gap(self, subscriber: Subscriber) -> None:
        if subscriber.timer is None:
            loop = asyncio.get_running_loop()
            subscriber.timer = loop.call_later(GAP_POLL_INTERVAL, self._check_gap, subscriber)

    def _check_gap(self, subscriber: Subscriber) -> None:
        subscriber.timer = None
        if not subscriber.active or not (subscriber.gap_from or subscriber.presence_stale):
            return
        if subscriber.ws.protocol.state is not State.OPEN:
            return
        if not self._end_gap(subscriber):
            self._watch_gap(subscriber)

    # -- replay ----------------------------------------------------------------------------

    def presence_mark(self) -> int:
        """The number of the last presence change seen here: take it before reading a
        snapshot, and hand it to :meth:`snapshot_taken` after."""
        return self._change_no

    def snapshot_taken(self, subscriber: Subscriber, mark: int) -> None:
        """The subscriber's presence snapshot was just read, after ``mark``: it covers the
        changes up to ``mark``. Those after it may or may not be in it (a networked
        backend's change can arrive here before or after the read's answer): they are sent
        again, which is harmless (a change is applied as a set operation). Held presence
        frames are replaced by exactly those changes."""
        subscriber.presence_since = mark
        self.flush()
        held = subscriber.held
        if not held or all(seq for seq, _ in held):
            return
        recent = self._recent
        if recent and recent[0][0] > mark + 1:
            return  # older than what is remembered: keep what was held (repeats are harmless)
        missed: dict[str, tuple[int, int]] = {}
        for number, name, step in recent:
            if number > mark:
                missed[name] = (step, number)
        subscriber.held = [item for item in held if item[0]]
        frame = self._changes_frame(missed, mark) if missed else None
        if frame is not None:
            subscriber.held.append((0, frame))
        subscriber.held_bytes = sum(len(frame) for _, frame in subscriber.held)

    def finish_replay(self, subscriber: Subscriber, last_seq: int) -> None:
        """The history up to ``last_seq`` was sent: flush the held frames after it, in
        order, and go live. Held messages with ``seq <= last_seq`` came through the replay
        (or were before the replayed window) and are skipped: no gap, no duplicate."""
        self.flush()  # frames still queued are held too, and checked like them
        held = subscriber.held or []
        subscriber.held = None
        subscriber.held_bytes = 0
        if subscriber.gap_from:  # the hold overflowed (drop policy): trim what history sent
            if subscriber.gap_to <= last_seq:
                subscriber.gap_from = subscriber.gap_to = 0
            else:
                subscriber.gap_from = max(subscriber.gap_from, last_seq + 1)
        fresh = [(seq, frame) for seq, frame in held if not seq or seq > last_seq]
        self.stats.delivered += self._write_each(subscriber, fresh)
        if (subscriber.gap_from or subscriber.presence_stale) and \
                not self._end_gap(subscriber):
            self._watch_gap(subscriber)
