"""RedisBackend beyond the contract, against a real redis-server: two nodes sharing topics
(live feed both ways, resume on the other node, presence and its expiry after a node crash),
Redis killed and restarted mid-stream, Redis unreachable at start, a crowd subscribing at once
(more Redis calls in flight than pooled connections)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tether.hub import BackendUnavailable, Envelope, Hub, PresenceEvent
from tether.hub.redis import RedisBackend

from .conftest import UNIT, RedisServer, hub_serving, redis_running, run


def nodes(server: RedisServer, count: int = 2, **options: Any) -> list[RedisBackend]:
    """``count`` backends on one Redis and one key prefix: as many nodes of one cluster."""
    prefix = f"test-{secrets.token_hex(4)}:"
    return [RedisBackend(server.url, key_prefix=prefix, **options) for _ in range(count)]


async def until(condition: Any, timeout: float = 50 * UNIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(UNIT / 10)


async def next_frame(client: Any, kind: str) -> dict[str, Any]:
    """The next frame of this type, skipping presence changes."""
    while True:
        frame: dict[str, Any] = await client.recv()
        if frame["type"] == kind:
            return frame
        assert frame["type"] == "presence", frame


async def publish(client: Any, data: Any) -> int:
    """Publish and return the acknowledged seq (skipping presence changes)."""
    await client.send(type="publish", topic="room", data=data)
    frames = [await next_frame(client, "message")]
    frames.append(await client.recv())
    while frames[-1]["type"] == "presence":
        frames[-1] = await client.recv()
    ack = next(f for f in frames if f["type"] == "ack")
    assert {f["type"] for f in frames} == {"message", "ack"}
    return int(ack["seq"])


class TestTwoNodes:
    def test_messages_cross_both_ways_in_order(self, redis_server: RedisServer) -> None:
        async def main() -> None:
            a, b = nodes(redis_server)
            seen_a: list[Any] = []
            seen_b: list[Any] = []
            await a.listen("room", seen_a.append)
            await b.listen("room", seen_b.append)
            published = []
            for n in range(30):
                node = a if n % 3 else b
                published.append(await node.publish("room", {"n": n}, f"node{n % 3}"))
            # Concurrent publishes from both nodes: Redis orders them.
            published += await asyncio.gather(*(
                (a if n % 2 else b).publish("room", n) for n in range(30, 60)))
            published.sort(key=lambda e: e.seq)
            assert [e.seq for e in published] == list(range(1, 61))
            await until(lambda: len(seen_a) == len(seen_b) == 60)
            assert seen_a == seen_b == published
            await a.close()
            await b.close()

        run(main())

    def test_a_node_subscribes_only_while_it_has_listeners(
        self, redis_server: RedisServer
    ) -> None:
        async def main() -> None:
            (a,) = nodes(redis_server, 1)
            seen: list[Any] = []
            listener = seen.append
            await a.listen("t", listener)
            channel = f"{a.key_prefix}t"
            client = a._client  # the node's own command connection: PUBSUB is harmless
            assert dict(await client.pubsub_numsub(channel)) == {channel.encode(): 1}
            await a.unlisten("t", listener)
            for _ in range(50):
                if dict(await client.pubsub_numsub(channel)) == {channel.encode(): 0}:
                    break
                await asyncio.sleep(UNIT / 10)
            else:
                raise AssertionError("still subscribed")
            await a.publish("t", 1)
            assert seen == []
            await a.close()

        run(main())

    def test_history_read_on_the_other_node(self, redis_server: RedisServer) -> None:
        async def main() -> None:
            a, b = nodes(redis_server, history_size=20)
            published = [await a.publish("t", n, "alice") for n in range(25)]
            result = await b.history("t", since=10)
            assert result.messages == tuple(published[10:])
            assert (result.epoch, result.last_seq, result.first, result.gap) == (
                published[0].epoch, 25, 6, False)
            assert (await b.history("t", since=3)).gap is True
            assert (await b.publish("t", "from b")).seq == 26
            await a.close()
            await b.close()

        run(main())

    def test_a_client_resumes_on_the_other_node(self, redis_server: RedisServer) -> None:
        async def main() -> None:
            a, b = nodes(redis_server)
            hub_a, hub_b = Hub(a), Hub(b)
            async with hub_serving(hub_a) as (_, connect_a), \
                    hub_serving(hub_b) as (_, connect_b):
                alice = await connect_a("alice")
                bob = await connect_a("bob")
                subscribed, _, _ = await alice.subscribe("room")
                await bob.subscribe("room")
                for n in range(3):
                    assert await publish(bob, n) == n + 1
                seen = [await next_frame(alice, "message") for _ in range(3)]
                assert [m["seq"] for m in seen] == [1, 2, 3]
                await alice.close()
                for n in range(3, 8):  # alice is away
                    assert await publish(bob, n) == n + 1
                alice = await connect_b("alice")
                again, presence, replayed = await alice.subscribe(
                    "room", since=3, epoch=subscribed["epoch"])
                assert (again["gap"], again["seq"]) == (False, 8)
                assert presence["members"] == ["alice", "bob"]  # bob is on node A
                assert [m["data"] for m in replayed] == [3, 4, 5, 6, 7]
                assert await publish(bob, 8) == 9  # on node A
                assert (await next_frame(alice, "message"))["seq"] == 9
                assert await publish(alice, 9) == 10  # on node B
                assert (await next_frame(bob, "message"))["data"] == 9
                await alice.quiet()  # no duplicate
            await hub_a.close()
            await hub_b.close()

        run(main())


class TestCrowd:
    """Many subscribes at once on one node: more Redis calls in flight than the node keeps
    connections to Redis. They wait for a pooled connection instead of failing."""

    CLIENTS = 150  # more than redis-py's own default pool (100 connections; it then fails)

    def test_simultaneous_subscribes_all_go_live(self, redis_server: RedisServer) -> None:
        async def main() -> None:
            (backend,) = nodes(redis_server, 1)
            hub = Hub(backend)
            wait = 100 * UNIT  # generous: this is about what arrives, not how fast

            async def expect(client: Any, kind: str, **fields: Any) -> None:
                frame = await client.recv(wait)
                assert frame["type"] == kind and all(
                    frame.get(k) == v for k, v in fields.items()), frame

            async with hub_serving(hub) as (_, connect):
                clients = [await connect("crowd") for _ in range(self.CLIENTS)]
                # The first one makes the node listen to the topic; then all the others at
                # once, each with its Redis calls (join, history, members) in flight together.
                await clients[0].send(type="subscribe", topic="room")
                await expect(clients[0], "subscribed")
                await expect(clients[0], "presence")
                await asyncio.gather(*(c.send(type="subscribe", topic="room")
                                       for c in clients[1:]))
                firsts = await asyncio.gather(*(c.recv(wait) for c in clients[1:]))
                errors = [f for f in firsts if f["type"] != "subscribed"]
                assert errors == [], f"{len(errors)} subscribes failed, e.g. {errors[0]}"
                for client in clients[1:]:
                    await expect(client, "presence", topic="room", members=["crowd"])
                assert hub.topics() == {"room": self.CLIENTS}
                envelope = await hub.publish("room", "everyone")
                for client in clients:  # every one of them is live
                    await expect(client, "message", seq=envelope.seq, data="everyone")
                assert hub.stats.closed_for_slowness == 0
                await asyncio.gather(*(c.close() for c in clients))
            await hub.close()

        run(main(), timeout=600 * UNIT)

    def test_calls_beyond_the_pool_wait_and_the_pool_is_bounded(
        self, redis_server: RedisServer
    ) -> None:
        async def main() -> None:
            info = aioredis.Redis.from_url(redis_server.url)  # to count Redis' clients

            async def connected() -> int:
                return int((await info.info("clients"))["connected_clients"])

            before = await connected()
            (backend,) = nodes(redis_server, 1, max_connections=4)
            results = await asyncio.gather(
                *(backend.join("room", f"m:{n}", "crowd") for n in range(200)),
                *(backend.publish("room", n) for n in range(200)),
                return_exceptions=True)
            assert [r for r in results if isinstance(r, BaseException)] == []
            assert sorted(r.seq for r in results if isinstance(r, Envelope)) == list(
                range(1, 201))
            assert await backend.members("room") == ["crowd"]
            assert await connected() - before <= 4
            await backend.close()
            await info.aclose()

        run(main())


CRASHING_NODE = """
import asyncio, sys
from tether.hub.redis import RedisBackend

async def main():
    backend = RedisBackend(sys.argv[1], key_prefix=sys.argv[2], presence_ttl=float(sys.argv[3]))
    await backend.join("room", "a:1", "alice")
    print("joined", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


class TestPresence:
    def test_members_across_nodes_and_a_crashed_node_expires(
        self, redis_server: RedisServer
    ) -> None:
        ttl = 10 * UNIT

        async def main() -> None:
            (b,) = nodes(redis_server, 1, presence_ttl=ttl)
            events: list[Any] = []
            await b.listen("room", events.append)
            await b.join("room", "b:1", "bob")
            node_a = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(CRASHING_NODE), redis_server.url,
                 b.key_prefix, str(ttl)], stdout=subprocess.PIPE)
            try:
                assert node_a.stdout is not None
                line = await asyncio.to_thread(node_a.stdout.readline)
                assert line == b"joined\n"
                await until(lambda: len(events) == 2)
                assert await b.members("room") == ["alice", "bob"]
                await asyncio.sleep(2 * ttl)  # node A refreshes alice meanwhile
                assert await b.members("room") == ["alice", "bob"]
                node_a.send_signal(signal.SIGKILL)  # no leave: its entries must expire
                node_a.wait()
                loop = asyncio.get_running_loop()
                killed = loop.time()
                await until(lambda: len(events) == 3, timeout=4 * ttl)
                assert loop.time() - killed < 2 * ttl
                assert await b.members("room") == ["bob"]  # bob refreshed by node B
            finally:
                node_a.kill()
                node_a.wait()
            assert events == [
                PresenceEvent("room", ("bob",), joined="bob"),
                PresenceEvent("room", ("alice", "bob"), joined="alice"),
                PresenceEvent("room", ("bob",), left="alice"),
            ]
            await b.close()

        run(main())

    def test_close_removes_the_nodes_members(self, redis_server: RedisServer) -> None:
        async def main() -> None:
            a, b = nodes(redis_server)
            await a.join("room", "a:1", "alice")
            await b.join("room", "b:1", "bob")
            assert await b.members("room") == ["alice", "bob"]
            await a.close()
            assert await b.members("room") == ["bob"]
            await b.close()

        run(main())


class TestFailures:
    def test_unreachable_at_start(self, redis_server: RedisServer) -> None:
        port = RedisServer(Path("/nonexistent")).port  # free, nobody listens

        async def main() -> None:
            backend = RedisBackend(f"redis://user:secret@127.0.0.1:{port}/0", timeout=UNIT * 10)
            with pytest.raises(BackendUnavailable) as info:
                await backend.connect()
            message = str(info.value)
            assert f"cannot reach Redis at redis://user:***@127.0.0.1:{port}/0" in message
            assert "secret" not in message
            with pytest.raises(BackendUnavailable):
                await backend.publish("t", 1)
            await backend.close()
            with pytest.raises(BackendUnavailable, match="closed"):
                await backend.publish("t", 1)

        run(main())

    def test_redis_restarted_mid_stream(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, "tether.hub")

        async def main(server: RedisServer) -> None:
            a, b = nodes(server, max_retry_delay=5 * UNIT, timeout=10 * UNIT)
            seen: list[Envelope] = []
            await b.listen("t", lambda e: seen.append(e) if isinstance(e, Envelope) else None)
            acknowledged = [await a.publish("t", n) for n in range(20)]
            await until(lambda: len(seen) == 20)
            server.stop(signal.SIGKILL)
            for n in range(3):
                with pytest.raises(BackendUnavailable):
                    await a.publish("t", f"lost {n}")
            await asyncio.sleep(5 * UNIT)
            server.start()
            while True:  # the first publishes may still meet dead pooled connections
                try:
                    acknowledged.append(await a.publish("t", "back"))
                    break
                except BackendUnavailable:
                    await asyncio.sleep(UNIT)
            acknowledged += [await a.publish("t", n) for n in range(20, 30)]
            await until(lambda: len(seen) == len(acknowledged), timeout=100 * UNIT)
            assert seen == acknowledged  # in order, no gap, no duplicate
            assert [e.seq for e in acknowledged] == list(range(1, 32))
            history = await b.history("t")
            assert history.messages == tuple(acknowledged)  # none acknowledged was lost
            await a.close()
            await b.close()

        with redis_running(tmp_path) as server:
            run(main(server), timeout=300 * UNIT)
        down = [r for r in caplog.records if "redis_unavailable" in r.getMessage()]
        assert len(down) == 1  # the live feed's outage, logged once
        assert any("redis_reconnected" in r.getMessage() for r in caplog.records)

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError):
            RedisBackend(presence_ttl=0)
        with pytest.raises(ValueError):
            RedisBackend(history_age=-1)
        with pytest.raises(ValueError):
            RedisBackend(max_connections=1)  # the pub/sub connection would take it

    def test_invalid_url(self) -> None:
        async def main() -> None:
            with pytest.raises(BackendUnavailable, match="invalid Redis URL"):
                await RedisBackend("http://example.com/").connect()

        run(main())
