"""Fan-out: each live message framed once for every subscriber, and the slow-consumer
policies over real loopback sockets: close with 1013, or drop and send a gap notice; also
while a subscriber is still replaying history."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import tether
from tether.asyncio.broadcast import Written
from tether.asyncio.server import ServerConnection
from tether.hub import HistoryResult, Hub, MemoryBackend
from tether.hub import fanout

from ..asyncio.conftest import until
from .conftest import UNIT, HubClient, WrappedBackend, hub_serving, run

BUDGET = 64 * 1024
SIZE = 10_000
COUNT = 150


def server_side(server: tether.Server, name: str) -> ServerConnection:
    (ws,) = [c for c in server.connections
             if c.request is not None and c.request.query_params.get("name") == [name]]
    return ws


def starve(
    client: HubClient, server: tether.Server, name: str, rcvbuf: int = 4096
) -> ServerConnection:
    """Small kernel buffers both ends, and the client stops reading: its backlog builds up
    in the server, where the budget applies. A receive buffer below the loopback MSS (64 KiB)
    never reopens its window by itself once full (the sender then waits on zero-window
    probes with backoff): a client that will read again needs ``rcvbuf`` >= 128 KiB."""
    assert client.ws.transport is not None
    client.ws.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    ws = server_side(server, name)
    assert ws.transport is not None
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.ws.transport.pause_reading()
    return ws


async def publish_to_readers(hub: Hub, readers: list[HubClient], count: int) -> list[
        list[int]]:
    """Publish ``count`` messages of SIZE bytes, each once every reader has the previous
    one (so that only the starved client falls behind); return what each reader got."""
    received: list[list[int]] = [[] for _ in readers]
    progress = asyncio.Condition()

    async def receive(i: int) -> None:
        while len(received[i]) < count:
            frame = await readers[i].recv()
            if frame["type"] == "message":
                received[i].append(frame["seq"])
                async with progress:
                    progress.notify_all()

    tasks = [asyncio.ensure_future(receive(i)) for i in range(len(readers))]
    for n in range(count):
        await hub.publish("t", {"n": n, "pad": "x" * SIZE})
        async with progress:
            await progress.wait_for(lambda: all(len(r) > n for r in received))
    await asyncio.gather(*tasks)
    return received


class TestFrameOnce:
    def test_one_frame_object_for_every_subscriber(self, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
        frames: list[bytes] = []
        write_frame = fanout.write_frame

        def recording(ws: Any, frame: bytes, max_buffered: int) -> Written:
            frames.append(frame)
            return write_frame(ws, frame, max_buffered)

        monkeypatch.setattr(fanout, "write_frame", recording)

        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                clients = [await connect(f"c{i}") for i in range(3)]
                for client in clients:
                    await client.subscribe("t")
                joined = [sum((f.get("joined", []) for f in await client.drain()), [])
                          for client in clients]
                assert joined == [["c1", "c2"], ["c2"], []]
                frames.clear()
                await hub.publish("t", {"text": "héllo"})
                for client in clients:
                    await client.expect("message", data={"text": "héllo"})
                assert len(frames) == 3 and frames[0] is frames[1] is frames[2]
                assert frames[0][0] == 0x81  # FIN + text, uncompressed even with deflate on
            assert hub.stats.delivered == 3
            await hub.close()

        run(main())


    def test_one_write_per_subscriber_per_loop_turn(self, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
        writes: list[tuple[Any, bytes]] = []
        write_frame = fanout.write_frame

        def recording(ws: Any, frame: bytes, max_buffered: int) -> Written:
            writes.append((ws, frame))
            return write_frame(ws, frame, max_buffered)

        monkeypatch.setattr(fanout, "write_frame", recording)

        async def main() -> None:
            hub = Hub()
            async with hub_serving(hub) as (_, connect):
                clients = [await connect("same") for _ in range(3)]  # one name: no presence
                for client in clients:
                    await client.subscribe("t")
                writes.clear()
                for n in range(5):  # one turn of the loop: the memory backend never waits
                    await hub.publish("t", n)
                for client in clients:
                    assert [m["data"] for m in await client.messages(5)] == list(range(5))
                assert len(writes) == 3 and len({id(frame) for _, frame in writes}) == 1
                assert len({ws for ws, _ in writes}) == 3
                assert writes[0][1].count(b'"type":"message"') == 5
            await hub.close()

        run(main())

    def test_a_batch_past_the_budget_goes_frame_by_frame(self) -> None:
        """Ten 10 kB messages in one turn make 100 kB, more than a 64 KiB budget: a
        subscriber that keeps up still gets them all, one frame at a time."""

        async def main() -> None:
            hub = Hub(max_buffered=BUDGET)
            async with hub_serving(hub) as (_, connect):
                client = await connect("c")
                await client.subscribe("t")
                for n in range(10):
                    await hub.publish("t", "x" * SIZE)
                assert [m["seq"] for m in await client.messages(10)] == list(range(1, 11))
                assert hub.stats.closed_for_slowness == 0 and hub.stats.delivered == 10
            await hub.close()

        run(main())


class TestSlowSubscribers:
    def test_close_policy(self) -> None:
        """A subscriber that never reads is closed with 1013 once past its budget; the
        server never holds much more than that for it; the others get everything in order."""
        observed: list[int] = []

        async def main() -> None:
            hub = Hub(max_buffered=BUDGET)
            async with hub_serving(hub, compression=None) as (server, connect):
                slow = await connect("slow", compression=None)
                await slow.subscribe("t")
                slow_side = starve(slow, server, "slow")
                readers = [await connect(f"r{i}", compression=None) for i in range(10)]
                for reader in readers:
                    await reader.subscribe("t")
                watch = asyncio.ensure_future(self._watch(slow_side, observed))
                received = await publish_to_readers(hub, readers, COUNT)
                watch.cancel()
                assert all(r == list(range(1, COUNT + 1)) for r in received)
                assert hub.stats.closed_for_slowness == 1
                assert hub.stats.dropped == 0
                assert slow_side.protocol.close_sent is not None
                assert slow_side.protocol.close_sent.code == 1013
                assert slow_side.protocol.close_sent.reason.startswith("too slow: ")
                assert max(observed) <= BUDGET + SIZE + 200
                assert slow.ws.transport is not None
                slow.ws.transport.resume_reading()
                with pytest.raises(tether.ConnectionClosedError) as info:
                    while True:
                        # The starved window reopens at the kernel's next zero-window probe,
                        # which backs off to seconds; the server's close_timeout bounds it.
                        await slow.recv(150 * UNIT)
                assert info.value.code in (1013, 1006)  # 1006 if aborted at close_timeout
                await until(lambda: hub.topics() == {"t": 10}, what="the slow client gone")
                assert await hub.backend.members("t") == sorted(f"r{i}" for i in range(10))
            await hub.close()

        run(main(), timeout=300 * UNIT)

    @staticmethod
    async def _watch(ws: ServerConnection, observed: list[int]) -> None:
        while True:
            observed.append(ws.buffered_amount)
            await asyncio.sleep(0)

    def test_drop_policy_sends_a_gap_notice(self) -> None:
        """With ``drop``, the slow subscriber stays connected; every seq reaches it either as
        a message or inside a gap notice, in order; subscribing again with since fills in."""

        async def main() -> None:
            hub = Hub(max_buffered=BUDGET, slow_policy="drop")
            async with hub_serving(hub, compression=None) as (server, connect):
                slow = await connect("slow", compression=None)
                subscribed, _, _ = await slow.subscribe("t")
                slow_side = starve(slow, server, "slow", rcvbuf=128 * 1024)
                readers = [await connect(f"r{i}", compression=None) for i in range(5)]
                for reader in readers:
                    await reader.subscribe("t")
                received = await publish_to_readers(hub, readers, COUNT)
                assert all(r == list(range(1, COUNT + 1)) for r in received)
                assert hub.stats.closed_for_slowness == 0
                assert hub.stats.dropped > 0
                # Someone joins while the slow one is behind: that change may be skipped (then
                # a new snapshot follows once it caught up) or reach it: its list ends right.
                late = await connect("late", compression=None)
                await late.subscribe("t")
                await asyncio.sleep(0.2)  # the change's window passes
                assert slow.ws.transport is not None
                slow.ws.transport.resume_reading()
                covered: list[int] = []
                gaps: list[tuple[int, int]] = []
                members = {"slow"}  # its snapshot
                expected = {"slow", "late"} | {f"r{i}" for i in range(5)}

                def presence(frame: dict[str, Any]) -> None:
                    nonlocal members
                    if "members" in frame:
                        members = set(frame["members"])
                    members |= set(frame.get("joined", []))
                    members -= set(frame.get("left", []))

                while not covered or covered[-1] < COUNT or members != expected:
                    frame = await slow.recv()
                    if frame["type"] == "message":
                        covered.append(frame["seq"])
                    elif frame["type"] == "gap":
                        assert frame["topic"] == "t"
                        gaps.append((frame["from"], frame["to"]))
                        covered.extend(range(frame["from"], frame["to"] + 1))
                    elif frame["type"] == "presence":
                        presence(frame)
                # The change may also reach it after a snapshot that holds it (CI once saw a
                # "joined" follow): take what presence is left, the list still ends right.
                for frame in await slow.drain("presence"):
                    presence(frame)
                assert members == expected
                assert covered == list(range(1, COUNT + 1))
                assert gaps and sum(b - a + 1 for a, b in gaps) == hub.stats.dropped
                assert slow_side.protocol.state is tether.OPEN
                # What the client does next: subscribe again from the last seq before the gap.
                since = gaps[0][0] - 1
                _, _, replayed = await slow.subscribe(
                    "t", since=since, epoch=subscribed["epoch"])
                assert [m["seq"] for m in replayed] == list(range(since + 1, COUNT + 1))
            await hub.close()

        run(main(), timeout=300 * UNIT)


class FakeWs:
    """What the fan-out reads of a connection, for driving it by hand."""

    def __init__(self) -> None:
        self.protocol = type("P", (), {"extension": None, "state": tether.OPEN})()
        self.buffered_amount = 0


class TestPresenceResync:
    def test_a_skipped_change_brings_a_new_snapshot_once_caught_up(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Drop policy: a presence change skipped for a subscriber that is behind marks it
        stale; when it catches up, the hub is asked to send it a new snapshot (resync), once."""
        from tether.hub.base import PresenceEvent
        from tether.hub.fanout import HubStats, Subscriber, TopicFanout

        written: list[tuple[Any, bytes]] = []

        def write_frame(ws: Any, frame: bytes, budget: int) -> Written:
            if ws.buffered_amount > budget:
                return Written.OVER_BUDGET
            written.append((ws, frame))
            return Written.SENT

        monkeypatch.setattr(fanout, "write_frame", write_frame)

        async def main() -> None:
            resyncs: list[Subscriber] = []
            fan = TopicFanout("t", HubStats(), max_buffered=1000, drop=True, slow_code=1013,
                              resync=lambda f, sub: resyncs.append(sub))
            ws = FakeWs()
            subscriber = Subscriber(ws)  # type: ignore[arg-type]
            fan.add(subscriber)
            fan.snapshot_taken(subscriber, fan.presence_mark())
            fan.finish_replay(subscriber, 0)
            ws.buffered_amount = 10_000  # far behind
            fan.deliver(1, b"message 1")
            fan.flush()  # over budget: skipped, a gap starts
            assert subscriber.gap_from == 1
            fan(PresenceEvent("t", joined="late"))
            fan.flush_changes()
            fan.flush()  # still behind: the change is skipped too
            assert subscriber.presence_stale and resyncs == []
            ws.buffered_amount = 0  # caught up
            await asyncio.sleep(fanout.GAP_POLL_INTERVAL * 3)
            assert resyncs == [subscriber] and not subscriber.presence_stale
            assert b'"gap"' in written[-1][1]  # the gap notice went out too

        run(main())


class PausedHistory(WrappedBackend):
    """history() waits until the test lets it go: the subscriber stays in its replay."""

    def __init__(self) -> None:
        super().__init__(MemoryBackend())
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def history(
        self, topic: str, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        self.reading.set()
        await self.release.wait()
        return await self.inner.history(topic, since, limit)


class TestHeldDuringReplay:
    @pytest.mark.parametrize("policy", ["close", "drop"])
    def test_held_frames_past_the_budget(self, policy: str) -> None:
        async def main() -> None:
            backend = PausedHistory()
            hub = Hub(backend, max_buffered=BUDGET, slow_policy=policy)
            async with hub_serving(hub) as (_, connect):
                client = await connect("c")
                await client.send(type="subscribe", topic="t")
                await backend.reading.wait()
                # The window of the client's own join ends now, before the publishes (its
                # change is held, then dropped by the snapshot): not among the held messages
                # past the budget, where it would be dropped and resent after the replay.
                await asyncio.sleep(2 * fanout.PRESENCE_WINDOW)
                for n in range(10):  # 10 x 10 kB held: past the 64 KiB budget
                    await hub.publish("t", "x" * SIZE)
                backend.release.set()
                if policy == "close":
                    with pytest.raises(tether.ConnectionClosedError) as info:
                        while True:
                            await client.recv()
                    assert info.value.code == 1013
                    assert hub.stats.closed_for_slowness == 1
                    return
                subscribed = await client.expect("subscribed", replayed=10)
                await client.expect("presence")
                assert [m["seq"] for m in await client.messages(10)] == list(range(1, 11))
                # The held copies of 1..10 were covered by the replay: no gap notice.
                await hub.publish("t", "live")
                await client.expect("message", seq=11, data="live")
                assert subscribed["seq"] == 10
            await hub.close()

        run(main())

    def test_drop_while_held_then_gap_after_the_replay(self) -> None:
        """Messages published after the history was read are held until the replay ends;
        once the held bytes pass the budget (drop policy) the rest are skipped, and the gap
        notice follows the held ones."""

        class PausedMembers(WrappedBackend):
            def __init__(self) -> None:
                super().__init__(MemoryBackend())
                self.reading = asyncio.Event()
                self.release = asyncio.Event()

            async def members(self, topic: str) -> list[str]:
                self.reading.set()
                await self.release.wait()
                return await self.inner.members(topic)

        async def main() -> None:
            backend = PausedMembers()
            hub = Hub(backend, max_buffered=BUDGET, slow_policy="drop")
            async with hub_serving(hub) as (_, connect):
                client = await connect("c")
                await client.send(type="subscribe", topic="t")
                await backend.reading.wait()
                # The window of the client's own join ends now, before the publishes (its
                # change is held, then dropped by the snapshot): not among the held messages
                # past the budget, where it would be dropped and resent after the replay.
                await asyncio.sleep(2 * fanout.PRESENCE_WINDOW)
                for n in range(10):
                    await hub.publish("t", "x" * SIZE)
                backend.release.set()
                await client.expect("subscribed", replayed=0, seq=0)
                await client.expect("presence", members=["c"])
                held = [m["seq"] for m in await client.messages(7)]
                # Held while under the budget before each frame: 6 x 10 kB < 64 KiB < 7 x 10 kB.
                assert held == [1, 2, 3, 4, 5, 6, 7]
                await client.expect("gap", topic="t", **{"from": 8, "to": 10})
                assert hub.stats.dropped == 3
                await hub.publish("t", "live")
                await client.expect("message", seq=11)
            await hub.close()

        run(main())
