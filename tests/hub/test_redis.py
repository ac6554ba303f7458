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
import time
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
            client = aioredis.Redis.from_url(redis_server.url)
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
            await client.aclose()

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


DYING_NODE = """
import asyncio, os, signal, sys, time
from tether.hub.redis import RedisBackend

async def main():
    ttl = float(sys.argv[3])
    backend = RedisBackend(sys.argv[1], key_prefix=sys.argv[2], presence_ttl=ttl)
    await backend.connect()
    loop = asyncio.get_running_loop()
    connected = loop.time()
    await backend.join("room", "a:0", "a0")
    joined = [time.time()]
    await asyncio.sleep(ttl / 5)
    await backend.join("room", "a:1", "a1")
    joined.append(time.time())
    # Its first refresh comes presence_ttl / 3 after connecting: none yet, so each member's
    # expiry counts from its join.
    late = loop.time() - connected >= ttl / 3
    print("late" if late else " ".join(map(repr, joined)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no leave, no refresh: a crash

asyncio.run(main())
"""

SWEEP_SLACK = 4 * UNIT
"""What a `left` may take beyond presence_ttl in these tests: the sweep's Redis call and the
delivery (milliseconds), and the scheduling of a busy test machine."""


class TestPresence:
    def test_a_crashed_nodes_members_leave_within_the_ttl(
        self, redis_server: RedisServer
    ) -> None:
        """The bound holds whatever the phase of the surviving node's sweeps. Two members
        joined ttl/5 apart: had the sweep come once per ttl/3 after an expiry of ttl (before
        issue 14), one of them would have waited at least ttl/5 beyond its expiry."""
        ttl = 30 * UNIT

        async def main() -> None:
            (b,) = nodes(redis_server, 1, presence_ttl=ttl)
            left: dict[str, float] = {}

            def listener(event: Any) -> None:
                if isinstance(event, PresenceEvent) and event.left is not None:
                    left[event.left] = time.time()

            await b.listen("room", listener)
            await b.join("room", "b:1", "bob")
            node_a = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(DYING_NODE), redis_server.url,
                 b.key_prefix, str(ttl)], stdout=subprocess.PIPE)
            try:
                assert node_a.stdout is not None
                line = (await asyncio.to_thread(node_a.stdout.readline)).decode().split()
                assert line != ["late"], "node A took longer than ttl/3 to join two members"
                joined = dict(zip(["a0", "a1"], map(float, line)))
                assert await asyncio.to_thread(node_a.wait, 50 * UNIT) == -signal.SIGKILL
                await until(lambda: len(left) == 2, timeout=3 * ttl)
            finally:
                node_a.kill()
                node_a.wait()
            for name, since in joined.items():
                # Not before its node's refresh was due, and at most presence_ttl after it.
                assert ttl / 3 < left[name] - since <= ttl + SWEEP_SLACK, (name, left, joined)
            assert await b.members("room") == ["bob"]  # bob refreshed by node B
            await b.close()

        run(main())

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
                assert loop.time() - killed <= ttl + SWEEP_SLACK
                assert await b.members("room") == ["bob"]  # bob refreshed by node B
            finally:
                node_a.kill()
                node_a.wait()
            assert events == [
                PresenceEvent("room", joined="bob"),
                PresenceEvent("room", joined="alice"),
                PresenceEvent("room", left="alice"),
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

    def test_an_outage_is_logged_once_by_the_hub(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Issue 14, finding 5: Redis stopped for a moment, requests failing meanwhile."""
        caplog.set_level(logging.INFO, "tether.hub")

        async def request(client: Any, n: int) -> str:
            """Publish; the answer's type (`ack` or `error`), other frames skipped."""
            await client.send(type="publish", topic="room", data=n, id=str(n))
            while True:
                frame = await client.recv()
                if frame["type"] in ("ack", "error") and frame.get("id") == str(n):
                    assert frame["type"] == "ack" or frame["code"] == "unavailable", frame
                    return str(frame["type"])

        async def main(server: RedisServer) -> int:
            (backend,) = nodes(server, 1, max_retry_delay=5 * UNIT, timeout=10 * UNIT)
            hub = Hub(backend)
            answers = []
            async with hub_serving(hub) as (_, connect):
                client = await connect("alice")
                await client.subscribe("room")
                assert await request(client, 0) == "ack"
                server.stop(signal.SIGKILL)
                for n in range(1, 21):
                    answers.append(await request(client, n))
                    await asyncio.sleep(UNIT)
                server.start()
                n = 21
                while (answer := await request(client, n)) != "ack":  # dead pooled connections
                    answers.append(answer)
                    n += 1
                    await asyncio.sleep(UNIT)
                assert await request(client, n + 1) == "ack"
            await hub.close()
            assert set(answers) == {"error"}
            return len(answers)

        with redis_running(tmp_path) as server:
            failures = run(main(server), timeout=300 * UNIT)
        hub_lines = [r.getMessage() for r in caplog.records if "event=hub_" in r.getMessage()]
        assert len(hub_lines) == 2, hub_lines
        assert hub_lines[0].startswith('event=hub_unavailable error="Redis at redis://')
        assert hub_lines[1].startswith(f"event=hub_recovered failures={failures} duration=")
        duration = float(hub_lines[1].rsplit("duration=", 1)[1].rstrip("s"))
        assert 20 * UNIT <= duration < 200 * UNIT

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


class TestShutdown:
    """Closing a node with many clients in one topic (issue 14, finding 3)."""

    def test_many_leavers_in_one_topic_do_not_wait_for_the_timeout(
        self, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, "tether.hub")
        timeout = 40 * UNIT

        async def main() -> None:
            (backend,) = nodes(redis_server, 1, timeout=timeout)
            hub = Hub(backend)
            async with hub_serving(hub) as (server, connect):
                clients = [await connect(f"user{n}") for n in range(5)]
                for client in clients:  # each name once: every leave publishes a `left`
                    await client.subscribe("room")

                async def drain(client: Any) -> None:  # as a browser: the close answered at once
                    async for _ in client.ws:
                        pass

                readers = [asyncio.create_task(drain(client)) for client in clients]
                loop = asyncio.get_running_loop()
                started = loop.time()
                await server.close(1001, "server shutting down", timeout=2 * timeout)
                await hub.close()
                elapsed = loop.time() - started
                await asyncio.gather(*readers, return_exceptions=True)
            # The handlers ran every leave before server.close() returned; none waited
            # for an echo that its topic's unsubscribe had already made impossible.
            assert elapsed < timeout / 2, f"shutdown took {elapsed:.2f} s"

        run(main(), timeout=100 * UNIT)
        late = [r.getMessage() for r in caplog.records if "redis_echo_late" in r.getMessage()]
        assert late == []
