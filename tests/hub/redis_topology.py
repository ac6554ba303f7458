"""Real Redis topologies for the hub tests, started from Debian's ``redis-server`` on free
loopback ports, each process in its own directory, stopped by its PID.

Two topologies, each a context manager that tears everything down, also when starting fails
halfway:

- :class:`SentinelSetup`: one master, ``replicas`` replicas and ``sentinels`` sentinels
  (``redis-server --sentinel``) watching it under one service name.
  :meth:`~SentinelSetup.fail_over` SIGKILLs the master, waits until a majority of the
  sentinels name a new one, then until they all agree and its replicas are in sync;
  :meth:`~SentinelSetup.restart` brings a killed node back as a replica.
- :class:`ClusterSetup`: a Redis Cluster of ``masters`` shards with ``replicas`` replicas
  each, created with ``redis-cli --cluster create``. :meth:`~ClusterSetup.fail_over`
  SIGKILLs one shard's master and waits until its replica serves the shard's slots and the
  cluster is ``ok`` again; :meth:`~ClusterSetup.migrate_slot` moves a slot as resharding
  does.

:meth:`RedisProcess.pause` / :meth:`~RedisProcess.resume` (SIGSTOP / SIGCONT) freeze a node,
e.g. replicas, so that a master's last writes never reach them before it dies.

Measured here (Redis 7.0.15, 2 CPUs): a Sentinel setup starts in 2.3-2.4 s (the sentinels
find each other through 2 s hello messages); a new master is named 2.1-2.4 s after the
SIGKILL (6.2 s when the first leader election splits) and all has settled about 4.2 s after
it. A 3+3 cluster starts in 2.1-2.2 s and is ``ok`` again 1.8-2.7 s after a master's
SIGKILL (``cluster-node-timeout`` 1000 ms). ``python -m tests.hub.redis_topology`` prints
these timings again.

No Redis client library is needed: the few commands these helpers send go through
:func:`command`, a blocking RESP2 exchange over one short-lived socket. Every wait is
bounded by a ``timeout`` argument (seconds, multiples of ``UNIT`` by default) and raises
:class:`TopologyError` with what it was waiting for when it runs out. Processes still
running when the interpreter exits (a test run interrupted between a start and its stop)
are SIGKILLed by an ``atexit`` hook.

Usage, in a test (the fixtures of ``conftest.py`` do this)::

    with SentinelSetup(tmp_path) as setup:        # started; stopped on exit
        backend = RedisBackend(setup.url)         # redis+sentinel://127.0.0.1:p1,.../mymaster/0
        ...
        old, new, seconds = setup.fail_over()     # SIGKILL the master, wait for the promotion
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

from ..asyncio.conftest import UNIT

__all__ = [
    "HOST",
    "SERVICE",
    "TopologyError",
    "ReplyError",
    "command",
    "free_port",
    "RedisProcess",
    "SentinelSetup",
    "ClusterSetup",
    "ClusterNode",
]

HOST = "127.0.0.1"
SERVICE = "mymaster"

# Default bounds (seconds), scaled with TETHER_TESTS_TIMEOUT_FACTOR like every test timeout.
COMMAND_TIMEOUT = 10 * UNIT  # one command's round trip
PROCESS_TIMEOUT = 100 * UNIT  # one process starting (answering PING) or being reaped
TOPOLOGY_TIMEOUT = 300 * UNIT  # a topology starting, failing over, settling

T = TypeVar("T")
SetupT = TypeVar("SetupT", bound="_Topology")


class TopologyError(RuntimeError):
    """A topology did not start, or did not reach the awaited state in time."""


class ReplyError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``)."""


# -- a minimal RESP2 client ------------------------------------------------------------------


def _encode(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read(stream: BinaryIO) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by Redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ReplyError(rest.decode())  # returned, not raised: it may sit in an array
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed by Redis")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply {line[:40]!r}")


def command(port: int, *args: Any, timeout: float = COMMAND_TIMEOUT) -> Any:
    """Send one command to the Redis (or sentinel) on ``127.0.0.1:port``.

    Args:
        port: where it listens.
        *args: the command and its arguments (``str(arg)`` unless bytes).
        timeout: bound on connecting and on each read, in seconds.

    Returns:
        The reply, with bulk strings decoded as UTF-8 and arrays as lists (an error inside
        an array stays there as a :class:`ReplyError` instance).

    Raises:
        ReplyError: Redis answered with an error.
        OSError: nothing listens there, or no answer within ``timeout``.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as stream:
            reply = _read(stream)
    if isinstance(reply, ReplyError):
        raise reply
    return reply


def _fields(text: str) -> dict[str, str]:
    """``key:value`` lines (``INFO``, ``CLUSTER INFO``) as a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields[key] = value
    return fields


def _info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` as a dict of its ``key:value`` lines."""
    return _fields(command(port, "INFO", section))


def _pairs(reply: list[Any]) -> dict[str, Any]:
    """A flat [key, value, key, value...] reply as a dict."""
    return dict(zip(reply[::2], reply[1::2]))


def _until(what: str, check: Callable[[], T | None], timeout: float,
           interval: float = UNIT / 2) -> T:
    """Poll ``check`` until it returns something other than None.

    Args:
        what: what is awaited, for the error message.
        check: returns None while waiting; OSError and ReplyError count as None (a process
            starting or stopping). Any other exception propagates.
        timeout: seconds.
        interval: seconds between two checks.

    Returns:
        The first value of ``check`` that is not None.

    Raises:
        TopologyError: ``timeout`` seconds passed first; the message says ``what``.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value is not None:
                return value
        except (OSError, ReplyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last})" if last is not None else ""
            raise TopologyError(f"{what}: not after {timeout:.1f} s{detail}")
        time.sleep(interval)


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, at least a little (a last check still runs)."""
    return max(deadline - time.monotonic(), UNIT)


_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on now, never the same twice in this process (a
    topology asks for several before starting any server)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


# -- one process -----------------------------------------------------------------------------

_running: dict[int, RedisProcess] = {}  # by PID: what the atexit hook kills


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_running.values()):
        try:
            process.kill()
        except (OSError, TopologyError):
            pass


class RedisProcess:
    """One ``redis-server`` (or sentinel) on ``127.0.0.1:port``, its files (config, log,
    data) in ``directory``. Started and stopped by its PID; :meth:`start` again after a
    :meth:`kill` restarts it on the same port and directory.

    Args:
        name: for messages ("master", "replica-1", "sentinel-2", "node-4").
        directory: its own directory (created).
        port: the port it listens on.
        config: lines of its configuration file (written at each start; a sentinel
            rewrites its file, so it is written only when missing).
        sentinel: run as a sentinel (``--sentinel``).
    """

    def __init__(self, name: str, directory: Path, port: int, config: list[str],
                 sentinel: bool = False) -> None:
        self.name = name
        self.directory = directory
        self.port = port
        self.config = config
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<RedisProcess {self.name} port={self.port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        """Its PID while started (also when it has exited since), else None."""
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        """Started and not exited (a paused process is alive)."""
        return self.process is not None and self.process.poll() is None

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout: float = PROCESS_TIMEOUT) -> None:
        """Start it and wait until it answers PING; killed again if it does not.

        Args:
            timeout: seconds to wait for its PONG.

        Raises:
            TopologyError: it is running already, it exited (its port taken meanwhile,
                say; the message ends with its log), or it did not answer within
                ``timeout``.
        """
        if self.alive:
            raise TopologyError(f"{self.name} is running already (pid {self.pid})")
        self.kill()  # reap an exited one
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        if not (self.sentinel and conf.exists()):
            conf.write_text("\n".join([
                f"port {self.port}", f"bind {HOST}", f'dir "{self.directory}"',
                f'logfile "{self.log}"', "protected-mode no", 'save ""', *self.config, ""]))
        argv = ["redis-server", str(conf), *(["--sentinel"] if self.sentinel else [])]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, cwd=self.directory)
        _running[self.process.pid] = self

        def answers() -> bool | None:
            if not self.alive:
                raise TopologyError(f"{self.name} exited at start; the end of {self.log}:\n"
                                    + self._log_tail())
            return True if command(self.port, "PING", timeout=UNIT * 5) == "PONG" else None

        try:
            _until(f"{self.name} answering on port {self.port}", answers, timeout)
        except BaseException:
            self.kill()
            raise

    def kill(self, sig: int = signal.SIGKILL, timeout: float = PROCESS_TIMEOUT) -> None:
        """Send ``sig`` to its PID and reap it; nothing when it is not started.

        Args:
            sig: SIGKILL (a crash) or SIGTERM (a clean stop; a paused process is resumed
                so that it can act on it). SIGKILL follows when it has not exited within
                ``timeout``.
            timeout: seconds to wait for it to exit.

        Raises:
            TopologyError: it did not exit even after SIGKILL.
        """
        if self.process is None:
            return
        process = self.process
        if process.poll() is None:
            try:
                os.kill(process.pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    raise TopologyError(f"{self.name} (pid {process.pid}) survived SIGKILL "
                                        f"for {timeout:.1f} s") from None
        _running.pop(process.pid, None)
        self.process = None

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM; SIGKILL if it takes too long)."""
        self.kill(signal.SIGTERM)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): it neither answers nor replicates until :meth:`resume`."""
        if self.process is not None and self.alive:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a frozen process run again (SIGCONT)."""
        if self.process is not None and self.alive:
            os.kill(self.process.pid, signal.SIGCONT)

    def command(self, *args: Any, timeout: float = COMMAND_TIMEOUT) -> Any:
        """:func:`command` on this process's port."""
        return command(self.port, *args, timeout=timeout)

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class _Topology:
    """What both topologies share: their processes, and tearing them all down."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            raise TopologyError("redis-server is not installed")
        self.directory = directory
        self.processes: list[RedisProcess] = []
        self.startup_seconds: float | None = None  # how long start() took

    def _process(self, name: str, config: list[str], sentinel: bool = False) -> RedisProcess:
        process = RedisProcess(name, self.directory / name, free_port(), config, sentinel)
        self.processes.append(process)
        return process

    def start(self, timeout: float = TOPOLOGY_TIMEOUT) -> None:
        """Start every process and wait until the topology is ready; on failure, stop what
        was started (by PID) and raise.

        Args:
            timeout: seconds for the whole start.

        Raises:
            TopologyError: a process failed to start, or the topology was not ready within
                ``timeout``.
        """
        started = time.monotonic()
        try:
            self._start(started + timeout)
        except BaseException:
            try:
                self.stop()
            except Exception:  # noqa: BLE001: the first error is the one to report
                pass
            raise
        self.startup_seconds = time.monotonic() - started

    def _start(self, deadline: float) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGKILL every process still running, each by its PID (nothing here needs a clean
        shutdown; a sentinel would only rewrite its config). Paused ones too.

        Raises:
            TopologyError: a process could not be reaped (the others were still killed).
        """
        failures = []
        for process in self.processes:
            try:
                process.kill()
            except (OSError, TopologyError) as exc:
                failures.append(f"{process.name}: {exc}")
        if failures:
            raise TopologyError("could not stop " + "; ".join(failures))

    def __enter__(self: SetupT) -> SetupT:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


# -- Sentinel ---------------------------------------------------------------------------------


class SentinelSetup(_Topology):
    """One master, its replicas, and sentinels watching it as ``service``.

    Args:
        directory: where each process gets its subdirectory.
        replicas: replicas of the master (2).
        sentinels: sentinel processes (3).
        quorum: sentinels that must agree the master is down (2).
        service: the master's name at the sentinels.
        down_after_ms: silence after which a sentinel deems the master down (1000 ms).
        failover_timeout_ms: Sentinel's failover-timeout (2000 ms; also the wait before a
            failed failover is tried again, times two).
        appendonly: AOF on every data node (``appendfsync always``).
        extra_config: more lines for every data node's configuration.

    Attributes:
        master: the data node that is master now (updated by :meth:`wait_for_new_master`
            and :meth:`wait_settled`).
        replicas: the other data nodes (a killed one included).
        sentinels: the sentinel processes.
    """

    def __init__(self, directory: Path, *, replicas: int = 2, sentinels: int = 3,
                 quorum: int = 2, service: str = SERVICE, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 2000, appendonly: bool = False,
                 extra_config: list[str] | None = None) -> None:
        super().__init__(directory)
        self.service = service
        self.quorum = quorum
        data = [*(["appendonly yes", "appendfsync always"] if appendonly else []),
                # A replica's first sync: no 5 s wait for more replicas to share it.
                "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
                *(extra_config or [])]
        self.master = self._process("master", data)
        self.replicas = [
            self._process(f"replica-{n}", [*data, f"replicaof {HOST} {self.master.port}"])
            for n in range(1, replicas + 1)]
        watch = [f"sentinel monitor {service} {HOST} {self.master.port} {quorum}",
                 f"sentinel down-after-milliseconds {service} {down_after_ms}",
                 f"sentinel failover-timeout {service} {failover_timeout_ms}",
                 f"sentinel parallel-syncs {service} {max(replicas, 1)}"]
        self.sentinels = [self._process(f"sentinel-{n}", watch, sentinel=True)
                          for n in range(1, sentinels + 1)]

    @property
    def data_nodes(self) -> list[RedisProcess]:
        """The master and its replicas."""
        return [self.master, *self.replicas]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [s.address for s in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,.../service/0``."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def _start(self, deadline: float) -> None:
        for process in self.data_nodes:
            process.start(_left(deadline))
        _until("replicas in sync", lambda: True if self.replicas_in_sync() else None,
               _left(deadline))
        for sentinel in self.sentinels:
            sentinel.start(_left(deadline))
        # Ready when each sentinel knows the others and every replica (they learn them
        # from the master's INFO and from hello messages, every 1-2 s), so that a failover
        # asked for now can happen.
        others, replicas = len(self.sentinels) - 1, len(self.replicas)

        def acquainted() -> bool | None:
            for sentinel in self.sentinels:
                state = _pairs(sentinel.command("SENTINEL", "MASTER", self.service))
                if (int(state["num-other-sentinels"]) < others
                        or int(state["num-slaves"]) < replicas):
                    return None
                sentinel.command("SENTINEL", "CKQUORUM", self.service)  # ReplyError: not yet
            return True

        _until("sentinels knowing each other and the replicas", acquainted, _left(deadline))

    def replicas_in_sync(self) -> bool:
        """Whether every live replica's link to the master is up and its offset equals the
        master's."""
        master = _info(self.master.port, "replication")
        if master.get("role") != "master":
            return False
        offset = master["master_repl_offset"]
        for replica in self.replicas:
            if not replica.alive:
                continue
            info = _info(replica.port, "replication")
            if (info.get("master_port") != str(self.master.port)
                    or info.get("master_link_status") != "up"
                    or info.get("slave_repl_offset") != offset):
                return False
        return True

    def master_address(self, sentinel: RedisProcess) -> tuple[str, int] | None:
        """The master as one sentinel names it now (``GET-MASTER-ADDR-BY-NAME``)."""
        reply = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return None if reply is None else (reply[0], int(reply[1]))

    def kill_master(self) -> RedisProcess:
        """SIGKILL the master (a crash). It stays :attr:`master` until
        :meth:`wait_for_new_master` finds its successor.

        Returns:
            The killed process.
        """
        old = self.master
        old.kill(signal.SIGKILL)
        return old

    def wait_for_new_master(self, old: RedisProcess,
                            timeout: float = TOPOLOGY_TIMEOUT) -> RedisProcess:
        """Wait until a majority of the sentinels name a master other than ``old`` and that
        node says ``ROLE`` master; make it :attr:`master` and the others :attr:`replicas`.

        A majority, not all: after two failovers in a row one sentinel was seen naming the
        dead master for more than 20 s while the two others had switched (clients skip it:
        it reports that master down).

        Args:
            old: the master that failed.
            timeout: seconds.

        Returns:
            The new master.

        Raises:
            TopologyError: no promotion within ``timeout``.
        """
        by_port = {p.port: p for p in self.data_nodes}
        majority = len(self.sentinels) // 2 + 1

        def promoted() -> RedisProcess | None:
            named = Counter(self.master_address(s) for s in self.sentinels if s.alive)
            if not named:
                return None
            address, votes = named.most_common(1)[0]
            if address is None or address[1] == old.port or votes < majority:
                return None
            new = by_port.get(address[1])
            if new is None:
                raise TopologyError(f"the sentinels name an unknown master {address}")
            return new if new.command("ROLE")[0] == "master" else None

        new = _until(f"a master other than {old.name} named by a majority of sentinels",
                     promoted, timeout)
        self.master = new
        self.replicas = [p for p in by_port.values() if p is not new]
        return new

    def fail_over(self, timeout: float = TOPOLOGY_TIMEOUT
                  ) -> tuple[RedisProcess, RedisProcess, float]:
        """SIGKILL the master, wait for the sentinels' choice of a new one, then for the
        topology to settle (:meth:`wait_settled`).

        Args:
            timeout: seconds for both waits together.

        Returns:
            (old master, settled master, seconds from the kill to a majority of sentinels
            naming a new master).

        Raises:
            TopologyError: not promoted or not settled within ``timeout``.
        """
        started = time.monotonic()
        deadline = started + timeout
        old = self.kill_master()
        self.wait_for_new_master(old, timeout)
        seconds = time.monotonic() - started
        return old, self.wait_settled(_left(deadline)), seconds

    def wait_settled(self, timeout: float = TOPOLOGY_TIMEOUT) -> RedisProcess:
        """Wait until every live sentinel names the same master with no failover in
        progress, that node says ``ROLE`` master, and every live replica replicates from
        it in sync; make it :attr:`master` and return it. This is the state in which the
        next failover starts cleanly.

        It may not be the node :meth:`wait_for_new_master` returned: a few times in about
        100 back-to-back failovers here (Redis 7.0.15, failover-timeout 2 s to 10 s), a
        second failover by another sentinel, in a later epoch, followed the first within
        seconds.

        Args:
            timeout: seconds.

        Returns:
            The master.

        Raises:
            TopologyError: not settled within ``timeout``; the message says what was
                still wrong.
        """
        by_port = {p.port: p for p in self.data_nodes}
        waiting = ["nothing checked yet"]

        def settled() -> RedisProcess | None:
            named: set[int] = set()
            for sentinel in self.sentinels:
                if not sentinel.alive:
                    continue
                state = _pairs(sentinel.command("SENTINEL", "MASTER", self.service))
                if state["flags"] != "master":
                    waiting[0] = f"{sentinel.name}: master flags {state['flags']}"
                    return None
                named.add(int(state["port"]))
                replicas = {int(_pairs(r)["port"]): _pairs(r)["flags"] for r in
                            sentinel.command("SENTINEL", "REPLICAS", self.service)}
                late = {port: replicas.get(port) for port in by_port
                        if by_port[port].alive and port != int(state["port"])
                        and replicas.get(port) != "slave"}
                if late:
                    waiting[0] = f"{sentinel.name} sees replicas {late}"
                    return None
            if len(named) != 1:
                waiting[0] = f"the sentinels name masters on ports {sorted(named)}"
                return None
            master = by_port[named.pop()]
            if master.command("ROLE")[0] != "master":
                waiting[0] = f"{master.name} is not a master yet"
                return None
            self.master = master
            self.replicas = [p for p in by_port.values() if p is not master]
            if not self.replicas_in_sync():
                waiting[0] = "replicas not in sync"
                return None
            return master

        try:
            return _until("sentinels settled on one master, its replicas in sync", settled,
                          timeout)
        except TopologyError as exc:
            raise TopologyError(f"{exc}: {waiting[0]}") from None

    def restart(self, process: RedisProcess, timeout: float = TOPOLOGY_TIMEOUT) -> None:
        """Start a killed data node again, on its port and directory, as a replica of the
        current master (as Sentinel would reconfigure it, without the up to 10 s it takes
        to notice a restarted old master that came back as an empty master), and wait
        until the topology has settled (:meth:`wait_settled`).

        Args:
            process: one of :attr:`data_nodes`, not running.
            timeout: seconds for the start and the settling together.

        Raises:
            TopologyError: it did not start, or the topology did not settle in time.
        """
        deadline = time.monotonic() + timeout
        process.config = [line for line in process.config if not line.startswith("replicaof")]
        if process is not self.master:
            process.config.append(f"replicaof {HOST} {self.master.port}")
        process.start(_left(deadline))
        self.wait_settled(_left(deadline))


# -- Cluster ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``: a node as the cluster sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    link: str
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?"})


def _cluster_nodes(port: int) -> list[ClusterNode]:
    nodes = []
    for line in command(port, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        slots = []
        for part in fields[8:]:
            if part.startswith("["):
                continue  # a slot being migrated or imported
            low, _, high = part.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(ClusterNode(
            id=fields[0], port=int(fields[1].split("@")[0].rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3], link=fields[7],
            slots=tuple(slots)))
    return nodes


class ClusterSetup(_Topology):
    """A Redis Cluster on loopback: ``masters`` shards, ``replicas`` replicas each.

    Args:
        directory: where each node gets its subdirectory.
        masters: shards (3: the fewest ``redis-cli --cluster create`` accepts).
        replicas: replicas per master (1).
        node_timeout_ms: ``cluster-node-timeout``: silence after which a node is deemed
            failing, hence most of a failover's duration (1000 ms).
        appendonly: AOF on every node (``appendfsync always``).
        extra_config: more lines for every node's configuration (e.g.
            ``cluster-require-full-coverage no``: other shards keep serving while one fails
            over).

    Attributes:
        nodes: every node's process, in the order given to ``--cluster create`` (redis-cli
            makes the first ``masters`` nodes masters).
    """

    def __init__(self, directory: Path, *, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000, appendonly: bool = False,
                 extra_config: list[str] | None = None) -> None:
        super().__init__(directory)
        if shutil.which("redis-cli") is None:
            raise TopologyError("redis-cli is not installed (it creates the cluster)")
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        config = ["cluster-enabled yes", "cluster-config-file nodes.conf",
                  f"cluster-node-timeout {node_timeout_ms}",
                  *(["appendonly yes", "appendfsync always"] if appendonly else []),
                  "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
                  *(extra_config or [])]
        self.nodes: list[RedisProcess] = []
        for n in range(masters * (1 + replicas)):
            # The cluster bus port is chosen too (cluster-port, Redis >= 7), rather than
            # left at port + 10000, which may be taken or past 65535.
            self.nodes.append(self._process(f"node-{n + 1}",
                                            [*config, f"cluster-port {free_port()}"]))

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [n.address for n in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,.../``: every node, any would do."""
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes) + "/"

    def _start(self, deadline: float) -> None:
        for node in self.nodes:
            node.start(_left(deadline))
        try:
            create = subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *(f"{HOST}:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
                capture_output=True, text=True, timeout=_left(deadline),
                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:  # run() killed and reaped it
            raise TopologyError(f"redis-cli --cluster create: not done after "
                                f"{exc.timeout:.1f} s") from None
        if create.returncode != 0:
            raise TopologyError("redis-cli --cluster create failed:\n"
                                + (create.stdout + create.stderr)[-2000:])
        self.wait_ok(_left(deadline))

    def _live_port(self) -> int:
        for node in self.nodes:
            if node.alive:
                return node.port
        raise TopologyError("no cluster node is running")

    def view(self) -> list[ClusterNode]:
        """``CLUSTER NODES`` as seen by the first live node that answers.

        Raises:
            TopologyError: none answers.
        """
        for node in self.nodes:
            if node.alive:
                try:
                    return _cluster_nodes(node.port)
                except (OSError, ReplyError):
                    continue
        raise TopologyError("no live cluster node answers")

    def process(self, node: ClusterNode) -> RedisProcess:
        """The process of a node of :meth:`view`."""
        for process in self.nodes:
            if process.port == node.port:
                return process
        raise TopologyError(f"no process on port {node.port}")

    def masters(self) -> list[ClusterNode]:
        """The masters serving slots now, by their first slot."""
        return sorted((n for n in self.view() if n.is_master and n.slots and not n.failed),
                      key=lambda n: n.slots[0][0])

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The nodes that replicate ``master`` now."""
        return [n for n in self.view() if n.master_id == master.id]

    def master_for_slot(self, slot: int) -> ClusterNode:
        """The master serving ``slot``.

        Raises:
            TopologyError: none does.
        """
        for node in self.masters():
            if any(low <= slot <= high for low, high in node.slots):
                return node
        raise TopologyError(f"no master serves slot {slot}")

    def slot(self, key: str) -> int:
        """The key's hash slot, as the cluster computes it (``CLUSTER KEYSLOT``)."""
        return int(command(self._live_port(), "CLUSTER", "KEYSLOT", key))

    def wait_ok(self, timeout: float = TOPOLOGY_TIMEOUT) -> None:
        """Wait until every live node says ``cluster_state:ok``, all agree on every node not
        failed (which is master, of which slots; which replicates which: gossip spreads a
        new replica's role a little after its link is up), and every replica's link is up.

        Args:
            timeout: seconds.

        Raises:
            TopologyError: not so within ``timeout``.
        """
        def ok() -> bool | None:
            views = []
            for node in self.nodes:
                if not node.alive:
                    continue
                if _fields(node.command("CLUSTER", "INFO")).get("cluster_state") != "ok":
                    return None
                views.append({(n.port, n.is_master, n.master_id, n.slots)
                              for n in _cluster_nodes(node.port) if not n.failed})
            if not views or any(v != views[0] for v in views):
                return None
            for node in self.nodes:
                if not node.alive:
                    continue
                info = _info(node.port, "replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return None
            return True

        _until("cluster state ok on every live node", ok, timeout)

    def kill_master(self, index: int = 0) -> ClusterNode:
        """SIGKILL the master of the ``index``-th shard (by first slot).

        Returns:
            That master as the cluster saw it before.
        """
        victim = self.masters()[index]
        self.process(victim).kill(signal.SIGKILL)
        return victim

    def wait_promoted(self, old: ClusterNode, timeout: float = TOPOLOGY_TIMEOUT
                      ) -> ClusterNode:
        """Wait until another node (a former replica of ``old``) serves ``old``'s slots and
        the cluster is ok (:meth:`wait_ok`).

        Args:
            old: a master that failed, as :meth:`kill_master` returned it.
            timeout: seconds for both waits together.

        Returns:
            The new master, as the cluster sees it.

        Raises:
            TopologyError: no promotion within ``timeout``.
        """
        deadline = time.monotonic() + timeout

        def promoted() -> ClusterNode | None:
            for node in self.masters():
                if node.port != old.port and node.slots == old.slots:
                    return node
            return None

        new = _until(f"a replica of port {old.port} serving its slots", promoted, timeout)
        self.wait_ok(_left(deadline))
        return new

    def migrate_slot(self, slot: int, target_port: int, pause: float = 0.0,
                     timeout: float = TOPOLOGY_TIMEOUT) -> dict[str, float]:
        """Move one slot to another master the way ``redis-cli --cluster reshard`` does:
        IMPORTING on the target, MIGRATING on the source, MIGRATE each key, then SETSLOT
        NODE on every master.

        Args:
            slot: the slot.
            target_port: the master that gets it.
            pause: seconds between two keys, to keep the slot half-moved for a while
                (clients meet ASK and TRYAGAIN meanwhile).
            timeout: seconds for moving the keys.

        Returns:
            ``migrating``: the seconds the slot was migrating; ``done``: the monotonic time
            it was done.

        Raises:
            TopologyError: the slot is already there, the target is not a master, or the
                keys were not moved within ``timeout``.
            ReplyError: a SETSLOT or MIGRATE failed.
        """
        source = self.master_for_slot(slot)
        target = next((n for n in self.masters() if n.port == target_port), None)
        if target is None:
            raise TopologyError(f"no master serving slots on port {target_port}")
        if source.port == target.port:
            raise TopologyError(f"slot {slot} is already on port {target_port}")
        command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
        command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
        started = time.monotonic()
        deadline = started + timeout
        while True:
            names = command(source.port, "CLUSTER", "GETKEYSINSLOT", slot, 1)
            if not names:
                break
            command(source.port, "MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *names,
                    timeout=60 * UNIT)
            if time.monotonic() > deadline:
                raise TopologyError(f"slot {slot}: keys still migrating after {timeout} s")
            time.sleep(pause)
        for node in [target, source, *(n for n in self.masters()
                                       if n.port not in (source.port, target.port))]:
            command(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target.id)
        done = time.monotonic()
        return {"migrating": done - started, "done": done}

    def fail_over(self, index: int = 0, timeout: float = TOPOLOGY_TIMEOUT
                  ) -> tuple[ClusterNode, ClusterNode, float]:
        """SIGKILL a shard's master and wait for its replica's promotion and the cluster
        state ok.

        Args:
            index: the shard, by first slot.
            timeout: seconds.

        Returns:
            (old master, new master, seconds from the kill to cluster ok).

        Raises:
            TopologyError: no promotion within ``timeout``.
        """
        started = time.monotonic()
        old = self.kill_master(index)
        new = self.wait_promoted(old, timeout)
        return old, new, time.monotonic() - started


if __name__ == "__main__":
    # The timings of the module docstring: python -m tests.hub.redis_topology [runs]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tether-topology-") as tmp:
        for run in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
            with SentinelSetup(Path(tmp) / f"sentinel-{run}") as sentinels:
                seconds = sentinels.fail_over()[2]
                print(f"sentinel: started in {sentinels.startup_seconds:.2f} s, new master "
                      f"{seconds:.2f} s after the SIGKILL", flush=True)
            with ClusterSetup(Path(tmp) / f"cluster-{run}") as cluster:
                seconds = cluster.fail_over()[2]
                print(f"cluster:  started in {cluster.startup_seconds:.2f} s, replica "
                      f"promoted and cluster ok {seconds:.2f} s after the SIGKILL", flush=True)
