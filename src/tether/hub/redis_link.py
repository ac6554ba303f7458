"""How the Redis backend reaches Redis: one server, a master that Redis Sentinel watches, or a
Redis Cluster. :class:`~tether.hub.redis.RedisBackend` keeps everything else (the scripts,
the reader and its catch-up, presence) and does not know which one it talks to.

Every mode offers the same four things: :meth:`Link.run` runs one of the backend's Lua
scripts on the master that holds its keys (and, asked for replicas, WAITs for them on the same
connection), :meth:`Link.command` sends one command there, :meth:`Link.feed` opens the live
feed (SUBSCRIBE, or SSUBSCRIBE in a cluster), and :meth:`Link.close`.

Why the scripts are not sent through redis-py's ``Script`` objects: ``WAIT`` counts the writes
of the connection it is sent on, so it must follow the script on that connection, in the same
round trip. redis-py's pipelines would add a ``SCRIPT EXISTS`` round trip, and in a cluster its
``ClusterPipeline`` sends ``WAIT`` to another node (it answered "1 replica" while the shard's
only replica was frozen). So the script and its ``WAIT`` are written together on one pooled
connection of the right master, and a ``NOSCRIPT`` answer (a promoted replica has not seen
``SCRIPT LOAD``) loads the script on that connection and runs it again: nothing ran the first
time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry  # the asyncio one: a redis.retry.Retry here warns
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from .base import BackendUnavailable
from .redis_url import RedisURL, safe_url

__all__ = ["Link", "SentinelLink", "ClusterLink", "Feed", "Script", "open_link", "ERRORS"]

logger = logging.getLogger("tether.hub")

ERRORS = (RedisError, OSError, RedisClusterException)
"""What redis-py raises when Redis cannot be reached or refuses (a cluster's own errors, such
as "no node of the cluster answers", are not RedisErrors)."""
MIN_VERSION = (6, 2)
CLUSTER_MIN_VERSION = (7, 0)  # SPUBLISH, SSUBSCRIBE
REDIRECTS = 8
"""MOVED, ASK or TRYAGAIN answers a cluster call follows before it gives up."""


@dataclass(frozen=True)
class Script:
    """A Lua script, known by its SHA1 (what EVALSHA names)."""

    name: str
    source: str
    sha: str = field(init=False)  # computed once: every call sends it

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class NotReplicated(BackendUnavailable):
    """WAIT counted fewer replicas than asked for: stored on the master, not confirmed."""


class Feed:
    """The live feed of one reader session: a pub/sub connection (one per shard in a
    cluster). Confirmations come out of :meth:`get` as ``("subscribe", channel, None)``,
    including those of re-subscriptions the client library made by itself."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def subscribe(self, *channels: bytes) -> None:
        if channels:
            await self._pubsub.subscribe(*channels)

    async def unsubscribe(self, *channels: bytes) -> None:
        await self._pubsub.unsubscribe(*channels)

    async def get(self, timeout: float) -> tuple[str, bytes | None, Any] | None:
        """The next message or confirmation: ``(kind, channel, data)`` with kind one of
        ``"subscribe"``, ``"unsubscribe"``, ``"message"``, ``"pong"``; None after ``timeout``
        seconds of silence."""
        message = await self._pubsub.get_message(timeout=timeout)
        return None if message is None else _normalized(message)

    async def ping(self) -> None:
        await self._pubsub.ping()

    async def close(self) -> None:
        try:
            await self._pubsub.aclose()
        except ERRORS:
            pass


def _version(info: dict[str, Any]) -> tuple[int, ...]:
    text = info.get("redis_version", "0")
    if isinstance(text, bytes):
        text = text.decode()
    return tuple(int(x) for x in re.findall(r"\d+", str(text))[:3])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Link:
    """One Redis server (``redis://``, ``rediss://``, ``unix://``).

    Args:
        url: the URL as given (redis-py parses it; shown without its password).
        target: the parsed URL.
        timeout: seconds to connect and to wait for each reply.
        max_connections: connections kept at most; callers wait for a free one.
    """

    tagged = False
    """Whether a topic's keys share one hash tag (a cluster needs them in one slot)."""
    publish_command = "PUBLISH"

    def __init__(self, url: str, target: RedisURL, *, timeout: float,
                 max_connections: int) -> None:
        self.url = url
        self.target = target
        self.timeout = timeout
        self.max_connections = max_connections
        self.client: Any = None

    # -- opening ----------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            # Never retry a command behind our back: a publish sent twice is stored twice.
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }

    async def open(self) -> None:
        """Connect and check what answers.

        Raises:
            BackendUnavailable: with one line that says what is wrong.
        """
        try:
            # A bounded pool whose callers wait for a free connection. redis-py's default
            # pool opens one connection per call in flight or refuses calls past its limit
            # (MaxConnectionsError): under a burst of subscribes part of them got
            # `unavailable`. No deadline on the wait: each busy connection is released
            # within `timeout` (socket timeouts), so the queue always moves.
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=self.max_connections, timeout=None,
                **self._options())
        except ValueError as exc:
            raise BackendUnavailable(f"invalid Redis URL {safe_url(self.url)}: {exc}") from None
        self.client = aioredis.Redis(connection_pool=pool)
        try:
            info = await self.client.info("server")
            cluster = await self.client.info("cluster")
        except ERRORS as exc:
            await self.close()
            raise BackendUnavailable(f"cannot reach Redis at {safe_url(self.url)}: {exc}") from None
        where = self._where()
        problem = None
        if info.get("redis_mode") == "sentinel" or _text(info.get("redis_mode", "")) == "sentinel":
            problem = (f"{where} is a Redis Sentinel: use redis+sentinel://{where}"
                       "/<master name>")
        elif str(cluster.get("cluster_enabled", 0)) == "1":
            problem = f"{where} is a Redis Cluster node: use redis+cluster://{where}"
        elif _version(info) < MIN_VERSION:
            problem = (f"Redis at {where} runs Redis {_text(info.get('redis_version'))}: "
                       "tether needs Redis >= 6.2")
        if problem:
            await self.close()
            raise BackendUnavailable(problem)

    def _where(self) -> str:
        pool = self.client.connection_pool
        kwargs = pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}"

    async def check_replicas(self, wanted: int) -> None:
        """Raise when the master has fewer than ``wanted`` replicas online now."""
        _enough(await self.client.info("replication"), wanted, self._where())

    # -- calls ------------------------------------------------------------------------------

    async def command(self, *args: Any, key: str | None = None) -> Any:
        """One command, on the master that holds ``key`` (any master without one)."""
        return await self.client.execute_command(*args)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any],
                  replicas: int = 0, replica_timeout: float = 1.0) -> Any:
        """Run ``script`` on the master of ``keys``; with ``replicas``, return only once that
        many replicas have its writes.

        Raises:
            RedisError, OSError: as redis-py raises them (the backend turns them into
                :class:`BackendUnavailable`).
            NotReplicated: stored on the master, confirmed by fewer replicas in time.
        """
        pool = self.client.connection_pool
        connection = await pool.get_connection()
        try:
            return await self._run_on(connection, script, keys, args, replicas,
                                      replica_timeout)
        except BaseException as exc:
            if not isinstance(exc, (ResponseError, NotReplicated)):
                await connection.disconnect()  # a reply may be half read
            raise
        finally:
            await pool.release(connection)

    async def _run_on(self, connection: Any, script: Script, keys: Sequence[str],
                      args: Sequence[Any], replicas: int, replica_timeout: float,
                      asking: bool = False) -> Any:
        commands: list[tuple[Any, ...]] = [("EVALSHA", script.sha, len(keys), *keys, *args)]
        if replicas:
            commands.append(("WAIT", replicas, int(replica_timeout * 1000)))
        if asking:
            commands.insert(0, ("ASKING",))
        for attempt in range(2):
            await connection.send_packed_command(connection.pack_commands(commands))
            if asking:
                await connection.read_response()
            try:
                result = await connection.read_response()
            except NoScriptError:
                if replicas:
                    await connection.read_response()  # WAIT's answer: nothing was written
                if attempt:
                    raise
                load: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", script.source)]
                if asking:
                    load.insert(0, ("ASKING",))
                await connection.send_packed_command(connection.pack_commands(load))
                for _ in load:
                    await connection.read_response()
                continue
            except ResponseError:
                if replicas:
                    # Refused (NOREPLICAS) or redirected: nothing was written, and the WAIT
                    # sent with it would run out its timeout before answering. Drop the
                    # connection (and that answer) instead of waiting for it.
                    await connection.disconnect()
                raise
            if replicas:
                confirmed = int(await connection.read_response())
                if confirmed < replicas:
                    raise NotReplicated(
                        f"Redis at {safe_url(self.url)}: stored on the master, confirmed by "
                        f"{confirmed} of {replicas} replica{'s' if replicas != 1 else ''} "
                        f"within {replica_timeout:g} s")
            return result
        raise AssertionError("unreachable")

    def feed(self) -> Feed:
        return Feed(self.client.pubsub())

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            try:
                await client.aclose()
                await client.connection_pool.disconnect()  # ours: the client does not own it
            except ERRORS:
                pass


# -- Sentinel ---------------------------------------------------------------------------------


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool whose callers wait for a free connection (redis-py's refuses
    calls past its limit: 300 of 400 concurrent calls failed)."""


class _NewestSentinel(Sentinel):
    """Asks every sentinel and believes the newest configuration. redis-py's ``Sentinel``
    believes the first that answers; right after a failover that may be the failover's leader,
    which names the old master until the failover ends (flag ``failover_in_progress``, with
    the same config-epoch as those that already switched)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        states = await asyncio.gather(*(self._ask(s, service_name) for s in self.sentinels))
        valid = [s for s in states if s and self.check_master_state(s, service_name)
                 and "failover_in_progress" not in s.get("flags", ())]
        if not valid:
            from redis.asyncio.sentinel import MasterNotFoundError

            raise MasterNotFoundError(f"No master found for {service_name!r}")
        top = max(int(s["config-epoch"]) for s in valid)
        votes = Counter((s["ip"], int(s["port"])) for s in valid
                        if int(s["config-epoch"]) == top)
        return votes.most_common(1)[0][0]

    @staticmethod
    async def _ask(sentinel: Any, service_name: str) -> Any:
        try:
            return (await sentinel.sentinel_masters()).get(service_name)
        except ERRORS:
            return None


class SentinelLink(Link):
    """A master watched by Redis Sentinel (``redis+sentinel://s1,s2/<master>/<db>``).

    Each new connection asks every sentinel for the master. One more task listens to
    ``+switch-master`` on every sentinel: on a switch it drops every pooled connection (they
    may still reach the old master, which Redis 7.0's Sentinel demotes only about 10 s later,
    and whose acknowledged writes are then lost) and calls ``on_switch`` so that the backend
    moves its live feed to the new master.
    """

    def __init__(self, url: str, target: RedisURL, *, timeout: float,
                 max_connections: int) -> None:
        super().__init__(url, target, timeout=timeout, max_connections=max_connections)
        self.on_switch: Callable[[], Awaitable[None]] | None = None
        self._sentinel: Any = None
        self._watchers: list[asyncio.Task[None]] = []
        self._master: tuple[str, int] | None = None  # where the sentinels last said it is
        self._watching: list[Any] = []  # the sentinels' pub/sub objects

    def _sentinel_options(self) -> dict[str, Any]:
        options = self.target.options
        kwargs: dict[str, Any] = {"socket_timeout": self.timeout,
                                  "socket_connect_timeout": self.timeout,
                                  "retry": Retry(NoBackoff(), 0)}
        if options.get("sentinel_password"):
            kwargs["password"] = options["sentinel_password"]
        if options.get("sentinel_username"):
            kwargs["username"] = options["sentinel_username"]
        if self.target.tls:
            kwargs["ssl"] = True
        return kwargs

    async def open(self) -> None:
        target = self.target
        service = target.service or ""
        where = ", ".join(_address(h, p) for h, p in target.addresses)
        masters: list[dict[str, Any]] = []
        errors: list[str] = []
        for host, port in target.addresses:
            probe = aioredis.Redis(host=host, port=port, **self._sentinel_options())
            try:
                info = await probe.info("server")
                if _text(info.get("redis_mode", "")) != "sentinel":
                    kind = "redis+cluster://" if info.get("redis_mode") == "cluster" \
                        else "redis://"
                    raise BackendUnavailable(
                        f"{_address(host, port)} is not a Redis Sentinel "
                        f"(redis_mode:{_text(info.get('redis_mode', '?'))}): use {kind}")
                known: Any = await probe.sentinel_masters()
                masters.append({"address": _address(host, port), "state": known.get(service),
                                "names": sorted(_text(name) for name in known)})
            except ERRORS as exc:
                errors.append(str(exc))
            finally:
                await probe.aclose()
        if not masters:
            raise BackendUnavailable(
                f"cannot reach any Redis Sentinel at {where}: {errors[0] if errors else '?'}")
        if all(m["state"] is None for m in masters):
            names = masters[0]["names"]
            raise BackendUnavailable(
                f"Redis Sentinel at {masters[0]['address']} has no master named {service!r}"
                f" (it has: {', '.join(names) or 'none'})")
        self._sentinel = _NewestSentinel(list(target.addresses),
                                         sentinel_kwargs=self._sentinel_options())
        kwargs = self._options()
        if target.username:
            kwargs["username"] = target.username
        if target.password:
            kwargs["password"] = target.password
        if target.tls:
            kwargs["ssl"] = True
        self.client = self._sentinel.master_for(
            service, redis_class=aioredis.Redis, connection_pool_class=_BlockingSentinelPool,
            max_connections=self.max_connections, timeout=None, db=target.db, **kwargs)
        try:
            self._master = await self._sentinel.discover_master(service)
            info = await self.client.info("server")
        except ERRORS as exc:
            states = [m["state"] for m in masters if m["state"]]
            down = any("down" in s.get("flags", "") or "failover_in_progress" in
                       s.get("flags", "") for s in states)
            await self.close()
            if down:
                raise BackendUnavailable(
                    f"Redis Sentinel at {where}: master {service!r} is down (failover in "
                    "progress); try again") from None
            raise BackendUnavailable(
                f"cannot reach the master {service!r} named by Redis Sentinel at {where}: "
                f"{exc}") from None
        if _version(info) < MIN_VERSION:
            await self.close()
            raise BackendUnavailable(
                f"the master {service!r} at {self._where()} runs Redis "
                f"{_text(info.get('redis_version'))}: tether needs Redis >= 6.2")
        self._watchers = [asyncio.create_task(self._follow(host, port))
                          for host, port in target.addresses]

    def _where(self) -> str:
        return _address(*self._master) if self._master else "?"

    async def _follow(self, host: str, port: int) -> None:
        """Listen to one sentinel's ``+switch-master``, reconnecting as needed."""
        delay = 0.1
        while self.client is not None:
            sentinel = aioredis.Redis(host=host, port=port, **self._sentinel_options())
            pubsub = sentinel.pubsub()
            self._watching.append(pubsub)
            try:
                await pubsub.subscribe("+switch-master")
                delay = 0.1
                while self.client is not None:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None or message["type"] not in ("message", b"message"):
                        continue
                    words = _text(message["data"]).split()
                    if len(words) == 5 and words[0] == self.target.service:
                        await self._switched(words[3], int(words[4]))
            except ERRORS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                self._watching.remove(pubsub)
                try:
                    await pubsub.aclose()
                    await sentinel.aclose()
                except ERRORS:
                    pass

    async def _switched(self, host: str, port: int) -> None:
        """A sentinel announced a new master. Every sentinel announces each switch (one
        may be late by a second): only the first announcement of a master moves us."""
        if (host, port) == self._master or self.client is None:
            return
        self._master = (host, port)
        logger.warning("event=redis_master_switched service=%s master=%s",
                       self.target.service, _address(host, port))
        # Every pooled connection may still reach the old master: drop them all; new ones
        # ask the sentinels.
        await self.client.connection_pool.disconnect(inuse_connections=True)
        if self.on_switch is not None:
            await self.on_switch()

    async def close(self) -> None:
        await super().close()  # self.client is None from here: the watchers stop
        watchers, self._watchers = self._watchers, []
        for pubsub in list(self._watching):
            try:
                await pubsub.aclose()  # ends a read in progress (cancelling it may not)
            except ERRORS:
                pass
        for task in watchers:
            task.cancel()
        if watchers:
            await asyncio.wait(watchers, timeout=self.timeout)


# -- Cluster ----------------------------------------------------------------------------------


class ClusterLink(Link):
    """A Redis Cluster (``redis+cluster://h1,h2/``): every key of a topic carries one hash
    tag, so a topic's scripts run on its slot's master, and its live messages go over sharded
    pub/sub (SPUBLISH from the script, SSUBSCRIBE), which reach only that shard.

    Calls follow MOVED, ASK and TRYAGAIN (a slot moved or moving); a connection error asks
    for a fresh view of the slots before the next call.
    """

    tagged = True
    publish_command = "SPUBLISH"

    def __init__(self, url: str, target: RedisURL, *, timeout: float,
                 max_connections: int) -> None:
        super().__init__(url, target, timeout=timeout, max_connections=max_connections)
        # redis-py's per-node pools refuse calls past their limit: callers wait here.
        self._slots = asyncio.Semaphore(max_connections)
        self._stale = False  # a connection failed: refresh the slot map first

    async def open(self) -> None:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        target = self.target
        where = ", ".join(_address(h, p) for h, p in target.addresses)
        # First a plain look at one node: redis-py's own errors do not say what is wrong.
        for host, port in target.addresses:
            probe = aioredis.Redis(host=host, port=port, username=target.username,
                                   password=target.password, ssl=target.tls,
                                   **self._options())
            try:
                cluster = await probe.info("cluster")
            except ERRORS:
                continue
            finally:
                await probe.aclose()
            if str(cluster.get("cluster_enabled", 0)) != "1":
                raise BackendUnavailable(
                    f"{_address(host, port)} is not a Redis Cluster (cluster_enabled:0): "
                    "use redis://")
            break
        kwargs = self._options()
        kwargs.pop("retry")
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.addresses],
            username=target.username, password=target.password, ssl=target.tls,
            max_connections=self.max_connections, retry=Retry(NoBackoff(), 0), **kwargs)
        try:
            await self.client.initialize()
            infos = await self.client.info("server", target_nodes=RedisCluster.PRIMARIES)
        except ERRORS as exc:
            await self.close()
            raise BackendUnavailable(f"cannot reach the Redis Cluster at {where}: {exc}") from None
        for name, info in (infos.items() if isinstance(infos, dict) else []):
            if isinstance(info, dict) and _version(info) < CLUSTER_MIN_VERSION:
                await self.close()
                raise BackendUnavailable(
                    f"Redis Cluster at {where} runs Redis {_text(info.get('redis_version'))} "
                    f"on {name}: sharded pub/sub needs Redis >= 7")

    def _where(self) -> str:
        return ", ".join(_address(h, p) for h, p in self.target.addresses)

    async def check_replicas(self, wanted: int) -> None:
        for node in self.client.get_primaries():
            _enough(await self.client.info("replication", target_nodes=node), wanted,
                    node.name)

    async def command(self, *args: Any, key: str | None = None) -> Any:
        async with self._slots:
            return await self.client.execute_command(*args)

    async def _refresh(self) -> None:
        if self._stale:
            self._stale = False
            try:
                await self.client.nodes_manager.initialize()
            except ERRORS:
                self._stale = True

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any],
                  replicas: int = 0, replica_timeout: float = 1.0) -> Any:
        async with self._slots:
            await self._refresh()
            node = self.client.get_node_from_key(keys[0])
            asking = False
            for _ in range(REDIRECTS):
                owner = node
                connection = owner.acquire_connection()
                try:
                    return await self._run_on(connection, script, keys, args, replicas,
                                              replica_timeout, asking)
                except MovedError as exc:
                    await self.client.nodes_manager.move_slot(exc)
                    node, asking = self.client.get_node_from_key(keys[0]), False
                except AskError as exc:
                    node, asking = self._node_at(exc.host, exc.port), True
                except TryAgainError:
                    await asyncio.sleep(0.05)
                except ClusterDownError:
                    self._stale = True
                    raise
                except (ResponseError, NotReplicated):
                    raise
                except BaseException:
                    self._stale = True
                    await connection.disconnect()
                    raise
                finally:
                    owner.release(connection)
            raise ResponseError(f"slot of {keys[0]} still moving after {REDIRECTS} redirections")

    def _node_at(self, host: str, port: int) -> Any:
        from redis.asyncio.cluster import ClusterNode

        manager = self.client.nodes_manager
        host, port = manager.remap_host_port(host, port)
        node = manager.get_node(host=host, port=port)
        if node is None:
            node = ClusterNode(host, port, **manager.connection_kwargs)
            manager.set_nodes(manager.nodes_cache, {node.name: node})
        return node

    def feed(self) -> Feed:
        return _ShardedFeed(self)

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            try:
                await client.aclose()
            except ERRORS:
                pass

    async def ping(self) -> None:
        async with self._slots:
            await self.client.ping()


class _ShardedFeed(Feed):
    """The live feed in a cluster: one pub/sub connection per shard master that holds one
    of our channels, each read by its own task into one queue.

    Not redis-py's ``ClusterPubSub``: it polls its per-node connections in turn, each for a
    slice of the timeout, so a message on one shard waits while another is polled (up to a
    second here). A slot that moves away (Redis pushes an ``sunsubscribe`` we did not ask
    for) is subscribed again on its new owner; its confirmation makes the backend catch up
    from the stream. A shard's connection that fails ends the whole feed: the backend starts
    a new one, which re-reads the slot map, subscribes everything, and catches up.
    """

    def __init__(self, link: ClusterLink) -> None:
        super().__init__(None)
        self._link = link
        self._shards: dict[str, tuple[Any, Any]] = {}  # node name -> client, pubsub
        self._readers: list[asyncio.Task[None]] = []
        self._where: dict[bytes, str] = {}  # channel -> the node name it is subscribed on
        self._queue: asyncio.Queue[tuple[str, bytes | None, Any] | BaseException] = (
            asyncio.Queue())

    async def subscribe(self, *channels: bytes) -> None:
        await self._link._refresh()
        for channel in channels:
            # One SSUBSCRIBE per channel: the channels of one command must share a slot.
            node = self._link.client.get_node_from_key(channel)
            self._where[channel] = node.name
            shard = self._shards.get(node.name)
            if shard is None:
                target = self._link.target
                client = aioredis.Redis(
                    host=node.host, port=node.port, username=target.username,
                    password=target.password, ssl=target.tls, **self._link._options())
                shard = self._shards[node.name] = (client, client.pubsub())
                await shard[1].ssubscribe(channel)
                # Read only once subscribed: redis-py's PubSub has no connection before.
                self._readers.append(asyncio.create_task(self._read(shard[1])))
            else:
                await shard[1].ssubscribe(channel)

    async def _read(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._queue.put_nowait(_normalized(message))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._link._stale = True
            self._queue.put_nowait(exc)

    async def unsubscribe(self, *channels: bytes) -> None:
        for channel in channels:
            name = self._where.pop(channel, None)
            if name is not None and name in self._shards:
                await self._shards[name][1].sunsubscribe(channel)

    async def get(self, timeout: float) -> tuple[str, bytes | None, Any] | None:
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        kind, channel, _ = item
        if kind == "unsubscribe" and channel in self._where:
            # Not asked for: the slot left that node. Subscribe where it is now.
            self._link._stale = True
            del self._where[channel]
            await self.subscribe(channel)
        return item

    async def ping(self) -> None:
        for _, pubsub in self._shards.values():
            await pubsub.ping()

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
            try:
                await task
            except BaseException:
                pass
        self._readers.clear()
        for client, pubsub in self._shards.values():
            try:
                await pubsub.aclose()
                await client.aclose()
            except ERRORS:
                pass
        self._shards.clear()


def _normalized(message: dict[str, Any]) -> tuple[str, bytes | None, Any]:
    """``(kind, channel, data)``, kind one of subscribe, unsubscribe, message, pong."""
    kind = message["type"]
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    kind = {"ssubscribe": "subscribe", "sunsubscribe": "unsubscribe",
            "smessage": "message"}.get(kind, kind)
    channel = message.get("channel")
    if isinstance(channel, str):
        channel = channel.encode()
    return kind, channel, message.get("data")


def _enough(info: dict[str, Any], wanted: int, where: str) -> None:
    online = sum(1 for key, value in info.items() if str(key).startswith("slave")
                 and isinstance(value, dict) and value.get("state") == "online")
    if online < wanted:
        raise BackendUnavailable(
            f"--redis-min-replicas {wanted}, but the master at {where} has {online} "
            f"replica{'s' if online != 1 else ''} online")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_link(url: str, target: RedisURL, *, timeout: float, max_connections: int) -> Link:
    """The link for ``target``'s mode (not yet open)."""
    kind = {"single": Link, "sentinel": SentinelLink, "cluster": ClusterLink}[target.mode]
    return kind(url, target, timeout=timeout, max_connections=max_connections)

