"""The Redis backend: several tether processes (nodes), on one machine or many, serve one set
of topics. Needs the ``redis`` package (``pip install tether[redis]``) and Redis >= 6.2 (>= 7
for a Cluster). One server, a master that Sentinel watches, or a Redis Cluster: how each is
reached is in :mod:`tether.hub.redis_link`; everything here is the same for the three.

Where things live, for a topic ``T`` and the prefix ``P`` (``"tether:"`` by default; in a
Cluster every name is ``{P T}`` instead of ``P T``: the whole name is the hash tag, so a
topic's keys share one slot and its channel is a sharded one)::

    P T:epoch     string    the topic's epoch (see the lineage rule in the scripts)
    P T:seq       string    the latest seq (INCR)
    P T:stream    stream    the history: entry ID ``<seq>-0``, fields time, seq, epoch, data
                            (JSON), sender (absent for the server); XADD MAXLEN ~ history_size
    P T:lineage   string    the ``master_replid`` of the server that last wrote the topic
    P T:epochs    zset      epochs a failover closed -> their last seq (the 16 newest)
    P T:members   hash      member id -> name
    P T:names     hash      name -> how many member ids carry it
    P T:expiry    zset      member id -> expiry time (ms)
    P T:roster    zset      the names, all with score 0 (sorted by name)
    P T           channel   live messages and presence changes (one pub/sub channel per topic)

Every write is one Lua script, so it is atomic across nodes: a publish reads the epoch,
INCRs the seq, XADDs the entry, trims the history and PUBLISHes the message in one step,
hence the channel carries a topic's messages in ``seq`` order, and the stream holds them in
the same order. Times come from Redis (``TIME``) unless a ``clock`` is given, so the age bound
does not depend on the nodes' clocks.

A node SUBSCRIBEs to a topic's channel while it has local listeners, and UNSUBSCRIBEs after
the last one leaves. Presence is shared: each node re-joins its own members every
``presence_ttl / 3`` seconds, each time with an expiry ``presence_ttl * 4/5`` ahead, and
sweeps every topic it listens to or has members in every ``presence_ttl / 5`` seconds. The
entries of a node that stopped (crash, partition) therefore expire at most ``presence_ttl *
4/5`` after its last refresh, and whichever node sees them expired first (its sweep, a join, a
leave, ``members()``) removes them and publishes the ``left`` changes: at most
``presence_ttl`` after the node's last refresh, so after it stopped, plus the milliseconds
of one sweep.

What is guaranteed:

- ``publish()`` returns only once Redis ran the script: the message is stored with its seq
  (durable as far as Redis' persistence goes: ``appendonly yes`` with ``appendfsync always``
  keeps every acknowledged message across a Redis restart, ``everysec`` may lose the last
  second). When Redis cannot be reached, ``publish()`` raises :class:`BackendUnavailable`:
  nothing is queued, nothing is lost silently. A publish whose reply was lost (Redis died
  during the call) also raises, although the message may have been stored: publishing is
  at-least-once when the caller retries.
- Listeners get a topic's messages in ``seq`` order, each once. When the pub/sub connection
  drops, the node reconnects with exponential backoff (logging the outage once and the
  recovery once), resubscribes its channels, then reads from the stream what it missed
  meanwhile (within the history bounds) before the live messages, and sends every listener a
  fresh presence list.
- ``history()`` and resume work from any node: the stream is the one truth.

What is not: ordering across topics; one hot topic spread over a Cluster's shards (a topic's
keys share one hash tag, so it lives in one slot); an acknowledged publish that survives every
failover (a promoted replica may lack the last writes: without ``min_replicas`` a failover can
lose acknowledged publishes, and with it one whose old master stays alive still can, unless
``min_replicas`` is the number of replicas; the epoch rule makes such a loss visible, never a
reused seq); replicas confirming the disk (WAIT counts memory); key eviction (set
``maxmemory-policy noeviction``: a lost ``seq`` key breaks the topic). See docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import (
    check_history_bounds,
    DEFAULT_HISTORY_AGE,
    DEFAULT_HISTORY_SIZE,
    Backend,
    BackendUnavailable,
    Envelope,
    HistoryResult,
    Listener,
    PresenceEvent,
    Roster,
)
from .memory import new_epoch
from .redis_link import ERRORS, Feed, Link, Script, SentinelLink, open_link
from .redis_url import parse_redis_url, safe_url

__all__ = ["RedisBackend", "DEFAULT_URL", "DEFAULT_PRESENCE_TTL", "DEFAULT_MAX_CONNECTIONS"]

logger = logging.getLogger("tether.hub")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PRESENCE_TTL = 30.0
"""Seconds a member stays without being refreshed by its node."""
DEFAULT_MAX_CONNECTIONS = 50
"""Connections a node opens to Redis for its calls (the pub/sub connection is one of them);
further calls wait for one to be free."""
IDLE_CHECK_INTERVAL = 2.0
"""Seconds between PINGs while no topic is listened to (nothing else would notice an outage
then, and ``/readyz`` must)."""
HEALTH_INTERVAL = 15.0
"""Seconds of silence on the pub/sub connection after which it is PINGed; twice that without
an answer and it is considered dead."""

_LUA_COMMON = """
local function now_ms(given)
  local n = tonumber(given)
  if n >= 0 then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The topic's epoch, under the lineage rule: an (epoch, seq) pair names one message forever.
-- A server's master_replid is new each time it becomes a master (a promoted replica) and each
-- time it starts (a restart from its AOF): only there can acknowledged writes be missing. The
-- first script on a topic that finds another replid than the last writer's closes the epoch
-- at the seq this data set has (recorded in the epochs sorted set, end seq as the score, the
-- 16 newest kept) and starts a new one; seq keeps counting. K: epoch, seq, lineage, epochs.
local function get_epoch(k_epoch, k_seq, k_lineage, k_epochs, candidate)
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  local e = redis.call('GET', k_epoch)
  if not e then
    redis.call('SET', k_epoch, candidate)
    redis.call('SET', k_lineage, replid)
    return candidate
  end
  local lineage = redis.call('GET', k_lineage)
  if lineage ~= replid then
    if lineage then  -- (a topic from before the rule adopts this server without a change)
      redis.call('ZADD', k_epochs, tonumber(redis.call('GET', k_seq) or '0'), e)
      redis.call('ZREMRANGEBYRANK', k_epochs, 0, -17)
      e = candidate
      redis.call('SET', k_epoch, e)
    end
    redis.call('SET', k_lineage, replid)
  end
  return e
end
local function online_replicas()
  local n = 0
  for _ in string.gmatch(redis.call('INFO', 'replication'), 'state=online') do n = n + 1 end
  return n
end
local function entry_time(entry)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'time' then return tonumber(f[i + 1]) end
  end
  return 0
end
local function prune(stream, cutoff)
  local count = 1
  while true do
    local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', count)
    if #head == 0 then return end
    for i = 1, #head do
      if entry_time(head[i]) >= cutoff then
        if i > 1 then redis.call('XTRIM', stream, 'MINID', head[i][1]) end
        return
      end
    end
    local last = tonumber(string.match(head[#head][1], '^%d+'))
    redis.call('XTRIM', stream, 'MINID', string.format('%d-0', last + 1))
    if count < 128 then count = count * 2 end
  end
end
"""

# KEYS: epoch, seq, stream, lineage, epochs. ARGV: candidate epoch, data, sender, has sender,
# sender JSON, now (-1: Redis time), age (ms), size, channel, replicas needed, token.
# With replicas needed > 0, a master with fewer replicas online refuses (an old master whose
# replicas left for its successor would store messages that vanish): nothing is written.
_PUBLISH = _LUA_COMMON + """
local needed = tonumber(ARGV[10])
if needed > 0 then
  local online = online_replicas()
  if online < needed then
    return redis.error_reply('NOREPLICAS ' .. online .. ' online replicas, ' .. needed
                             .. ' needed')
  end
end
local epoch = get_epoch(KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[1])
local now = now_ms(ARGV[6])
local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if #newest > 0 then
  local t = entry_time(newest[1])
  if t > now then now = t end
end
local seq = redis.call('INCR', KEYS[2])
local fields = {'time', string.format('%d', now), 'seq', seq, 'epoch', epoch, 'data', ARGV[2]}
if ARGV[4] == '1' then
  fields[#fields + 1] = 'sender'
  fields[#fields + 1] = ARGV[3]
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], string.format('%d-0', seq), unpack(fields))
prune(KEYS[3], now - tonumber(ARGV[7]))
redis.call('PUBLISH', ARGV[9], '{"seq":' .. seq .. ',"epoch":"' .. epoch .. '","time":'
  .. string.format('%d', now) .. ',"sender":' .. ARGV[5] .. ',"data":' .. ARGV[2]
  .. ',"token":"' .. ARGV[11] .. '"}')
return {seq, epoch, now}
"""

# KEYS: epoch, seq, stream, lineage, epochs. ARGV: candidate epoch, now, age (ms), size, since
# (-1: none), limit (-1: none). Returns the epoch, the last seq, the first seq kept, the
# entries and the closed epochs (epoch, end seq, ...).
_HISTORY = _LUA_COMMON + """
local epoch = get_epoch(KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[1])
local now = now_ms(ARGV[2])
prune(KEYS[3], now - tonumber(ARGV[3]))
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local low = math.max(last - tonumber(ARGV[4]), 0)
local oldest = redis.call('XRANGE', KEYS[3], string.format('%d', low + 1), '+', 'COUNT', 1)
local first = last + 1
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^%d+')) end
local start = string.format('%d', math.max(low, tonumber(ARGV[5])) + 1)
local limit = tonumber(ARGV[6])
local entries
if limit < 0 then
  entries = redis.call('XRANGE', KEYS[3], start, '+')
elseif limit == 0 then
  entries = {}
else
  entries = redis.call('XREVRANGE', KEYS[3], '+', start, 'COUNT', limit)
end
return {epoch, last, first, entries, redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')}
"""

# KEYS: epoch, seq, stream, lineage, epochs. ARGV: candidate epoch.
_EPOCH = _LUA_COMMON + "return get_epoch(KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[1])"

# KEYS: epoch, seq, stream, lineage, epochs. ARGV: new epoch. A new life: nothing continues.
_RESET = """
redis.call('DEL', KEYS[3], KEYS[5])
redis.call('SET', KEYS[2], 0)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[4], string.match(redis.call('INFO', 'replication'),
                                        'master_replid:(%x+)'))
return ARGV[1]
"""

_LUA_PRESENCE = _LUA_COMMON + """
local function announce(channel, kind, name, token)
  -- The change alone: never the member list (a join storm would cost O(n^2)).
  redis.call('PUBLISH', channel, '{"' .. kind .. '":' .. cjson.encode(name)
    .. ',"token":"' .. token .. '"}')
  return 1
end
local function remove(id, channel, token)
  local name = redis.call('HGET', KEYS[1], id)
  if not name then return 0 end
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[3], id)
  if redis.call('HINCRBY', KEYS[2], name, -1) <= 0 then
    redis.call('HDEL', KEYS[2], name)
    redis.call('ZREM', KEYS[4], name)
    return announce(channel, 'left', name, token)
  end
  return 0
end
local function expire(now, channel, token)
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', string.format('(%d', now))
  local n = 0
  for _, id in ipairs(ids) do n = n + remove(id, channel, token) end
  return n
end
local now = now_ms(ARGV[1])
local n = expire(now, ARGV[2], ARGV[3])
"""

# KEYS: members (id -> name), names (name -> count), expiry (id by deadline), roster (names,
# sorted: a sorted set with every score 0 is in byte order, which for UTF-8 is code point
# order, as Python sorts). ARGV: now, channel, token, member id, name, ttl (ms).
_JOIN = _LUA_PRESENCE + """
local id, name = ARGV[4], ARGV[5]
local expiry = string.format('%d', now + tonumber(ARGV[6]))
local previous = redis.call('HGET', KEYS[1], id)
if previous == name then
  redis.call('ZADD', KEYS[3], expiry, id)
  redis.call('ZADD', KEYS[4], 0, name)  -- a refresh also fills a roster older than the key
  return n
end
if previous then n = n + remove(id, ARGV[2], ARGV[3]) end
redis.call('HSET', KEYS[1], id, name)
redis.call('ZADD', KEYS[3], expiry, id)
if redis.call('HINCRBY', KEYS[2], name, 1) == 1 then
  redis.call('ZADD', KEYS[4], 0, name)
  n = n + announce(ARGV[2], 'joined', name, ARGV[3])
end
return n
"""

# KEYS: members, names, expiry, roster. ARGV: now, channel, token, member id.
_LEAVE = _LUA_PRESENCE + "return n + remove(ARGV[4], ARGV[2], ARGV[3])"

# KEYS: members, names, expiry, roster. ARGV: now, channel, token.
_MEMBERS = _LUA_PRESENCE + "return redis.call('ZRANGE', KEYS[4], 0, -1)"

# KEYS: members, names, expiry, roster. ARGV: now, channel, token, after ('' for the start),
# limit (-1 for all). Returns {count, names}.
_ROSTER = _LUA_PRESENCE + """
local low = '-'
if ARGV[4] ~= '' then low = '(' .. string.sub(ARGV[4], 2) end
return {redis.call('ZCARD', KEYS[4]),
        redis.call('ZRANGEBYLEX', KEYS[4], low, '+', 'LIMIT', 0, tonumber(ARGV[5]))}
"""

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_encode_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _to_json(data: Any) -> bytes:
    text = _encode(data)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: escape it
        return _encode_ascii(data).encode()


_safe_url = safe_url  # the URL without its password, for messages and logs


@dataclass(eq=False)
class _Channel:
    """This node's subscription to one topic's channel."""

    topic: str
    name: bytes
    ready: asyncio.Future[None]
    listeners: list[Listener] = field(default_factory=list)
    confirmed: bool = False  # SUBSCRIBE confirmed on the current pub/sub connection
    epoch: str | None = None
    delivered: int | None = None  # the last seq handed to the listeners


@dataclass(eq=False)
class _Waiter:
    """A call waiting until the reader delivered what it published (``expected`` payloads)
    to the listeners of ``channel``. A message (``epoch``, ``seq``) counts as delivered
    however it came: live, or from the stream by a catch-up (after a slot moved to another
    shard, the live copy went where this node was not yet subscribed)."""

    channel: _Channel
    done: asyncio.Event = field(default_factory=asyncio.Event)
    seen: int = 0
    expected: int | None = None
    epoch: str | None = None
    seq: int = 0

    def check(self) -> None:
        if self.expected is not None and self.seen >= self.expected:
            self.done.set()
        elif self.epoch is not None:
            channel = self.channel
            if channel.epoch == self.epoch and (channel.delivered or 0) >= self.seq:
                self.done.set()


class RedisBackend(Backend):
    """History, live feed and presence in Redis, shared by every node using the same Redis
    database and ``key_prefix``. See the module docstring for the keys and the guarantees.

    Connects on first use; call :meth:`connect` at start-up to fail early.

    Args:
        url: one server: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``,
            ``unix://``); a master watched by Sentinel:
            ``redis+sentinel://[user:password@]host[:26379][,host2...]/<master name>[/db]``
            (``?sentinel_password=`` for the sentinels' own); a Redis Cluster:
            ``redis+cluster://[user:password@]host[:6379][,host2...]/``. See
            :mod:`tether.hub.redis_url`.
        history_size: messages kept per topic (default 1000).
        history_age: seconds a message is kept (default 24 h).
        key_prefix: prefix of every key and channel name.
        presence_ttl: the longest a member of a node that stopped (crash, partition) stays
            listed: the other nodes publish its ``left`` at most this many seconds after its
            node last refreshed it (plus the milliseconds of one sweep). A node refreshes its
            members every ``presence_ttl / 3``; each refresh lasts ``presence_ttl * 4/5``.
        timeout: seconds to connect, to wait for a reply, and for a SUBSCRIBE to be
            confirmed (longer while the live feed is connected without an outage: slow is
            not down).
        max_connections: connections to Redis this node keeps at most (the pub/sub
            connection included). A call made while they are all busy waits for one rather
            than failing: a burst of subscribes (each one a few Redis calls) queues instead
            of being refused. The wait is bounded by the calls ahead of it, each of which
            ends within ``timeout``.
        max_retry_delay: longest pause between two attempts to reconnect the live feed.
        min_replicas: acknowledge a publish only once this many replicas have it (``WAIT``
            on the connection that wrote it, in the same round trip); a master with fewer
            replicas online refuses to store it. 0 (the default) acknowledges what the master
            stored. See docs/scaling.md for what each setting guarantees.
        replica_timeout: seconds a publish waits for ``min_replicas``; then it raises
            :class:`BackendUnavailable` although the master stored it (at least once when
            the client resends).
        clock: Unix time in seconds for message times and the age bound (tests); Redis' own
            clock (``TIME``) when None.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_age: float = DEFAULT_HISTORY_AGE,
        key_prefix: str = "tether:",
        presence_ttl: float = DEFAULT_PRESENCE_TTL,
        timeout: float = 5.0,
        max_retry_delay: float = 5.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        check_history_bounds(history_size, history_age)
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix cannot contain { or } (a cluster's hash tags)")
        if min_replicas < 0 or replica_timeout <= 0:
            raise ValueError("min_replicas cannot be negative; replica_timeout must be positive")
        if not 0 < presence_ttl < math.inf or timeout <= 0 or max_retry_delay <= 0:
            raise ValueError("presence_ttl, timeout and max_retry_delay must be positive")
        if max_connections < 2:  # the pub/sub connection holds one for good
            raise ValueError("max_connections must be at least 2")
        self.url = url
        self.history_size = history_size
        self.history_age = history_age
        self.key_prefix = key_prefix
        self.presence_ttl = presence_ttl
        # A stopped node's member expires at most `_lifetime` after its last refresh, and a
        # sweep finds it at most `_sweep_interval` later: presence_ttl in all.
        self._sweep_interval = presence_ttl / 5
        self._lifetime = presence_ttl - self._sweep_interval
        self._refresh_interval = presence_ttl / 3  # renewed well before its lifetime is up
        self.timeout = timeout
        self.max_retry_delay = max_retry_delay
        self.max_connections = max_connections
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        self.clock = clock
        self._node = secrets.token_hex(6)
        self._tokens = itertools.count(1)
        self._link: Link | None = None  # created in the running loop
        self._scripts: dict[str, Script] = {}
        self._connecting: asyncio.Future[None] | None = None
        self._closed = False
        self._channels: dict[str, _Channel] = {}
        self._names: dict[bytes, _Channel] = {}  # channel name -> its channel
        self._waiters: dict[str, _Waiter] = {}
        self._local: dict[str, dict[str, str]] = {}  # topic -> member id -> name (ours)
        self._feed: Feed | None = None
        self._switched = False  # Sentinel named a new master: move the feed there
        self._live = False  # the pub/sub connection is up and subscribed
        self._down = False  # an outage was logged and not its end yet
        self._sub_lock: asyncio.Lock | None = None
        self._wakeup: asyncio.Event | None = None
        self._reader: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    # -- connection -------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"Redis at {_safe_url(self.url)}: {exc}")

    async def connect(self) -> None:
        """Connect and check that Redis answers (done on first use otherwise).

        Raises:
            BackendUnavailable: Redis cannot be reached, or the URL is not valid.
        """
        if self._closed:
            raise BackendUnavailable("the backend is closed")
        if self._link is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                await self._open()
            except BaseException as exc:
                self._connecting.set_exception(exc)
                self._connecting.exception()  # retrieved: no "never retrieved" warning
                self._connecting = None
                raise
            self._connecting.set_result(None)
        else:
            await asyncio.shield(self._connecting)

    async def _open(self) -> None:
        try:
            target = parse_redis_url(self.url)
        except ValueError as exc:
            raise BackendUnavailable(f"invalid Redis URL {_safe_url(self.url)}: {exc}") from None
        link = open_link(self.url, target, timeout=self.timeout,
                         max_connections=self.max_connections)
        await link.open()
        if self.min_replicas:
            try:
                await link.check_replicas(self.min_replicas)
            except BaseException:
                await link.close()
                raise
        if isinstance(link, SentinelLink):
            link.on_switch = self._master_switched
        publish = f"redis.call('{link.publish_command}',"
        self._scripts = {
            name: Script(name, source.replace("redis.call('PUBLISH',", publish))
            for name, source in (("publish", _PUBLISH), ("history", _HISTORY),
                                 ("epoch", _EPOCH), ("reset", _RESET), ("join", _JOIN),
                                 ("leave", _LEAVE), ("members", _MEMBERS),
                                 ("roster", _ROSTER))
        }
        self._sub_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._link = link
        self._reader = asyncio.create_task(self._read_forever())
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def _ready(self) -> None:
        if self._closed:
            raise BackendUnavailable("the backend is closed")
        if self._link is None:
            await self.connect()

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any],
                   replicas: int = 0) -> Any:
        # Every caller went through _ready() (the public methods) or runs only once
        # connected (the refresher, close): only a close since then is left to check.
        if self._closed or self._link is None:
            raise BackendUnavailable("the backend is closed")
        try:
            return await self._link.run(self._scripts[script], keys, args, replicas,
                                        self.replica_timeout)
        except BackendUnavailable:
            raise
        except ERRORS as exc:
            raise self._unavailable(exc) from None
        except Exception:
            if self._closed:  # closed during the call: redis-py's errors vary
                raise BackendUnavailable("the backend is closed") from None
            raise

    def _keys(self, topic: str, *suffixes: str) -> list[str]:
        base = self._channel_name(topic)
        return [f"{base}:{suffix}" for suffix in suffixes]

    def _channel_name(self, topic: str) -> str:
        """The topic's pub/sub channel, and the start of its keys. In a cluster the whole
        name is the hash tag: every key of a topic is in one slot, so its scripts run there
        and SPUBLISH reaches that shard only."""
        if self._link is not None and self._link.tagged:
            return f"{{{self.key_prefix}{topic}}}"
        return f"{self.key_prefix}{topic}"

    def _now_arg(self) -> int:
        return -1 if self.clock is None else int(self.clock() * 1000)

    async def _published(self, topic: str, script: str, keys: Sequence[str],
                         args: Sequence[Any], more: Sequence[Any] = (),
                         replicas: int = 0) -> Any:
        """Run a script that PUBLISHes on the topic's channel; when this node listens to the
        topic, return once the reader handed what it published to the listeners."""
        token = f"{self._node}:{next(self._tokens)}"
        channel = self._channels.get(topic)
        waiter = None
        if channel is not None and channel.confirmed and self._live:
            waiter = self._waiters[token] = _Waiter(channel)
        try:
            result = await self._run(script, keys, [*args, token, *more], replicas)
            if waiter is not None:
                if script == "publish":  # its message: delivered live or by a catch-up
                    waiter.expected = 1
                    waiter.seq, waiter.epoch = int(result[0]), result[1].decode()
                else:
                    waiter.expected = int(result)  # PUBLISHes made
                waiter.check()
                try:
                    await asyncio.wait_for(waiter.done.wait(), self.timeout)
                except asyncio.TimeoutError:
                    logger.warning("event=redis_echo_late topic=%s", topic)
        finally:
            self._waiters.pop(token, None)
        return result

    # -- history ----------------------------------------------------------------------------

    async def publish(self, topic: str, data: Any, sender: str | None = None) -> Envelope:
        text = _to_json(data)
        await self._ready()
        keys = self._history_keys(topic)
        args = [new_epoch(), text, sender or "", "0" if sender is None else "1",
                _encode_ascii(sender), self._now_arg(), int(self.history_age * 1000),
                self.history_size, self._channel_name(topic), self.min_replicas]
        seq, epoch, now = await self._published(topic, "publish", keys, args,
                                                replicas=self.min_replicas)
        return Envelope(topic, int(seq), epoch.decode(), data, sender, int(now))

    async def history(
        self, topic: str, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        await self._ready()
        args = [new_epoch(), self._now_arg(), int(self.history_age * 1000), self.history_size,
                -1 if since is None else max(since, 0), -1 if limit is None else max(limit, 0)]
        epoch, last, first, entries, closed = await self._run(
            "history", self._history_keys(topic), args)
        if limit is not None:
            entries.reverse()
        messages = tuple(_envelope(topic, entry) for entry in entries)
        gap = since is not None and since < first - 1
        ends = _closed(closed)
        return HistoryResult(messages, gap, int(first), epoch.decode(), int(last), ends)

    def _history_keys(self, topic: str) -> list[str]:
        return self._keys(topic, "epoch", "seq", "stream", "lineage", "epochs")

    async def epoch(self, topic: str) -> str:
        await self._ready()
        epoch = await self._run("epoch", self._history_keys(topic), [new_epoch()])
        return str(epoch.decode())

    async def reset(self, topic: str) -> str:
        await self._ready()
        epoch = await self._run("reset", self._history_keys(topic), [new_epoch()])
        return str(epoch.decode())

    # -- presence ---------------------------------------------------------------------------

    def _presence_args(self, topic: str) -> tuple[list[str], list[Any]]:
        return (self._keys(topic, "members", "names", "expiry", "roster"),
                [self._now_arg(), self._channel_name(topic)])

    async def join(self, topic: str, member_id: str, name: str) -> None:
        await self._ready()
        keys, args = self._presence_args(topic)
        await self._published(topic, "join", keys, args,
                              [member_id, name, int(self._lifetime * 1000)])
        self._local.setdefault(topic, {})[member_id] = name

    async def leave(self, topic: str, member_id: str) -> None:
        members = self._local.get(topic)
        if members is not None:
            members.pop(member_id, None)
            if not members:
                del self._local[topic]
        await self._ready()
        keys, args = self._presence_args(topic)
        await self._published(topic, "leave", keys, args, [member_id])

    async def members(self, topic: str) -> list[str]:
        await self._ready()
        keys, args = self._presence_args(topic)
        names = await self._run("members", keys, [*args, f"{self._node}:0"])
        return [name.decode() for name in names]  # sorted by Redis

    async def roster(self, topic: str, after: str | None = None,
                     limit: int | None = None) -> Roster:
        await self._ready()
        keys, args = self._presence_args(topic)
        # "=" + name, so that an empty name is not the start ('').
        count, names = await self._run("roster", keys, [
            *args, f"{self._node}:0", "" if after is None else "=" + after,
            -1 if limit is None else limit])
        return Roster([name.decode() for name in names], int(count))

    async def _refresh_forever(self) -> None:
        """Every ``_refresh_interval``, re-join this node's members so that they do not
        expire; every ``_sweep_interval``, expire the members of nodes that stopped on every
        topic this node has members in or listens to (a re-join expires them too). On a
        fixed schedule: a slow round does not push the next one back."""
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self._refresh_interval
        next_sweep = loop.time() + self._sweep_interval
        while not self._closed:
            await asyncio.sleep(max(0.0, min(next_refresh, next_sweep) - loop.time()))
            now = loop.time()
            swept: set[str] = set()
            try:
                if now >= next_refresh:
                    next_refresh += self._refresh_interval
                    if next_refresh <= now:  # a whole round late: start again from now
                        next_refresh = now + self._refresh_interval
                    lifetime = int(self._lifetime * 1000)
                    for topic, members in list(self._local.items()):
                        for member_id, name in list(members.items()):
                            keys, args = self._presence_args(topic)
                            await self._run("join", keys, [*args, f"{self._node}:0",
                                                           member_id, name, lifetime])
                        swept.add(topic)
                if now >= next_sweep:
                    next_sweep += self._sweep_interval
                    if next_sweep <= now:
                        next_sweep = now + self._sweep_interval
                    for topic in [*self._channels, *self._local]:
                        if topic not in swept:
                            swept.add(topic)
                            await self.members(topic)
            except BackendUnavailable as exc:
                logger.debug("event=redis_refresh_failed error=\"%s\"", exc)

    # -- live feed --------------------------------------------------------------------------

    async def listen(self, topic: str, listener: Listener) -> None:
        await self._ready()
        assert self._sub_lock is not None and self._wakeup is not None
        channel = self._channels.get(topic)
        if channel is None:
            name = self._channel_name(topic).encode()
            channel = _Channel(topic, name, asyncio.get_running_loop().create_future())
            self._channels[topic] = channel
            self._names[name] = channel
            async with self._sub_lock:
                if self._live and self._feed is not None:
                    try:
                        await self._feed.subscribe(name)
                    except ERRORS:
                        pass  # the reader sees it too, reconnects and subscribes everything
            self._wakeup.set()
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(channel.ready), self.timeout)
                break
            except asyncio.TimeoutError:
                waited = loop.time() - start
                # Slow is not down: unless the live feed is in an outage, the confirmation is
                # on its way (a busy node or Redis), and the reader's health check turns a
                # dead connection into an outage within 2 * HEALTH_INTERVAL.
                if (not self._down and not self._closed and self._channels.get(topic) is channel
                        and waited < self.timeout + 2 * HEALTH_INTERVAL):
                    continue
            if not channel.listeners and self._channels.get(topic) is channel:
                await self._drop_channel(channel)
            raise BackendUnavailable(
                f"Redis at {_safe_url(self.url)}: no subscription to {topic} "
                f"after {waited:.1f} s")
        channel.listeners = [*channel.listeners, listener]  # copy on write

    async def unlisten(self, topic: str, listener: Listener) -> None:
        channel = self._channels.get(topic)
        if channel is None:
            return
        channel.listeners = [x for x in channel.listeners if x is not listener]
        if not channel.listeners and channel.ready.done():
            await self._drop_channel(channel)

    async def _drop_channel(self, channel: _Channel) -> None:
        del self._channels[channel.topic]
        self._names.pop(channel.name, None)
        if not channel.ready.done():
            channel.ready.cancel()
        # The reader skips what still arrives on a channel it no longer knows: a call
        # waiting for its own echo there (the other leavers, when a node's clients leave a
        # topic together) would wait `timeout` for nothing. No listener is left to hand it
        # to, so it is done.
        for waiter in self._waiters.values():
            if waiter.channel is channel:
                waiter.done.set()
        assert self._sub_lock is not None
        async with self._sub_lock:
            if self._live and self._feed is not None:
                try:
                    await self._feed.unsubscribe(channel.name)
                except ERRORS:
                    pass  # the reader reconnects without it

    def _notify(self, channel: _Channel, event: Envelope | PresenceEvent) -> None:
        for listener in channel.listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("hub listener for topic %s failed", channel.topic)

    def _deliver(self, channel: _Channel, envelope: Envelope) -> None:
        if channel.delivered is not None and envelope.seq <= channel.delivered:
            return  # already delivered (caught up from the stream)
        channel.delivered = envelope.seq
        self._notify(channel, envelope)

    async def _catch_up(self, channel: _Channel) -> None:
        """Deliver what the stream holds after the last seq delivered. When the epoch
        changed: if a failover closed the old one at or after that seq, the same messages
        continue in the new epoch; if it closed before (the listeners saw messages that the
        new master lacks), from its end; after a reset, all of the new epoch."""
        result = await self.history(channel.topic, channel.delivered)
        if result.epoch != channel.epoch:
            end = result.closed.get(channel.epoch) if channel.epoch is not None else None
            delivered = channel.delivered or 0
            if end is not None and delivered <= end:
                channel.epoch = result.epoch
            else:
                if end is not None:
                    logger.warning("event=redis_failover_lost topic=%s epoch=%s from=%d to=%d",
                                   channel.topic, channel.epoch, end + 1, delivered)
                channel.epoch, channel.delivered = result.epoch, end or 0
                result = await self.history(channel.topic, channel.delivered)
        if result.gap:
            logger.warning("event=redis_feed_gap topic=%s from=%s to=%s", channel.topic,
                           (channel.delivered or 0) + 1, result.first - 1)
        for envelope in result.messages:
            self._deliver(channel, envelope)
        for waiter in self._waiters.values():  # publishes delivered by this catch-up
            if waiter.channel is channel:
                waiter.check()

    async def _subscribed(self, channel: _Channel) -> None:
        """The channel's SUBSCRIBE was confirmed: from here its messages arrive."""
        if channel.confirmed:
            return
        if channel.delivered is None:  # first subscription: start after the latest seq
            assert self._link is not None
            keys = self._keys(channel.topic, "epoch", "seq")
            epoch, seq = await self._link.command("MGET", *keys, key=keys[0])
            channel.epoch = epoch.decode() if epoch is not None else None
            channel.delivered = int(seq or 0)
        else:  # resubscribed after an outage: what was missed meanwhile, then live
            await self._catch_up(channel)
            members = await self.members(channel.topic)  # the changes missed: start over
            self._notify(channel, PresenceEvent(channel.topic, members=tuple(members)))
        channel.confirmed = True
        if not channel.ready.done():
            channel.ready.set_result(None)

    async def _received(self, channel: _Channel, payload: bytes) -> None:
        message = json.loads(payload)
        if "seq" in message:
            envelope = Envelope(channel.topic, message["seq"], message["epoch"],
                                message["data"], message["sender"], message["time"])
            if envelope.epoch != channel.epoch:  # a failover or a reset: see _catch_up
                await self._catch_up(channel)
            elif envelope.seq > (channel.delivered or 0) + 1:
                await self._catch_up(channel)  # not seen on the channel: from the stream
            self._deliver(channel, envelope)
        else:
            self._notify(channel, PresenceEvent(
                channel.topic, joined=message.get("joined"), left=message.get("left")))
        waiter = self._waiters.get(message["token"])
        if waiter is not None:
            waiter.seen += 1
            waiter.check()

    async def _read_forever(self) -> None:
        """The reader task: one pub/sub connection, reconnected with backoff."""
        delay = 0.05
        assert self._wakeup is not None
        while not self._closed:
            if not self._channels:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_CHECK_INTERVAL)
                except asyncio.TimeoutError:
                    if not await self._ping_idle():
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.max_retry_delay)
                continue
            try:
                await self._read_session()
            except (*ERRORS, BackendUnavailable) as exc:
                self._lost(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
            except Exception as exc:  # a bug: log it, start again on a new connection
                logger.exception("hub: the Redis reader failed")
                self._lost(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
            else:
                delay = 0.05

    async def _ping_idle(self) -> bool:
        """PING Redis while nothing is subscribed; whether it answered (an outage and its end
        are logged as the reader logs them)."""
        assert self._link is not None
        try:
            await self._link.ping()
        except ERRORS as exc:
            self._lost(exc)
            return False
        if self._down and not self._channels:
            self._down = False
            logger.warning("event=redis_reconnected url=%s", _safe_url(self.url))
        return True

    def not_ready(self) -> str | None:
        return "redis unreachable" if self._down else None

    def _lost(self, exc: BaseException) -> None:
        self._live = False
        for channel in self._channels.values():
            channel.confirmed = False
        for waiter in self._waiters.values():
            waiter.done.set()  # what they published comes through the catch-up
        if not self._down:
            self._down = True
            logger.warning("event=redis_unavailable url=%s error=\"%s\" action=reconnecting",
                           _safe_url(self.url), exc)

    async def _master_switched(self) -> None:
        """Sentinel named a new master: the live feed moves there (and catches up)."""
        self._switched = True

    async def _read_session(self) -> None:
        assert self._sub_lock is not None and self._link is not None
        feed = self._link.feed()
        self._feed = feed
        self._switched = False
        try:
            async with self._sub_lock:
                await feed.subscribe(*[c.name for c in self._channels.values()])
                self._live = True
            loop = asyncio.get_running_loop()
            heard = loop.time()
            pinged = False
            while not self._closed:
                if self._switched:
                    raise OSError("Sentinel named a new master")
                message = await feed.get(timeout=1.0)
                if message is None:
                    silence = loop.time() - heard
                    if silence > 2 * HEALTH_INTERVAL:
                        raise OSError(f"no answer from Redis for {silence:.0f} s")
                    if silence > HEALTH_INTERVAL and not pinged:
                        await feed.ping()
                        pinged = True
                    continue
                heard, pinged = loop.time(), False
                kind, name, data = message
                channel = self._names.get(name) if name is not None else None
                if channel is None:
                    continue  # unsubscribed meanwhile, or a pong
                if kind == "subscribe":
                    await self._subscribed(channel)
                    if self._down and all(c.confirmed for c in self._channels.values()):
                        self._down = False
                        logger.warning("event=redis_reconnected url=%s", _safe_url(self.url))
                elif kind == "unsubscribe":
                    # Not asked for (we forget a channel before unsubscribing it): Redis
                    # moved the slot away. The client library subscribes on the new owner;
                    # its confirmation catches up from the stream.
                    channel.confirmed = False
                elif kind == "message" and channel.confirmed:
                    await self._received(channel, data)
        finally:
            self._live = False
            self._feed = None
            await feed.close()

    # -- closing ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Remove this node's members (best effort), stop the live feed, close connections."""
        if self._closed:
            return
        local, self._local = self._local, {}
        if self._link is not None:
            try:
                await asyncio.wait_for(self._leave_all(local), self.timeout)
            except (BackendUnavailable, asyncio.TimeoutError):
                pass  # the other nodes publish their `left` within presence_ttl
        self._closed = True
        for task in (self._reader, self._refresher):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        for waiter in self._waiters.values():
            waiter.done.set()
        for channel in self._channels.values():
            if not channel.ready.done():
                channel.ready.cancel()
        self._channels.clear()
        self._names.clear()
        if self._link is not None:
            await self._link.close()

    async def _leave_all(self, local: dict[str, dict[str, str]]) -> None:
        for topic, members in local.items():
            for member_id in members:
                keys, args = self._presence_args(topic)
                await self._run("leave", keys, [*args, f"{self._node}:0", member_id])


def _closed(flat: Sequence[Any]) -> dict[str, int]:
    """The closed epochs from ``ZRANGE … WITHSCORES``: epoch -> its last seq."""
    if flat and isinstance(flat[0], (list, tuple)):  # RESP3 pairs
        return {member.decode(): int(float(score)) for member, score in flat}
    return {flat[i].decode(): int(float(flat[i + 1])) for i in range(0, len(flat), 2)}


def _envelope(topic: str, entry: Any) -> Envelope:
    """An envelope from a stream entry: ``[id, [field, value, ...]]``."""
    raw = entry[1]
    fields = {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}
    sender = fields.get(b"sender")
    return Envelope(topic, int(fields[b"seq"]), fields[b"epoch"].decode(),
                    json.loads(fields[b"data"]), None if sender is None else sender.decode(),
                    int(fields[b"time"]))
