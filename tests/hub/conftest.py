"""Helpers for the hub tests: backends to run the contract against, a fake clock, a hub on a
loopback port, and a client that speaks the hub's JSON protocol."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

import tether
from tether.hub import Backend, Envelope, HistoryResult, Hub, Listener, MemoryBackend
from tether.hub.sqlite import SQLiteBackend

from ..asyncio.conftest import UNIT, run
from .redis_topology import ClusterSetup, SentinelSetup

__all__ = ["UNIT", "run", "Clock", "BackendKind", "HubClient", "WrappedBackend", "hub_serving",
           "RedisServer", "require_redis"]


class Clock:
    """A settable clock for the history's age bound."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class BackendKind:
    """How to open one kind of backend, and open it again on the same storage."""

    name: str
    durable: bool
    factory: Callable[..., Backend]

    def open(self, **options: Any) -> Backend:
        return self.factory(**options)


class RedisServer:
    """A real ``redis-server`` on a free loopback port, in its own directory, with every
    acknowledged write fsynced (``appendonly yes``, ``appendfsync always``) so that a
    restart on the same directory and port keeps them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--protected-mode", "no",
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 100 * UNIT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=UNIT) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(UNIT / 5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by its PID: SIGTERM, or SIGKILL for a crash."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=100 * UNIT)
        self.process = None


def require_redis(*programs: str) -> None:
    """Fail the test when Debian's Redis programs are missing and we could have installed
    them (root: scripts/test does, with apt-get); skip it only when we could not.

    Args:
        programs: the executables the test needs (``redis-server``, ``redis-cli``).
    """
    missing = [name for name in programs if shutil.which(name) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.skip(f"{', '.join(missing)} missing and we are not root to install it "
                    "(apt-get install redis-server)")
    pytest.fail(f"{', '.join(missing)} missing: run scripts/test, which installs Debian's "
                "redis-server, or apt-get install -y redis-server")


@contextmanager
def redis_running(directory: Path) -> Iterator[RedisServer]:
    require_redis("redis-server")
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart with their own key prefix."""
    with redis_running(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """One Sentinel topology for the session: a master, 2 replicas, 3 sentinels (quorum 2).
    Shared: tests that use it fail nothing over, pause nothing, and keep apart with their own
    key prefix; a test that does needs :func:`fresh_sentinel`."""
    require_redis("redis-server")
    with SentinelSetup(tmp_path_factory.mktemp("sentinel")) as setup:
        yield setup


@pytest.fixture(scope="session")
def cluster_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """One Redis Cluster for the session: 3 masters, 1 replica each. Shared like
    :func:`sentinel_setup`; a test that kills, pauses or moves anything needs
    :func:`fresh_cluster`."""
    require_redis("redis-server", "redis-cli")
    with ClusterSetup(tmp_path_factory.mktemp("cluster")) as setup:
        yield setup


SetupT = TypeVar("SetupT", SentinelSetup, ClusterSetup)


def _factory(kind: type[SetupT], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Callable[..., SetupT]]:
    """A factory of started ``kind`` setups, each in a new directory; every one started is
    stopped afterwards (each tries every process), then what could not be stopped is
    reported."""
    setups: list[SetupT] = []

    def start(**options: Any) -> SetupT:
        setup = kind(tmp_path_factory.mktemp(kind.__name__.lower()), **options)
        setups.append(setup)
        setup.start()
        return setup

    try:
        yield start
    finally:
        failures = []
        for setup in setups:
            try:
                setup.stop()
            except Exception as exc:  # noqa: BLE001: stop the others first
                failures.append(str(exc))
        if failures:
            raise RuntimeError("; ".join(failures))


@pytest.fixture
def fresh_sentinel(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Callable[..., SentinelSetup]]:
    """A factory for a test of its own that kills, pauses or fails over: ``fresh_sentinel(
    **options)`` starts a :class:`SentinelSetup` (``options`` as its constructor's) in a new
    directory and returns it; every one started is stopped after the test."""
    require_redis("redis-server")
    yield from _factory(SentinelSetup, tmp_path_factory)


@pytest.fixture
def fresh_cluster(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Callable[..., ClusterSetup]]:
    """As :func:`fresh_sentinel`, for a :class:`ClusterSetup`."""
    require_redis("redis-server", "redis-cli")
    yield from _factory(ClusterSetup, tmp_path_factory)


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-sentinel", "redis-cluster"])
def backend_kind(request: pytest.FixtureRequest, tmp_path: Path) -> BackendKind:
    """Every backend the hub ships with; Redis in its three modes (one server, a master
    watched by Sentinel, a Cluster), which must behave alike."""
    if request.param == "memory":
        return BackendKind("memory", False, lambda **o: MemoryBackend(**o))
    if request.param.startswith("redis"):
        from tether.hub.redis import RedisBackend

        fixture = {"redis": "redis_server", "redis-sentinel": "sentinel_setup",
                   "redis-cluster": "cluster_setup"}[request.param]
        url = request.getfixturevalue(fixture).url
        prefix = f"test-{secrets.token_hex(4)}:"
        return BackendKind(request.param, True,
                           lambda **o: RedisBackend(url, key_prefix=prefix, **o))
    path = tmp_path / "hub.sqlite3"
    return BackendKind("sqlite", True, lambda **o: SQLiteBackend(path, **o))


class WrappedBackend(Backend):
    """Delegates everything to another backend; tests override a method to interfere."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    async def publish(self, topic: str, data: Any, sender: str | None = None) -> Envelope:
        return await self.inner.publish(topic, data, sender)

    async def history(
        self, topic: str, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        return await self.inner.history(topic, since, limit)

    async def epoch(self, topic: str) -> str:
        return await self.inner.epoch(topic)

    async def reset(self, topic: str) -> str:
        return await self.inner.reset(topic)

    async def listen(self, topic: str, listener: Listener) -> None:
        await self.inner.listen(topic, listener)

    async def unlisten(self, topic: str, listener: Listener) -> None:
        await self.inner.unlisten(topic, listener)

    async def join(self, topic: str, member_id: str, name: str) -> None:
        await self.inner.join(topic, member_id, name)

    async def leave(self, topic: str, member_id: str) -> None:
        await self.inner.leave(topic, member_id)

    async def members(self, topic: str) -> list[str]:
        return await self.inner.members(topic)

    async def close(self) -> None:
        await self.inner.close()


class HubClient:
    """A tether client speaking the hub's protocol, with bounded waits."""

    def __init__(self, ws: tether.WebSocket) -> None:
        self.ws = ws

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 20 * UNIT) -> dict[str, Any]:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(message, str)
        frame = json.loads(message)
        assert isinstance(frame, dict)
        return frame

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == kind, frame
        for name, value in fields.items():
            assert frame.get(name) == value, (name, frame)
        return frame

    async def subscribe(
        self, topic: str, **options: Any
    ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        """Subscribe; return (subscribed, presence snapshot, replayed messages)."""
        await self.send(type="subscribe", topic=topic, **options)
        subscribed = await self.expect("subscribed", topic=topic)
        presence = await self.expect("presence", topic=topic)
        replayed = [await self.expect("message", topic=topic)
                    for _ in range(subscribed["replayed"])]
        return subscribed, presence, replayed

    async def message_and_ack(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """After publishing to a topic it is subscribed to: its own message and the ack, in
        either order (the ack goes out at once, live messages at the end of the loop's
        turn)."""
        first, second = await self.recv(), await self.recv()
        frames = {first["type"]: first, second["type"]: second}
        assert set(frames) == {"message", "ack"}, (first, second)
        return frames["message"], frames["ack"]

    async def messages(self, count: int) -> list[dict[str, Any]]:
        return [await self.expect("message") for _ in range(count)]

    async def drain(self, kind: str = "presence", duration: float = 2 * UNIT
                    ) -> list[dict[str, Any]]:
        """Every frame that arrives until nothing has for ``duration``; all of type
        ``kind`` (presence changes go out once per window, so how many frames they take
        depends on timing)."""
        frames: list[dict[str, Any]] = []
        while True:
            try:
                frame = await self.recv(duration)
            except asyncio.TimeoutError:
                return frames
            assert frame["type"] == kind, frame
            frames.append(frame)

    async def quiet(self, duration: float = 2 * UNIT) -> None:
        """Nothing arrives for a while."""
        with pytest.raises(asyncio.TimeoutError):
            frame = await self.recv(duration)
            raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        await self.ws.close()


@asynccontextmanager
async def hub_serving(hub: Hub, **options: Any) -> AsyncIterator[
        tuple[tether.Server, Callable[..., Any]]]:
    """The hub on a free loopback port; yields (server, connect) where
    ``await connect(name)`` opens a :class:`HubClient` named ``name``."""

    async def handler(ws: tether.WebSocket) -> None:
        assert ws.request is not None
        names = ws.request.query_params.get("name")
        await hub.serve(ws, names[0] if names else "anonymous")

    clients: list[HubClient] = []
    async with tether.serve(handler, "127.0.0.1", 0, **options) as server:
        url = f"ws://127.0.0.1:{server.port_number}/"

        async def connect(name: str = "anonymous", **connect_options: Any) -> HubClient:
            connect_options.setdefault("close_timeout", 5 * UNIT)
            ws = await tether.connect(f"{url}?name={name}", **connect_options)
            clients.append(HubClient(ws))
            return clients[-1]

        try:
            yield server, connect
        finally:
            # Close the clients first: a client that stopped reading would otherwise hold
            # the server's shutdown for its close_timeout.
            await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
