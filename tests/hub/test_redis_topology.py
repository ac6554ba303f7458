"""The Redis topologies of redis_topology.py themselves: the session Sentinel setup and
cluster are what they claim, a killed master is replaced, a start that fails halfway leaves no
process behind, a slot moves. About 12 s, most of it the topologies starting."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from tether.hub.redis_url import parse_redis_url

from ..asyncio.conftest import running
from .conftest import UNIT, require_redis
from .redis_topology import (
    ClusterSetup,
    RedisProcess,
    ReplyError,
    SentinelSetup,
    TopologyError,
    _info,
    _until,
    command,
)


def prefix() -> str:
    return f"test-{secrets.token_hex(4)}:"


def replicated(setup: SentinelSetup, key: str, value: str) -> None:
    """SET on the master, confirmed by every replica (WAIT), readable on each."""
    master = setup.master
    assert master.command("SET", key, value) == "OK"
    replicas = [r for r in setup.replicas if r.alive]
    assert master.command("WAIT", len(replicas), int(50 * UNIT * 1000)) == len(replicas)
    for replica in replicas:
        assert replica.command("GET", key) == value


class TestSentinel:
    def test_the_sentinels_agree_on_the_master(self, sentinel_setup: SentinelSetup) -> None:
        setup = sentinel_setup
        assert len(setup.sentinels) == 3 and len(setup.replicas) == 2
        for sentinel in setup.sentinels:
            assert setup.master_address(sentinel) == setup.master.address
            state = dict(zip(*[iter(sentinel.command("SENTINEL", "MASTER", setup.service))] * 2))
            assert state["flags"] == "master"
            assert (state["num-slaves"], state["num-other-sentinels"], state["quorum"]) == (
                "2", "2", "2")
        role = setup.master.command("ROLE")
        assert role[0] == "master"
        assert sorted(int(port) for _, port, _ in role[2]) == sorted(
            r.port for r in setup.replicas)
        for replica in setup.replicas:
            assert _info(replica.port, "replication")["master_port"] == str(setup.master.port)
        # The sentinels' hellos move the master's offset about twice a second: polled.
        _until("replicas in sync", lambda: True if setup.replicas_in_sync() else None, 50 * UNIT)
        replicated(setup, f"{prefix()}key", "value")

    def test_its_url_names_every_sentinel(self, sentinel_setup: SentinelSetup) -> None:
        url = parse_redis_url(sentinel_setup.url)
        assert (url.mode, url.service, url.db) == ("sentinel", "mymaster", 0)
        assert list(url.addresses) == sentinel_setup.sentinel_addresses

    def test_a_killed_master_is_replaced_by_a_replica(
            self, fresh_sentinel: Callable[..., SentinelSetup]) -> None:
        setup = fresh_sentinel()
        key = f"{prefix()}before"
        replicated(setup, key, "kept")
        replicas = list(setup.replicas)
        old = setup.kill_master()
        assert not old.alive and old.pid is None
        new = setup.wait_for_new_master(old, timeout=150 * UNIT)
        assert new in replicas and setup.master is new and old in setup.replicas
        assert new.command("ROLE")[0] == "master"
        assert new.command("GET", key) == "kept"
        # A majority of the sentinels names it (the third may still be switching).
        named = [setup.master_address(s) for s in setup.sentinels]
        assert named.count(new.address) >= 2


class TestCluster:
    def test_three_masters_with_a_replica_each(self, cluster_setup: ClusterSetup) -> None:
        setup = cluster_setup
        for node in setup.nodes:
            info = dict(line.split(":", 1) for line in
                        node.command("CLUSTER", "INFO").splitlines() if ":" in line)
            assert (info["cluster_state"], info["cluster_slots_assigned"],
                    info["cluster_size"], info["cluster_known_nodes"]) == (
                "ok", "16384", "3", "6")
        masters = setup.masters()
        assert len(masters) == 3
        slots = sorted(r for m in masters for r in m.slots)
        assert slots[0][0] == 0 and slots[-1][1] == 16383
        assert all(a[1] + 1 == b[0] for a, b in zip(slots, slots[1:]))
        for master in masters:
            assert len(setup.replicas_of(master)) == 1
        # A topic's keys share its hash tag's slot, and that slot's master takes them.
        tag = f"{{{prefix()}room}}"
        slot = setup.slot(f"{tag}:seq")
        assert setup.slot(f"{tag}:stream") == setup.slot(tag) == slot
        owner = setup.master_for_slot(slot)
        assert command(owner.port, "SET", f"{tag}:seq", 1) == "OK"

    def test_its_url_names_every_node(self, cluster_setup: ClusterSetup) -> None:
        url = parse_redis_url(cluster_setup.url)
        assert (url.mode, url.db) == ("cluster", 0)
        assert list(url.addresses) == cluster_setup.startup_nodes


def test_a_start_that_fails_halfway_leaves_no_process(tmp_path: Path) -> None:
    """The master and its replica start, then the sentinel refuses its configuration: both
    are stopped by PID before start() raises."""
    require_redis("redis-server")
    setup = SentinelSetup(tmp_path, replicas=1, sentinels=1, quorum=1)
    setup.sentinels[0].config.append("no-such-directive yes")
    started: list[tuple[str, int | None]] = []
    start = RedisProcess.start

    def recording(process: RedisProcess, timeout: float = 100 * UNIT) -> None:
        try:
            start(process, timeout)
        finally:
            started.append((process.name, process.pid))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RedisProcess, "start", recording)
        with pytest.raises(TopologyError, match="sentinel-1 exited at start"):
            setup.start(timeout=100 * UNIT)
    # The sentinel's start stopped it already; the two that were running had PIDs.
    assert [name for name, _ in started] == ["master", "replica-1", "sentinel-1"]
    pids = [pid for _, pid in started[:2]]
    assert None not in pids and started[2][1] is None
    assert not any(running(pid) for pid in pids if pid is not None)
    for process in setup.processes:
        assert process.pid is None
        with pytest.raises(OSError):
            process.command("PING", timeout=UNIT)


def test_a_fresh_cluster_moves_a_slot(fresh_cluster: Callable[..., ClusterSetup]) -> None:
    """A cluster of its own (no replicas: quicker to start); a slot with its keys moved to
    another master, as resharding does."""
    setup = fresh_cluster(replicas=0)
    tag = f"{{{prefix()}room}}"
    slot = setup.slot(tag)
    source = setup.master_for_slot(slot)
    for suffix in ("epoch", "seq", "stream"):
        assert command(source.port, "SET", f"{tag}:{suffix}", suffix) == "OK"
    target = next(m for m in setup.masters() if m.port != source.port)
    setup.migrate_slot(slot, target.port, timeout=100 * UNIT)
    assert setup.master_for_slot(slot).port == target.port
    assert command(target.port, "GET", f"{tag}:seq") == "seq"
    with pytest.raises(ReplyError, match="MOVED"):
        command(source.port, "GET", f"{tag}:seq")
