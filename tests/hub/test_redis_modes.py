"""Configuration of the three Redis modes, as an operator meets it: ``tether chat --redis
URL`` with a URL that points at the wrong kind of server, a master name Sentinel does not
know, sentinels nobody runs, or more replicas than there are. Each is one line on stderr that
says what is wrong, exit code 1, no traceback; and ``--redis-min-replicas`` alone is a usage
error. The topologies are the session's (nothing is failed over here)."""

from __future__ import annotations

import re

import pytest

from tether.cli import main

from .conftest import RedisServer
from .redis_topology import ClusterSetup, SentinelSetup, free_port


def start(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str]:
    """Run ``tether chat`` with ``options``; its exit code and what it printed on stderr."""
    code = main(["chat", "--port", str(free_port()), *options])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return err.strip()


class TestSentinelConfiguration:
    def test_no_sentinel_answers(self, capsys: pytest.CaptureFixture[str]) -> None:
        a, b = free_port(), free_port()
        code, err = start(capsys, "--redis", f"redis+sentinel://127.0.0.1:{a},127.0.0.1:{b}"
                          "/mymaster/0")
        assert code == 1
        assert one_line(err).startswith(
            f"tether chat: cannot reach any Redis Sentinel at 127.0.0.1:{a}, 127.0.0.1:{b}: ")

    def test_unknown_master_name(self, sentinel_setup: SentinelSetup,
                                 capsys: pytest.CaptureFixture[str]) -> None:
        url = sentinel_setup.url.replace(f"/{sentinel_setup.service}/", "/nosuchmaster/")
        code, err = start(capsys, "--redis", url)
        assert code == 1
        assert re.fullmatch(r"tether chat: Redis Sentinel at 127\.0\.0\.1:\d+ has no master "
                            rf"named 'nosuchmaster' \(it has: {sentinel_setup.service}\)",
                            one_line(err)), err

    def test_a_sentinel_given_as_one_server(self, sentinel_setup: SentinelSetup,
                                            capsys: pytest.CaptureFixture[str]) -> None:
        port = sentinel_setup.sentinels[0].port
        code, err = start(capsys, "--redis", f"redis://127.0.0.1:{port}/0")
        assert code == 1
        assert one_line(err) == (f"tether chat: 127.0.0.1:{port} is a Redis Sentinel: use "
                                 f"redis+sentinel://127.0.0.1:{port}/<master name>")

    def test_a_server_given_as_sentinel(self, redis_server: RedisServer,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        code, err = start(capsys, "--redis",
                          f"redis+sentinel://127.0.0.1:{redis_server.port}/mymaster/0")
        assert code == 1
        assert f"127.0.0.1:{redis_server.port} is not a Redis Sentinel" in one_line(err)

    def test_more_replicas_asked_than_there_are(self, sentinel_setup: SentinelSetup,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        code, err = start(capsys, "--redis", sentinel_setup.url, "--redis-min-replicas", "3")
        assert code == 1
        assert re.fullmatch(r"tether chat: --redis-min-replicas 3, but the master at .+ has "
                            r"2 replicas online", one_line(err)), err

    def test_a_bad_url(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, err = start(capsys, "--redis", "redis+sentinel://:secret@127.0.0.1:1/")
        assert code == 1
        line = one_line(err)
        assert line.startswith("tether chat: invalid Redis URL ") and "no master name" in line
        assert "secret" not in line


class TestClusterConfiguration:
    def test_a_cluster_node_given_as_one_server(self, cluster_setup: ClusterSetup,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        port = cluster_setup.nodes[0].port
        code, err = start(capsys, "--redis", f"redis://127.0.0.1:{port}/0")
        assert code == 1
        assert one_line(err) == (f"tether chat: 127.0.0.1:{port} is a Redis Cluster node: "
                                 f"use redis+cluster://127.0.0.1:{port}")

    def test_one_server_given_as_a_cluster(self, redis_server: RedisServer,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        code, err = start(capsys, "--redis", f"redis+cluster://127.0.0.1:{redis_server.port}/")
        assert code == 1
        assert one_line(err) == (f"tether chat: 127.0.0.1:{redis_server.port} is not a Redis "
                                 "Cluster (cluster_enabled:0): use redis://")

    def test_no_node_answers(self, capsys: pytest.CaptureFixture[str]) -> None:
        a, b = free_port(), free_port()
        code, err = start(capsys, "--redis", f"redis+cluster://127.0.0.1:{a},127.0.0.1:{b}/")
        assert code == 1
        assert one_line(err).startswith(
            f"tether chat: cannot reach the Redis Cluster at 127.0.0.1:{a}, 127.0.0.1:{b}: ")

    def test_a_cluster_node_given_as_sentinel(self, cluster_setup: ClusterSetup,
                                              capsys: pytest.CaptureFixture[str]) -> None:
        port = cluster_setup.nodes[0].port
        code, err = start(capsys, "--redis", f"redis+sentinel://127.0.0.1:{port}/mymaster")
        assert code == 1
        assert one_line(err).endswith("(redis_mode:cluster): use redis+cluster://"), err

    def test_a_database_other_than_0(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, err = start(capsys, "--redis", "redis+cluster://127.0.0.1:7000/3")
        assert code == 1
        assert "a Redis Cluster has only database 0" in one_line(err)


class TestMinReplicas:
    def test_one_server_has_no_replica(self, redis_server: RedisServer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        code, err = start(capsys, "--redis", redis_server.url, "--redis-min-replicas", "1")
        assert code == 1
        assert one_line(err).endswith("has 0 replicas online"), err

    def test_needs_redis(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, err = start(capsys, "--redis-min-replicas", "1")
        assert code == 2
        assert one_line(err) == "tether chat: --redis-min-replicas needs --redis"

    def test_not_a_count(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_:
            main(["chat", "--redis-min-replicas", "-1"])
        assert exit_.value.code == 2
        assert "'-1' is not a whole number >= 0" in capsys.readouterr().err
