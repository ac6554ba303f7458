"""The hub over real loopback sockets: ordering, exact resume (also racing publishes), gaps,
epochs, presence, the protocol's errors, durability, server-side publishing."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.hub import (
    Backend,
    BackendUnavailable,
    Envelope,
    HistoryResult,
    Hub,
    MemoryBackend,
)
from tether.hub.fanout import PRESENCE_WINDOW
from tether.hub.sqlite import SQLiteBackend

from ..asyncio.conftest import until
from .conftest import UNIT, BackendKind, HubClient, WrappedBackend, hub_serving, run


class RacingBackend(WrappedBackend):
    """While a subscriber reads history, publishes land just before the read (so they are
    in both the history and the live feed) and just after it (live only)."""

    def __init__(self, inner: Backend, before: int = 2, after: int = 2) -> None:
        super().__init__(inner)
        self.before = before
        self.after = after
        self.racing = False

    async def history(
        self, topic: str, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        if not self.racing:
            return await self.inner.history(topic, since, limit)
        for n in range(self.before):
            await self.inner.publish(topic, f"before-read {n}")
        await asyncio.sleep(0)
        result = await self.inner.history(topic, since, limit)
        for n in range(self.after):
            await self.inner.publish(topic, f"after-read {n}")
        await asyncio.sleep(UNIT)
        return result


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["seq"] for frame in frames]


class TestSubscribeAndPublish:
    def test_fresh_subscribe_replays_recent_history_then_live(self) -> None:
        async def main() -> None:
            hub = Hub(history_limit=3)
            for n in range(5):
                await hub.publish("news", {"n": n})
            async with hub_serving(hub) as (_, connect):
                alice = await connect("alice")
                subscribed, presence, replayed = await alice.subscribe("news")
                assert subscribed == {
                    "type": "subscribed", "topic": "news", "epoch": subscribed["epoch"],
                    "seq": 5, "replayed": 3, "gap": False,
                }
                assert presence == {"type": "presence", "topic": "news", "members": ["alice"],
                                    "count": 1}
                assert seqs(replayed) == [3, 4, 5]
                assert replayed[0]["data"] == {"n": 2} and replayed[0]["sender"] is None
                await alice.send(type="publish", topic="news", data="hi", id="p1")
                live, ack = await alice.message_and_ack()
                assert (live["seq"], live["data"], live["sender"]) == (6, "hi", "alice")
                assert live["epoch"] == subscribed["epoch"] and isinstance(live["time"], int)
                assert ack == {"type": "ack", "id": "p1", "topic": "news", "seq": 6}
                await alice.send(type="publish", topic="news", data=None)
                live, ack = await alice.message_and_ack()
                assert (live["seq"], live["data"], ack["seq"], ack["id"]) == (7, None, 7, None)
                await alice.send(type="ping", id="x")
                await alice.expect("pong", id="x")
                await alice.send(type="ping")
                assert await alice.recv() == {"type": "pong"}
                await alice.close()
            assert hub.stats.delivered == 3 + 2
            await hub.close()

        run(main())

    def test_every_subscriber_sees_one_order(self) -> None:
        """Three publishers at once, three subscribers: everyone sees seq 1..90 in order,
        each publisher's messages in the order it sent them."""

        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                publishers = [await connect(f"p{i}") for i in range(3)]
                readers = [await connect(f"r{i}") for i in range(3)]
                for client in publishers + readers:
                    await client.subscribe("t")

                async def publish(client: HubClient, i: int) -> list[int]:
                    for n in range(30):
                        await client.send(type="publish", topic="t", data=[i, n], id=str(n))
                    acked, messages = [], 0
                    while len(acked) < 30 or messages < 90:  # read everything
                        frame = await client.recv()
                        if frame["type"] == "ack":
                            acked.append(frame["seq"])
                        messages += frame["type"] == "message"
                    return acked

                async def read(client: HubClient) -> list[dict[str, Any]]:
                    frames: list[dict[str, Any]] = []
                    while len(frames) < 90:
                        frame = await client.recv()
                        if frame["type"] == "message":
                            frames.append(frame)
                    return frames

                results = await asyncio.gather(
                    *(publish(c, i) for i, c in enumerate(publishers)),
                    *(read(c) for c in readers),
                )
                acks = sorted(seq for acked in results[:3] for seq in acked)  # type: ignore
                assert acks == list(range(1, 91))
                streams: list[list[dict[str, Any]]] = results[3:]  # type: ignore
                for frames in streams:
                    assert seqs(frames) == list(range(1, 91))
                    assert frames == streams[0]
                    for i in range(3):
                        mine = [f["data"][1] for f in frames if f["data"][0] == i]
                        assert mine == list(range(30))
                        assert {f["sender"] for f in frames if f["data"][0] == i} == {f"p{i}"}
            await hub.close()

        run(main())

    def test_unsubscribe_stops_delivery(self) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                alice = await connect("alice")
                await alice.subscribe("a")
                await alice.subscribe("b")
                await alice.send(type="unsubscribe", topic="a")
                await alice.send(type="ping")
                await alice.expect("pong")
                await hub.publish("a", "not for alice")
                await hub.publish("b", "for alice")
                await alice.expect("message", topic="b", data="for alice")
                await alice.quiet()
                assert hub.topics() == {"b": 1}
                await alice.send(type="publish", topic="a", data=1, id="q")
                await alice.expect("error", code="not_subscribed", id="q")
                await alice.close()
                await until(lambda: hub.topics() == {}, what="alice gone")
            await hub.close()

        run(main())

    def test_server_side_publish(self) -> None:
        async def main() -> None:
            hub = Hub()
            envelope = await hub.publish("t", {"a": 1}, sender="system")
            assert (envelope.seq, envelope.sender, envelope.data) == (1, "system", {"a": 1})
            with pytest.raises(ValueError):
                await hub.publish("bad topic", 1)
            with pytest.raises(TypeError):
                await hub.publish("t", object())
            with pytest.raises(ValueError):
                await hub.publish("t", float("nan"))
            assert (await hub.publish("t", 2)).seq == 2  # nothing else was stored
            await hub.close()
            await hub.close()  # twice: no error
            with pytest.raises(BackendUnavailable):
                await hub.publish("t", 3)

        run(main())

    def test_serve_can_subscribe_at_once(self) -> None:
        async def main() -> None:
            hub = Hub(history_limit=1)
            await hub.publish("news", "old")

            async def handler(ws: tether.WebSocket) -> None:
                await hub.serve(ws, "auto", subscribe=["news", "lobby"])

            async with tether.serve(handler, "127.0.0.1", 0) as server:
                async with tether.connect(f"ws://127.0.0.1:{server.port_number}") as ws:
                    client = HubClient(ws)
                    await client.expect("subscribed", topic="news", replayed=1)
                    await client.expect("presence", members=["auto"])
                    await client.expect("message", data="old")
                    await client.expect("subscribed", topic="lobby", replayed=0)
                    await client.expect("presence", topic="lobby")
                    await client.send(type="publish", topic="lobby", data=1)
                    message, _ = await client.message_and_ack()
                    assert (message["topic"], message["sender"]) == ("lobby", "auto")
            with pytest.raises(ValueError):
                await hub.serve(ws, "x", subscribe=["bad topic"])
            await hub.close()

        run(main())

    def test_bad_options(self) -> None:
        with pytest.raises(ValueError, match="slow_policy"):
            Hub(slow_policy="wait")
        with pytest.raises(ValueError):
            Hub(max_frame=0)


class TestResume:
    def test_exactly_once_across_a_resume(self, backend_kind: BackendKind) -> None:
        """N messages, disconnect, M more, resume with since: exactly the M, then live."""

        async def main() -> None:
            hub = Hub(backend_kind.open())
            async with hub_serving(hub) as (_, connect):
                client = await connect("c")
                subscribed, _, _ = await client.subscribe("t")
                epoch = subscribed["epoch"]
                for n in range(5):
                    await hub.publish("t", n)
                seen = await client.messages(5)
                await client.close()
                for n in range(5, 12):
                    await hub.publish("t", n)
                client = await connect("c")
                subscribed, _, replayed = await client.subscribe(
                    "t", since=seen[-1]["seq"], epoch=epoch)
                assert (subscribed["seq"], subscribed["replayed"], subscribed["gap"]) == (
                    12, 7, False)
                assert "first" not in subscribed
                assert seqs(replayed) == list(range(6, 13))
                assert [m["data"] for m in replayed] == list(range(5, 12))
                for n in range(12, 15):
                    await hub.publish("t", n)
                assert seqs(await client.messages(3)) == [13, 14, 15]
                await client.quiet()
                await client.close()
            await hub.close()

        run(main())

    def test_publishes_racing_the_resume(self, backend_kind: BackendKind) -> None:
        """Messages published while the history is read reach the live feed too: those the
        history covers are skipped, the others follow the replay. No gap, no duplicate."""

        async def main() -> None:
            backend = RacingBackend(backend_kind.open(), before=3, after=4)
            hub = Hub(backend)
            async with hub_serving(hub) as (_, connect):
                for n in range(6):
                    await hub.publish("t", n)
                epoch = await backend.epoch("t")
                backend.racing = True
                client = await connect("c")
                subscribed, _, replayed = await client.subscribe("t", since=2, epoch=epoch)
                assert subscribed["seq"] == 9 and not subscribed["gap"]
                assert seqs(replayed) == list(range(3, 10))  # 3..6, then the 3 "before"
                live = await client.messages(4)  # the 4 "after", held during the replay
                assert seqs(live) == [10, 11, 12, 13]
                assert live[0]["data"] == "after-read 0"
                backend.racing = False
                await hub.publish("t", "then")
                await client.expect("message", seq=14)
                await client.quiet()
                # A fresh subscribe (no since) races the same way.
                backend.racing = True
                other = await connect("d")
                subscribed, _, replayed = await other.subscribe("t")
                assert seqs(replayed) == list(range(1, 18)) and subscribed["seq"] == 17
                assert seqs(await other.messages(4)) == [18, 19, 20, 21]
                await other.quiet()
                # Presence changes go out once per window: after or among the messages.
                frames = [await client.recv() for _ in range(8)]
                assert [f for f in frames if f["type"] == "presence"] == [
                    {"type": "presence", "topic": "t", "joined": ["d"]}]
                assert seqs([f for f in frames if f["type"] == "message"]) == list(
                    range(15, 22))
            await hub.close()

        run(main(), timeout=200 * UNIT)

    def test_resumes_under_continuous_publishing(self) -> None:
        """A publisher never stops; a client reads a few messages, drops the connection and
        resumes, again and again: it sees every seq exactly once, in order."""

        async def main() -> None:
            hub = Hub(history_limit=0)
            stop = asyncio.Event()

            async def publisher() -> None:
                n = 0
                while not stop.is_set():
                    await hub.publish("t", n)
                    n += 1
                    await asyncio.sleep(0.001 if n % 5 else 0)

            async with hub_serving(hub) as (_, connect):
                client = await connect("c")
                subscribed, _, _ = await client.subscribe("t")
                task = asyncio.ensure_future(publisher())
                seen: list[int] = []
                last = subscribed["seq"]
                epoch = subscribed["epoch"]


                async def next_message() -> int:
                    while True:  # presence frames may come too: the old session leaving
                        frame = await client.recv()
                        if frame["type"] == "message":
                            return int(frame["seq"])

                for _ in range(8):
                    for _ in range(10):
                        seen.append(await next_message())
                    assert client.ws.transport is not None
                    client.ws.transport.abort()  # a dropped connection, no closing handshake
                    client = await connect("c")
                    _, _, replayed = await client.subscribe("t", since=seen[-1], epoch=epoch)
                    seen.extend(seqs(replayed))
                stop.set()
                await task
                final = (await hub.backend.history("t")).last_seq
                while seen[-1] < final:
                    seen.append(await next_message())
                assert seen == list(range(last + 1, final + 1))
                await client.quiet(UNIT)
            await hub.close()

        run(main())

    def test_gap_when_since_is_older_than_history(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            hub = Hub(backend_kind.open(history_size=5))
            for n in range(20):
                await hub.publish("t", n)
            epoch = await hub.backend.epoch("t")
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                subscribed, _, replayed = await client.subscribe("t", since=3, epoch=epoch)
                assert (subscribed["gap"], subscribed["first"], subscribed["replayed"]) == (
                    True, 16, 5)
                assert seqs(replayed) == [16, 17, 18, 19, 20]
                exact, _, replayed = await client.subscribe("t", since=15, epoch=epoch)
                assert (exact["gap"], "first" in exact, seqs(replayed)) == (
                    False, False, [16, 17, 18, 19, 20])
            await hub.close()

        run(main())

    def test_gap_with_an_empty_history(self) -> None:
        async def main() -> None:
            clock = [1_700_000_000.0]
            hub = Hub(MemoryBackend(history_age=60, clock=lambda: clock[0]))
            for n in range(4):
                await hub.publish("t", n)
            clock[0] += 120
            epoch = await hub.backend.epoch("t")
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                subscribed, _, _ = await client.subscribe("t", since=1, epoch=epoch)
                assert (subscribed["gap"], subscribed["first"], subscribed["seq"]) == (
                    True, 5, 4)
                await hub.publish("t", 4)
                await client.expect("message", seq=5)
            await hub.close()

        run(main())

    def test_another_epoch_means_everything_is_new(self) -> None:
        """A client from another life of the topic (a restart of a memory hub) gets every
        message of the current one, as if since were 0."""

        async def main() -> None:
            hub = Hub()
            for n in range(3):
                await hub.publish("t", n)
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                subscribed, _, replayed = await client.subscribe(
                    "t", since=40, epoch="an-old-epoch")
                assert subscribed["epoch"] != "an-old-epoch"
                assert (subscribed["gap"], subscribed["replayed"]) == (False, 3)
                assert seqs(replayed) == [1, 2, 3]
                # since without an epoch is taken as is
                subscribed, _, replayed = await client.subscribe("t", since=2)
                assert seqs(replayed) == [3]
                # epoch without since: a fresh subscribe
                _, _, replayed = await client.subscribe("t", epoch="x")
                assert seqs(replayed) == [1, 2, 3]
            await hub.close()

        run(main())

    def test_reset_while_reading_history(self) -> None:
        class ResetOnce(RacingBackend):
            async def history(
                self, topic: str, since: int | None = None, limit: int | None = None
            ) -> HistoryResult:
                if self.racing:
                    self.racing = False
                    await self.inner.reset(topic)
                    await self.inner.publish(topic, "new life")
                return await self.inner.history(topic, since, limit)

        async def main() -> None:
            backend = ResetOnce(MemoryBackend())
            hub = Hub(backend)
            for n in range(3):
                await hub.publish("t", n)
            epoch = await backend.epoch("t")
            backend.racing = True
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                subscribed, _, replayed = await client.subscribe("t", since=1, epoch=epoch)
                assert subscribed["epoch"] != epoch
                assert [m["data"] for m in replayed] == ["new life"]
            await hub.close()

        run(main())

    def test_subscribing_again_replays_from_since(self) -> None:
        """What a client does after a gap notice: subscribe again, with since."""

        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                a, b = await connect("a"), await connect("b")
                subscribed, _, _ = await a.subscribe("t")
                await b.subscribe("t")
                await a.expect("presence", joined=["b"])
                for n in range(5):
                    await hub.publish("t", n)
                assert seqs(await a.messages(5)) == [1, 2, 3, 4, 5]
                again, presence, replayed = await a.subscribe(
                    "t", since=3, epoch=subscribed["epoch"])
                assert seqs(replayed) == [4, 5] and presence["members"] == ["a", "b"]
                await hub.publish("t", 5)
                await a.expect("message", seq=6)
                await a.quiet()  # no duplicate, and no second "joined" for a
                await b.messages(6)
                await b.quiet()
            await hub.close()

        run(main())


class GatedPublish(WrappedBackend):
    """Publishes are stored at once, then held back from returning until ``release`` is set:
    the window in which a connection can drop between the store and the ack."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.stored = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.calls = 0

    async def publish(self, topic: str, data: Any, sender: str | None = None) -> Envelope:
        self.calls += 1
        envelope = await self.inner.publish(topic, data, sender)
        self.stored.set()
        await self.release.wait()
        return envelope


async def next_frame(client: HubClient, kind: str) -> dict[str, Any]:
    """The next frame of this type; presence changes and other types are skipped."""
    while (frame := await client.recv())["type"] != kind:
        pass
    return frame


class TestIdempotentPublish:
    """A publish sent again (same sender, id and data) is stored once and acked with its first
    seq; docs/hub-protocol.md "Resending a publish"."""

    def test_resend_after_a_drop_is_stored_once(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = GatedPublish(backend_kind.open())
            hub = Hub(backend)
            async with hub_serving(hub, close_timeout=2 * UNIT) as (_, connect):
                bob = await connect("bob")
                await bob.subscribe("room")
                alice = await connect("alice")
                subscribed, _, _ = await alice.subscribe("room")
                backend.release.clear()
                frame = dict(type="publish", topic="room", data={"text": "hi"}, id="k3j-1")
                await alice.send(**frame)
                await asyncio.wait_for(backend.stored.wait(), 20 * UNIT)
                assert alice.ws.transport is not None
                alice.ws.transport.abort()  # stored, but the ack never reaches alice
                await asyncio.sleep(UNIT)
                backend.release.set()

                again = await connect("alice")  # reconnects, resumes, sends it again
                _, _, replayed = await again.subscribe(
                    "room", since=subscribed["seq"], epoch=subscribed["epoch"])
                assert [(m["seq"], m["data"]) for m in replayed] == [(1, {"text": "hi"})]
                await again.send(**frame)
                assert await again.expect("ack") == {
                    "type": "ack", "id": "k3j-1", "topic": "room", "seq": 1}
                await again.quiet()  # no second message

                # Everyone else saw it once, and it is in the history once.
                assert (await next_frame(bob, "message"))["seq"] == 1
                await bob.send(type="publish", topic="room", data="next", id="b-1")
                assert (await next_frame(bob, "message"))["seq"] == 2
                assert (await again.expect("message"))["seq"] == 2
                history = await backend.history("room")
                assert [(m.seq, m.data, m.sender) for m in history.messages] == [
                    (1, {"text": "hi"}, "alice"), (2, "next", "bob")]
                assert backend.calls == 2
            await hub.close()

        run(main())

    def test_repeat_while_the_first_is_being_stored(self) -> None:
        async def main() -> None:
            backend = GatedPublish(MemoryBackend())
            hub = Hub(backend)
            async with hub_serving(hub) as (_, connect):
                first, second = await connect("alice"), await connect("alice")  # two tabs
                await first.subscribe("t")
                await second.subscribe("t")
                backend.release.clear()
                frame = dict(type="publish", topic="t", data=1, id="x-1")
                await first.send(**frame)
                await asyncio.wait_for(backend.stored.wait(), 20 * UNIT)
                await second.send(**frame)  # the resend races the original
                await asyncio.sleep(UNIT)
                backend.release.set()
                for client in (first, second):
                    message, ack = await client.message_and_ack()
                    assert message["seq"] == ack["seq"] == 1
                    await client.quiet()
                assert backend.calls == 1
            await hub.close()

        run(main())

    def test_what_is_not_a_repeat(self) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                alice, bob = await connect("alice"), await connect("bob")
                await alice.subscribe("t")
                await alice.subscribe("u")
                await bob.subscribe("t")
                await alice.expect("presence", joined=["bob"])
                acks = []
                for client, frame in [
                    (alice, dict(topic="t", data="a", id="1")),
                    (alice, dict(topic="t", data="a", id="1")),   # a repeat
                    (alice, dict(topic="t", data="b", id="1")),   # other data
                    (bob, dict(topic="t", data="a", id="1")),     # another sender
                    (alice, dict(topic="u", data="a", id="1")),   # another topic
                    (alice, dict(topic="t", data="a")),           # no id: never a repeat
                    (alice, dict(topic="t", data="a")),
                ]:
                    await client.send(type="publish", **frame)
                    acks.append(await next_frame(client, "ack"))
                assert [(a["topic"], a["seq"]) for a in acks] == [
                    ("t", 1), ("t", 1), ("t", 2), ("t", 3), ("u", 1), ("t", 4), ("t", 5)]
                assert (await hub.backend.history("t")).last_seq == 5
            await hub.close()

        run(main())

    def test_failed_store_is_not_remembered(self) -> None:
        async def main() -> None:
            class FailOnce(WrappedBackend):
                failed = False

                async def publish(
                    self, topic: str, data: Any, sender: str | None = None
                ) -> Envelope:
                    if not self.failed:
                        self.failed = True
                        raise BackendUnavailable("down for a moment")
                    return await self.inner.publish(topic, data, sender)

            hub = Hub(FailOnce(MemoryBackend()))
            async with hub_serving(hub) as (_, connect):
                alice = await connect("alice")
                await alice.subscribe("t")
                await alice.send(type="publish", topic="t", data=1, id="p")
                await alice.expect("error", code="unavailable", id="p")
                await alice.send(type="publish", topic="t", data=1, id="p")
                message, ack = await alice.message_and_ack()
                assert message["seq"] == ack["seq"] == 1
            await hub.close()

        run(main())

    def test_bounded_and_optional(self) -> None:
        async def main() -> None:
            hub = Hub(dedup_size=2)
            async with hub_serving(hub) as (_, connect):
                alice = await connect("alice")
                await alice.subscribe("t")
                for n in (1, 2, 3, 1):  # id 1 was pushed out by 2 and 3: stored again
                    await alice.send(type="publish", topic="t", data=0, id=str(n))
                    await alice.message_and_ack()
                assert hub.publishes is not None and len(hub.publishes) == 2
                assert (await hub.backend.history("t")).last_seq == 4
            await hub.close()
            off = Hub(dedup_size=0)
            assert off.publishes is None
            async with hub_serving(off) as (_, connect):
                alice = await connect("alice")
                await alice.subscribe("t")
                for _ in range(2):
                    await alice.send(type="publish", topic="t", data=0, id="same")
                    await alice.message_and_ack()
                assert (await off.backend.history("t")).last_seq == 2
            await off.close()
            with pytest.raises(ValueError):
                Hub(dedup_size=-1)
            with pytest.raises(ValueError):
                Hub(dedup_age=0)

        run(main())


class TestPresence:
    def test_join_and_leave(self) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                alice = await connect("alice")
                _, snapshot, _ = await alice.subscribe("room")
                assert snapshot["members"] == ["alice"] and "joined" not in snapshot
                bob = await connect("bob")
                _, snapshot, _ = await bob.subscribe("room")
                assert snapshot["members"] == ["alice", "bob"]
                await alice.expect("presence", joined=["bob"])
                bob_again = await connect("bob")  # a second tab: no change for others
                _, snapshot, _ = await bob_again.subscribe("room")
                assert snapshot["members"] == ["alice", "bob"]
                await bob_again.close()
                await alice.quiet()
                await bob.send(type="unsubscribe", topic="room")
                await alice.expect("presence", left=["bob"])
                await bob.subscribe("room")
                await alice.expect("presence", joined=["bob"])
                await bob.subscribe("lobby")
                await bob.close()  # leaves every topic
                await alice.expect("presence", left=["bob"])
                assert await hub.backend.members("lobby") == []
                await alice.quiet()
            await hub.close()

        run(main())

    def test_abrupt_disconnect_leaves(self) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub, close_timeout=2 * UNIT) as (_, connect):
                alice, bob = await connect("alice"), await connect("bob")
                await alice.subscribe("room")
                await bob.subscribe("room")
                await alice.expect("presence", joined=["bob"])
                assert bob.ws.transport is not None
                bob.ws.transport.abort()
                await alice.expect("presence", left=["bob"])
            await hub.close()

        run(main())


class TestPresenceAtScale:
    """Issue 17: presence as a snapshot, then changes; a join storm costs each subscriber a
    frame per window and each name about once, not a list per join."""

    @staticmethod
    def apply(members: set[str], frame: dict[str, Any]) -> int:
        """Apply a presence frame as a client does; return how many names it carried."""
        if "members" in frame:
            members.clear()
            members.update(frame["members"])
            return len(frame["members"])
        members.update(frame.get("joined", []))
        members.difference_update(frame.get("left", []))
        return len(frame.get("joined", [])) + len(frame.get("left", []))

    def test_a_join_storm_of_1000(self, backend_kind: BackendKind) -> None:
        n, at_once = 1000, 50

        async def main() -> None:
            hub = Hub(backend_kind.open())
            async with hub_serving(hub, compression=None) as (server, connect):
                clients: list[HubClient] = []
                sem = asyncio.Semaphore(at_once)

                async def join(i: int) -> None:
                    async with sem:
                        client = await connect(f"m{i:04d}", compression=None)
                        await client.send(type="subscribe", topic="storm")
                        clients.append(client)

                loop = asyncio.get_running_loop()
                started = loop.time()
                await asyncio.gather(*(join(i) for i in range(n)))
                expected = {f"m{i:04d}" for i in range(n)}
                frames_per_client: list[int] = []
                names_per_client: list[int] = []
                bytes_per_client: list[int] = []
                for client in clients:
                    members: set[str] = set()
                    frames = names = size = 0
                    while members != expected:
                        try:
                            raw = await asyncio.wait_for(client.ws.recv(), 100 * UNIT)
                        except asyncio.TimeoutError:
                            raise AssertionError(f"missing {sorted(expected - members)[:10]} "
                                                 f"extra {sorted(members - expected)[:10]} "
                                                 f"after {frames} frames") from None
                        frame = json.loads(raw)
                        if frame["type"] == "presence":
                            frames += 1
                            size += len(raw)
                            names += self.apply(members, frame)
                    frames_per_client.append(frames)
                    names_per_client.append(names)
                    bytes_per_client.append(size)
                # Every list is exact, and costs about one mention of each name: before issue
                # 17 the k-th joiner got the full list again at each later join (about n²/2
                # names for the first joiners).
                assert max(names_per_client) <= 2 * n, max(names_per_client)
                assert max(bytes_per_client) <= 2 * n * len('"m0000",'), max(bytes_per_client)
                # A frame per window at most (and the snapshot), not one per join.
                windows = (loop.time() - started) / PRESENCE_WINDOW
                assert max(frames_per_client) <= windows + 2, (max(frames_per_client), windows)
                assert max(frames_per_client) < n / 4, max(frames_per_client)
                print(f"storm of {n}: presence frames per subscriber max "
                      f"{max(frames_per_client)}, names max {max(names_per_client)}, bytes max "
                      f"{max(bytes_per_client)}")
                assert len(await hub.backend.members("storm")) == n
            await hub.close()

        run(main(), timeout=600 * UNIT)

    def test_presence_off(self) -> None:
        async def main() -> None:
            calls: list[str] = []

            class Counting(WrappedBackend):
                async def join(self, topic: str, member_id: str, name: str) -> None:
                    calls.append(f"join {topic}")
                    await super().join(topic, member_id, name)

            hub = Hub(Counting(MemoryBackend()), presence=lambda topic: topic != "ticker")
            async with hub_serving(hub) as (_, connect):
                a, b = await connect("a"), await connect("b")
                await a.send(type="subscribe", topic="ticker")
                subscribed = await a.expect("subscribed", topic="ticker")
                assert subscribed["presence"] is False
                await b.send(type="subscribe", topic="ticker")
                await b.expect("subscribed", presence=False)
                await hub.publish("ticker", 1)
                await a.expect("message", seq=1)  # no presence frame before it, or after
                await b.expect("message", seq=1)
                await b.close()
                await a.quiet()
                await a.send(type="members", topic="ticker", id="m")
                assert (await a.expect("error", id="m"))["code"] == "bad_topic"
                _, snapshot, _ = await a.subscribe("room")  # presence where it is on
                assert snapshot["members"] == ["a"]
                assert calls == ["join room"]
            await hub.close()

        run(main())

    def test_a_capped_snapshot_and_pages(self) -> None:
        async def main() -> None:
            hub = Hub(presence_snapshot=3)
            async with hub_serving(hub) as (_, connect):
                names = [f"u{i}" for i in range(8)]
                for name in names:
                    client = await connect(name)
                    await client.subscribe("big")
                viewer = await connect("viewer")
                _, snapshot, _ = await viewer.subscribe("big")
                assert snapshot == {"type": "presence", "topic": "big",
                                    "members": ["u0", "u1", "u2"], "count": 9, "more": True}
                seen = list(snapshot["members"])
                while True:
                    await viewer.send(type="members", topic="big", after=seen[-1], id="p")
                    page = await viewer.expect("members", topic="big", id="p", count=9)
                    seen += page["members"]
                    if not page.get("more"):
                        break
                assert seen == sorted(names + ["viewer"])
                await viewer.send(type="members", topic="elsewhere")
                assert (await viewer.expect("error"))["code"] == "not_subscribed"
            await hub.close()

        run(main())


class TestErrors:
    BAD = [
        ("{oops", "bad_json"),
        (b"\x00binary", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ("x" * 70_000, "too_big"),
        ('{"type": "shout"}', "unknown_type"),
        ('{"type": "subscribe"}', "bad_field"),
        ('{"type": "subscribe", "topic": "t", "since": "1"}', "bad_field"),
        ('{"type": "publish", "topic": "t"}', "bad_field"),
        ('{"type": "publish", "topic": "elsewhere", "data": 1}', "not_subscribed"),
        ('{"type": "unsubscribe", "topic": "elsewhere"}', "not_subscribed"),
        ('{"type": "subscribe", "topic": "no spaces"}', "bad_topic"),
    ]

    @pytest.mark.parametrize("frame, code", BAD, ids=[code for _, code in BAD])
    def test_error_leaves_the_connection_open_and_others_alone(
        self, frame: str | bytes, code: str
    ) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                bad, good = await connect("bad"), await connect("good")
                await bad.subscribe("t")
                await good.subscribe("t")
                await bad.expect("presence", joined=["good"])
                await bad.ws.send(frame)
                error = await bad.expect("error", code=code)
                assert isinstance(error["message"], str) and error["message"]
                await bad.send(type="ping", id=1)
                await bad.expect("pong", id=1)
                await good.send(type="publish", topic="t", data="still here", id="g")
                message, ack = await good.message_and_ack()
                assert (message["data"], ack["id"]) == ("still here", "g")
                await bad.expect("message", data="still here")
                await good.quiet(UNIT)
            await hub.close()

        run(main())

    def test_error_echoes_the_request_id(self) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                await client.send(type="publish", topic="t", data=1, id="req-1")
                await client.expect("error", code="not_subscribed", id="req-1")
            await hub.close()

        run(main())

    def test_too_big_echoes_the_id_and_stores_nothing(self) -> None:
        """tether.js's publish (``id`` right after ``type``), too big to parse: the error
        names it, so the client can fail that publish instead of sending it again."""

        async def main() -> None:
            hub = Hub(max_frame=1000)
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                await client.subscribe("t")
                await client.ws.send(json.dumps({"type": "publish", "id": "c-7", "topic": "t",
                                                 "data": {"text": "x" * 1000}}))
                error = await client.expect("error", code="too_big", id="c-7")
                assert "exceeds limit of 1000 bytes" in error["message"]
                await client.ws.send('{"type": "publish", "topic": "t", "data": "'
                                     + "y" * 1000 + '", "id": "c-8"}')  # id past the window
                assert "id" not in await client.expect("error", code="too_big")
                await client.quiet(UNIT)
                assert (await hub.backend.history("t", 0, None)).messages == ()
            await hub.close()

        run(main())

    def test_closed_with_1008_after_max_errors(self) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                for _ in range(19):
                    await client.ws.send("nope")
                    await client.expect("error", code="bad_json")
                await client.send(type="ping")
                await client.expect("pong")  # 19 errors: still open
                await client.ws.send(b"binary")
                await client.expect("error", code="bad_frame")  # the 20th is answered
                with pytest.raises(tether.ConnectionClosedError) as info:
                    await client.recv()
                assert info.value.code == 1008
                assert info.value.reason == "too many errors"
            await hub.close()

        run(main())

    def test_backend_unavailable(self) -> None:
        async def main() -> None:
            hub = Hub(max_errors=1)
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                await client.subscribe("t")
                await hub.backend.close()
                await client.send(type="publish", topic="t", data=1, id="p")
                await client.expect("error", code="unavailable", id="p")
                await client.send(type="subscribe", topic="u")
                await client.expect("error", code="unavailable")
                await client.send(type="ping")  # unavailable is not the client's error
                await client.expect("pong")
                assert hub.topics() == {"t": 1}
            await hub.close()

        run(main())

    def test_an_outage_is_logged_once_with_its_end(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Issue 14, finding 5: one warning when the backend starts failing, one line when a
        call succeeds again, with the number of requests answered `unavailable` between."""

        class Outage(WrappedBackend):
            down = False

            async def publish(self, topic: str, data: Any, sender: str | None = None
                              ) -> Envelope:
                if self.down:
                    raise BackendUnavailable("Redis at redis://127.0.0.1:1/0: connection refused")
                return await self.inner.publish(topic, data, sender)

            async def join(self, topic: str, member_id: str, name: str) -> None:
                if self.down:
                    raise BackendUnavailable("Redis at redis://127.0.0.1:1/0: connection refused")
                await self.inner.join(topic, member_id, name)

        caplog.set_level(logging.INFO, "tether.hub")

        def lines(event: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if f"event={event} " in
                    r.getMessage() + " "]

        async def main() -> None:
            backend = Outage(MemoryBackend())
            hub = Hub(backend)
            async with hub_serving(hub) as (_, connect):
                client = await connect("c")
                await client.subscribe("t")
                for outage in range(2):
                    backend.down = True
                    for n in range(30):
                        await client.send(type="publish", topic="t", data=n, id=f"{outage}.{n}")
                        await client.expect("error", code="unavailable", id=f"{outage}.{n}")
                    for topic in ("u", "v"):
                        await client.send(type="subscribe", topic=topic)
                        await client.expect("error", code="unavailable")
                    await client.send(type="ping")  # no backend call: the outage goes on
                    await client.expect("pong")
                    assert len(lines("hub_unavailable")) == outage + 1
                    assert len(lines("hub_recovered")) == outage
                    backend.down = False
                    await client.send(type="publish", topic="t", data="back", id=f"{outage}")
                    await client.message_and_ack()
                    await client.send(type="publish", topic="t", data="again")
                    await client.message_and_ack()
            await hub.close()

        run(main())
        down, back = lines("hub_unavailable"), lines("hub_recovered")
        assert down == ['event=hub_unavailable error="Redis at redis://127.0.0.1:1/0: '
                        'connection refused"'] * 2
        assert len(back) == 2
        for line in back:
            assert re.fullmatch(r"event=hub_recovered failures=32 duration=\d+\.\d{3}s", line)
        assert all(r.levelno == logging.WARNING for r in caplog.records
                   if "event=hub_" in r.getMessage())

    def test_a_call_made_before_an_outage_does_not_end_it(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Outage(GatedPublish):
            down = False

            async def join(self, topic: str, member_id: str, name: str) -> None:
                if self.down:
                    raise BackendUnavailable("down")
                await self.inner.join(topic, member_id, name)

        caplog.set_level(logging.WARNING, "tether.hub")

        async def main() -> None:
            backend = Outage(MemoryBackend())
            hub = Hub(backend)
            async with hub_serving(hub) as (_, connect):
                alice, bob = await connect("alice"), await connect("bob")
                await alice.subscribe("t")
                backend.release.clear()
                await alice.send(type="publish", topic="t", data=1, id="held")
                await backend.stored.wait()  # stored before the outage, answered after
                backend.down = True
                await bob.send(type="subscribe", topic="t")
                await bob.expect("error", code="unavailable")
                backend.release.set()
                await next_frame(alice, "ack")
                backend.down = False
                await bob.subscribe("t")
            await hub.close()

        run(main())
        events = [r.getMessage().rsplit(" duration=")[0] for r in caplog.records
                  if "event=hub_" in r.getMessage()]
        assert events == ['event=hub_unavailable error="down"',
                          "event=hub_recovered failures=1"]  # after bob's subscribe only


    def test_failed_resubscribe_unsubscribes(self) -> None:
        class FailingHistory(WrappedBackend):
            failing = False

            async def history(
                self, topic: str, since: int | None = None, limit: int | None = None
            ) -> HistoryResult:
                if self.failing:
                    raise BackendUnavailable("history is down")
                return await self.inner.history(topic, since, limit)

        async def main() -> None:
            backend = FailingHistory(MemoryBackend())
            hub = Hub(backend)
            async with hub_serving(hub) as (_, connect):
                client = await connect("c")
                await client.subscribe("t")
                backend.failing = True
                await client.send(type="subscribe", topic="t", since=0)
                await client.expect("error", code="unavailable")
                assert hub.topics() == {} and await backend.members("t") == []
                await client.send(type="publish", topic="t", data=1)
                await client.expect("error", code="not_subscribed")
                backend.failing = False
                await client.subscribe("t")
                assert await backend.members("t") == ["c"]
            await hub.close()

        run(main())


class TestLifecycle:
    def test_sqlite_history_survives_a_restart(self, tmp_path: Path) -> None:
        path = tmp_path / "chat.sqlite3"

        async def main() -> None:
            hub = Hub(SQLiteBackend(path))
            async with hub_serving(hub) as (_, connect):
                alice = await connect("alice")
                subscribed, _, _ = await alice.subscribe("room")
                for n in range(3):
                    await alice.send(type="publish", topic="room", data=f"m{n}")
                    await alice.message_and_ack()
            await hub.close()

            hub = Hub(SQLiteBackend(path))
            async with hub_serving(hub) as (_, connect):
                bob = await connect("bob")
                again, _, replayed = await bob.subscribe("room")
                assert again["epoch"] == subscribed["epoch"] and again["seq"] == 3
                assert [(m["data"], m["sender"]) for m in replayed] == [
                    ("m0", "alice"), ("m1", "alice"), ("m2", "alice")]
                resumed = await connect("alice")
                _, _, replayed = await resumed.subscribe(
                    "room", since=2, epoch=subscribed["epoch"])
                assert seqs(replayed) == [3]
                await bob.expect("presence", joined=["alice"])
                await bob.send(type="publish", topic="room", data="after restart")
                message, _ = await bob.message_and_ack()
                assert message["seq"] == 4
            await hub.close()

        run(main())

    def test_hub_close_closes_connections_with_1001(self) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                client = await connect()
                await client.subscribe("t")
                await hub.close()
                with pytest.raises(tether.ConnectionClosed) as info:
                    await client.recv()
                assert info.value.code == 1001

        run(main())

    def test_names_with_lone_surrogates_are_replaced(self) -> None:
        async def main() -> None:
            hub = Hub(SQLiteBackend(":memory:"))
            async with hub_serving(hub) as (server, connect):
                client = await connect()
                (server_ws,) = server.connections
                session_task = asyncio.ensure_future(hub.serve(server_ws, "x\ud800"))
                await asyncio.sleep(0)
                session_task.cancel()
                await client.close()
            envelope = await hub.publish("t", 1, sender="y\udfff")
            assert envelope.sender == "y?"
            await hub.close()

        run(main())


class TestSendTo:
    """Publishing to one connection: a ``direct`` frame, outside any topic."""

    def test_to_a_member_by_name_and_to_one_connection(self) -> None:
        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (server, connect):
                alice1, alice2, bob = await connect("alice"), await connect("alice"), \
                    await connect("bob")
                await bob.subscribe("room")  # a round trip: every session is registered
                assert hub.send_to("alice", {"hi": 1}, sender="server") == 2
                for client in (alice1, alice2):
                    frame = await client.expect("direct", data={"hi": 1}, sender="server")
                    assert isinstance(frame["time"], int)
                await bob.quiet()
                (bob_ws,) = [ws for ws in server.connections
                             if ws.request is not None and "name=bob" in ws.request.query]
                assert hub.send_to(bob_ws, "just you") == 1
                await bob.expect("direct", data="just you", sender=None)
                assert hub.send_to("nobody", 1) == 0
                with pytest.raises((TypeError, ValueError)):
                    hub.send_to("bob", float("nan"))
                # Not stored: a fresh subscriber replays nothing.
                subscribed, _, replayed = await (await connect("carol")).subscribe("room")
                assert replayed == []

        run(main())


class TestCompressedFanout:
    """Subscribers without server context takeover share one compressed frame per group;
    the others get the uncompressed frame. Everyone decodes the same messages."""

    def test_groups(self) -> None:
        from tether.protocol.extensions.permessage_deflate import ClientPerMessageDeflateFactory

        def offer(**options: Any) -> list[ClientPerMessageDeflateFactory]:
            return [ClientPerMessageDeflateFactory(**options)]

        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                plain = await connect("plain")
                group_a = [await connect(f"a{i}", extensions=offer(
                    server_no_context_takeover=True)) for i in range(2)]
                group_b = await connect("b", extensions=offer(
                    server_no_context_takeover=True, server_max_window_bits=10))
                everyone = [plain, *group_a, group_b]
                for client in everyone:
                    await client.subscribe("room")
                before = {id(c): c.ws.bytes_received for c in everyone}
                texts = [f"message {n} " + "all work and no play " * 100 for n in range(20)]
                for text in texts:
                    await hub.publish("room", {"text": text})
                for client in everyone:
                    got: list[str] = []
                    while len(got) < len(texts):
                        frame = await client.recv()
                        if frame["type"] == "message":  # presence frames of later joiners too
                            got.append(frame["data"]["text"])
                    assert got == texts
                used = {id(c): c.ws.bytes_received - before[id(c)] for c in everyone}
                # ~2 KB messages: compressed ones take a small fraction of the plain bytes.
                for client in [*group_a, group_b]:
                    assert used[id(client)] * 5 < used[id(plain)], used

        run(main())
