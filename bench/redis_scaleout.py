#!/usr/bin/env python3
"""Publishes/s and deliveries/s through 2 tether nodes on each of the Redis backend's modes,
side by side in one run: a single Redis, Sentinel (min-replicas 0 and 1: the cost of the
guarantee) and a 3-shard Redis Cluster (min-replicas 0 and 1), with the publish latency as
the publisher sees it, loaded and alone. Run from the checkout root:

    python bench/redis_scaleout.py [--rounds 7] [--configs single,sentinel-1] [--json FILE]

The topologies start once per run, from Debian's redis-server, with the helpers of the tests
(tests/hub/redis_topology.py): one Redis; a master, 2 replicas and 3 sentinels; 3 masters
and 3 replicas in a cluster (`redis-cli --cluster create`). No persistence anywhere (no AOF,
no RDB), the same settings on every data node. Then, rounds interleaved (the configurations'
order rotates each round; every run uses a fresh key prefix and fresh nodes):

  nodes       two hub processes (this file, `--serve`), each tether.hub.Hub(RedisBackend(url,
              min_replicas=N)) behind tether.serve, on uvloop (tether.run), as `tether chat
              --redis URL --redis-min-replicas N` builds them, with presence off and no replay
              on subscribe (neither is what is measured; both would add frames to count).
              A connection to /pub/<topic> is subscribed to that topic; each connection to
              /sub to the next of the T topics in turn.
  subscribers one C load generator per node (bench/loadgen.c, `broadcast`): T x S connections
              to /sub, S per topic per node; it checks that every subscriber got every message.
  publishers  one client process (this file, `--publish`; tether's callback API, uvloop):
              one connection per topic per node (2 x T), each publishing with `--window`
              publishes in flight (the hub protocol's `publish` with an `id`, answered by
              `ack`). So every topic has publishers and subscribers on both nodes, and each
              publish goes to 2 x (S + 1) connections (the publishers get their own topic's
              messages too: the protocol wants a publisher subscribed). Phases: a warm-up of
              `--warmup` publishes per connection; the probe, `--probe` publishes one at a
              time with nothing else in flight (half from each node); then `--messages`
              measured publishes per connection, all connections at once.

Figures (per run, then the median and range over rounds):
  publishes/s       measured publishes / (last ack - first measured send)
  deliveries/s      measured publishes x 2(S+1) / (the later of: the last ack, the moment the
                    last load generator had every message - the first measured send)
  p50, p99 loaded   the round trip of each measured publish, send -> ack, in the publisher:
                    with 2 x T x window in flight it is mostly queueing (in flight / rate)
  p50, p99 alone    the same for the probe's publishes: what one publish costs in time
  node CPU          utime + stime (/proc/<pid>/stat) of both nodes over the measured window,
                    per publish, per delivery, and as cores busy (with the kernel's share)
  Redis CPU         the same, summed over every process of the topology (sentinels too),
                    per publish
  client CPU        the same for the publisher process and both load generators: the notes
                    compare it with the nodes', say how busy the first CPU was, and how much
                    else ran on the machine meanwhile (/proc/stat less our processes)

Pinning (when there are >= 2 CPUs): both nodes on the second CPU (they share it: this shows
what each mode costs per message, not extra capacity), everything else (Redis processes,
load generators, publisher) on the first. Every process is started by this script and
stopped by its PID. Exit status 1 if a run failed (the others still run).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from echo import HOST, background_load, build_loadgen, pick_cpus, proc_cpu_seconds  # noqa: E402
from hub_scaleout import Lines, cpu_s, load_generator_results  # noqa: E402  (child processes read line by line)

# (key, label, mode, min_replicas)
CONFIGS = [
    ("single", "single Redis", "single", 0),
    ("sentinel-0", "Sentinel, min-replicas 0", "sentinel", 0),
    ("sentinel-1", "Sentinel, min-replicas 1", "sentinel", 1),
    ("cluster-0", "Cluster 3 shards, min-replicas 0", "cluster", 0),
    ("cluster-1", "Cluster 3 shards, min-replicas 1", "cluster", 1),
]
LABELS = {key: label for key, label, _, _ in CONFIGS}

# --------------------------------------------------------------------------
# a node (its own process)


async def serve_node(args: argparse.Namespace) -> None:
    import asyncio

    import tether
    from tether.hub import Hub
    from tether.hub.redis import RedisBackend

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # presence_ttl: the refresh (one Lua call per member every ttl/3) stays out of the run.
    backend = RedisBackend(args.redis, key_prefix=args.prefix, presence_ttl=3600.0,
                           min_replicas=args.min_replicas)
    await backend.connect()
    hub = Hub(backend, history_limit=0, presence=False)
    turn = itertools.count()

    async def handler(ws: Any) -> None:
        path = ws.request.path
        if path.startswith("/pub/"):
            await hub.serve(ws, "publisher", subscribe=[path[len("/pub/"):]])
        else:
            await hub.serve(ws, "subscriber", subscribe=[f"t{next(turn) % args.topics}"])

    await tether.serve(handler, HOST, args.port, compression=None, ping_interval=None,
                       ping_timeout=None, backlog=4096)
    print("ready", flush=True)

    def live() -> int:  # benchmark only: subscribers past their (empty) replay
        return sum(1 for fan in hub._topics.values() for s in fan.subscribers
                   if s.held is None)

    expected = args.topics * (args.subs + 1)
    deadline = time.monotonic() + 90
    while live() < expected:
        if time.monotonic() > deadline:
            print(f"{live()} of {expected} subscribers live after 90 s", file=sys.stderr,
                  flush=True)
            return
        await asyncio.sleep(0.01)
    print("subscribed", flush=True)
    await asyncio.sleep(900)  # until the driver stops us (bounded if it died)


# --------------------------------------------------------------------------
# the publisher client (its own process)


async def run_publisher(args: argparse.Namespace) -> None:
    import asyncio

    import tether

    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR2, go.set)
    payload = json.dumps({"text": "x" * args.size})

    class Conn:
        def __init__(self, ws: Any, topic: str) -> None:
            self.ws = ws
            self.topic = topic
            self.head = '{"type":"publish","id":"'
            self.tail = f'","topic":"{topic}","data":{payload}}}'
            self.subscribed = loop.create_future()
            self.messages = 0
            self.errors: list[str] = []
            self.n = 0
            self.pending: dict[str, int] = {}
            self.to_send = self.to_ack = 0
            self.lat: list[int] | None = None
            self.done: asyncio.Future[None] | None = None

        def start(self, count: int, window: int, lat: list[int] | None
                  ) -> asyncio.Future[None]:
            self.to_send = self.to_ack = count
            self.lat = lat
            self.done = loop.create_future()
            for _ in range(min(window, count)):
                self.send()
            return self.done

        def send(self) -> None:
            self.n += 1
            key = str(self.n)
            self.to_send -= 1
            self.pending[key] = time.perf_counter_ns()
            self.ws.send_nowait(self.head + key + self.tail)

        def acked(self, key: str) -> None:
            sent = self.pending.pop(key)
            if self.lat is not None:
                self.lat.append(time.perf_counter_ns() - sent)
            self.to_ack -= 1
            if self.to_send:
                self.send()
            elif not self.to_ack and self.done is not None and not self.done.done():
                self.done.set_result(None)

    conns: dict[Any, Conn] = {}

    class Client(tether.Listener):
        def on_open(self, ws: Any) -> None:
            conns[ws] = Conn(ws, ws.request.path[len("/pub/"):])

        def on_message(self, ws: Any, message: Any) -> None:
            conn = conns[ws]
            if message.startswith('{"type":"message"'):
                conn.messages += 1
            elif message.startswith('{"type":"ack"'):
                conn.acked(json.loads(message)["id"])
            elif message.startswith('{"type":"subscribed"'):
                if not conn.subscribed.done():
                    conn.subscribed.set_result(None)
            else:  # an error (`unavailable`: e.g. not confirmed by the replicas in time)
                conn.errors.append(message[:300])
                if conn.done is not None and not conn.done.done():
                    conn.done.set_exception(RuntimeError(f"{conn.topic}: {message[:300]}"))

        def on_close(self, ws: Any) -> None:
            conn = conns.get(ws)
            if conn is not None and conn.done is not None and not conn.done.done():
                conn.done.set_exception(RuntimeError(f"{conn.topic}: connection closed "
                                                     f"({ws.close_code})"))

    sockets = []
    for port in args.ports.split(","):
        for k in range(args.topics):
            sockets.append(await tether.connect(
                f"ws://{HOST}:{port}/pub/t{k}", listener=Client(), compression=None,
                ping_interval=None, ping_timeout=None))
    await asyncio.wait_for(asyncio.gather(*(c.subscribed for c in conns.values())), 60)
    print("connected", flush=True)
    await asyncio.wait_for(go.wait(), 300)

    async def phase(count: int, lat: list[int] | None) -> None:
        await asyncio.wait_for(
            asyncio.gather(*(c.start(count, args.window, lat) for c in conns.values())), 300)

    await phase(args.warmup, None)
    await asyncio.sleep(0.3)  # the other node's deliveries of the warm-up land
    # The unloaded round trip: one publish at a time, nothing else in flight, from topic t0's
    # publisher on node 1, then from node 2's.
    probe: list[int] = []
    probers = [conns[sockets[0]], conns[sockets[args.topics]]]
    for i, conn in enumerate(probers):
        count = args.probe // 2 + (args.probe % 2 if i == 0 else 0)
        if count:
            await asyncio.wait_for(conn.start(count, 1, probe), 120)
    await asyncio.sleep(0.3)
    lat: list[int] = []
    cpu0 = time.process_time()
    t0 = time.monotonic()
    print(f"measure {t0!r}", flush=True)
    await phase(args.messages, lat)
    t1 = time.monotonic()
    cpu1 = time.process_time()
    print(f"sent {t1!r}", flush=True)
    # Every publisher is subscribed to its topic: it must get the topic's every message, from
    # both nodes' publishers (warm-up included).
    expected = {c: 2 * (args.warmup + args.messages) + (args.probe if c.topic == "t0" else 0)
                for c in conns.values()}
    deadline = time.monotonic() + 60
    while any(c.messages < expected[c] for c in conns.values()):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    lat.sort()
    probe.sort()

    def pct(values: list[int], p: float) -> float:
        return values[min(len(values) - 1, int(p / 100 * len(values)))] / 1e3 if values else 0.0

    print(json.dumps({
        "publishes": len(lat), "seconds": t1 - t0, "cpu_s": cpu1 - cpu0,
        "p50_us": pct(lat, 50), "p90_us": pct(lat, 90), "p99_us": pct(lat, 99),
        "max_us": lat[-1] / 1e3, "mean_us": sum(lat) / len(lat) / 1e3,
        "probe": len(probe), "probe_p50_us": pct(probe, 50), "probe_p99_us": pct(probe, 99),
        "own_messages_short": sum(max(0, expected[c] - c.messages) for c in conns.values()),
        "errors": [e for c in conns.values() for e in c.errors][:5],
    }), flush=True)
    for ws in sockets:
        ws.close_nowait(1000)
    await asyncio.sleep(0.1)


# --------------------------------------------------------------------------
# the driver


def pin_process(pid: int | None, cpu: int | None) -> None:
    """Pin every thread of a process (redis-server has a few) to one CPU."""
    if pid is None or cpu is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})


def safe_cpu(pid: int | None) -> float:
    try:
        return cpu_s(pid) if pid is not None else 0.0
    except (OSError, ValueError, IndexError):
        return 0.0


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy since boot (every CPU; /proc/stat: all but
    idle and iowait), and of them in interrupts (irq + softirq)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / tick, (fields[5] + fields[6]) / tick


def safe_sys(pid: int) -> float:
    try:
        return proc_cpu_seconds(pid)[1]
    except (OSError, ValueError, IndexError):
        return 0.0


class SingleRedis:
    """One redis-server, started like every node of the other topologies (same helper)."""

    def __init__(self, directory: Path, topo: Any) -> None:
        self.node = topo.RedisProcess("single", directory / "single", topo.free_port(), [])
        self.processes = [self.node]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.node.port}/0"

    def __enter__(self) -> SingleRedis:
        self.node.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.node.kill()


def topics_per_shard(cluster: Any, topo: Any, prefix: str, topics: int) -> list[int]:
    """How many of the topics each shard holds (a topic's hash tag is prefix + topic)."""
    masters = cluster.masters()
    counts = [0] * len(masters)
    port = masters[0].port
    for k in range(topics):
        slot = int(topo.command(port, "CLUSTER", "KEYSLOT", f"{prefix}t{k}"))
        for i, master in enumerate(masters):
            if any(low <= slot <= high for low, high in master.slots):
                counts[i] += 1
    return counts


def run_config(key: str, setup: Any, min_replicas: int, rnd: int, args: argparse.Namespace,
               loadgen: Path, cpus: tuple[Any, Any], log_dir: Path, topo: Any
               ) -> dict[str, Any]:
    prefix = f"rso-r{rnd}-{key}:"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_DIR / "src") + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    local = args.topics * args.subs  # load generator connections per node
    per_sub = 1 + 2 * (args.warmup + args.messages)  # "subscribed" + the topic's messages
    expected = local * per_sub + args.subs * args.probe  # + the probe's, on topic t0
    fan = 2 * (args.subs + 1)
    shards = (topics_per_shard(setup, topo, prefix, args.topics)
              if hasattr(setup, "masters") else None)
    redis_pids = {p.name: p.pid for p in setup.processes if p.alive}
    procs: list[Lines] = []
    nodes: list[Lines] = []
    lgs: list[Lines] = []
    events: dict[str, tuple[float, dict[str, Any]]] = {}
    publisher: Lines | None = None

    def snapshot() -> dict[str, Any]:
        return {
            "nodes": [safe_cpu(n.proc.pid) for n in nodes],
            "nodes_sys": [safe_sys(n.proc.pid) for n in nodes],
            "redis": {name: safe_cpu(pid) for name, pid in redis_pids.items()},
            "loadgens": [safe_cpu(lg.proc.pid) for lg in lgs],
            "publisher": safe_cpu(publisher.proc.pid) if publisher is not None else 0.0,
            "driver": sum(os.times()[:2]),
            "machine": machine_busy(),
        }

    try:
        ports = [topo.free_port() for _ in range(2)]
        for i, port in enumerate(ports):
            log = open(log_dir / f"r{rnd}-{key}-node{i + 1}.log", "w")
            node = Lines([args.python, str(Path(__file__).resolve()), "--serve",
                          "--port", str(port), "--redis", setup.url, "--prefix", prefix,
                          "--min-replicas", str(min_replicas), "--topics", str(args.topics),
                          "--subs", str(args.subs)], "stdout", cpus[1], env, log=log)
            log.close()
            procs.append(node)
            nodes.append(node)
        for i, node in enumerate(nodes):
            node.expect("ready", 60, f"node {i + 1}")
        for i, port in enumerate(ports):
            def hook(line: str, i: int = i) -> None:
                if line == "done":
                    events[f"done{i}"] = (time.monotonic(), snapshot())

            lg = Lines([str(loadgen), "broadcast", "--host", HOST, "--port", str(port),
                        "--path", "/sub", "-c", str(local), "--concurrency", "100",
                        "-n", str(expected), "-d", "600", "--timeout", "120", "--notify"],
                       "stderr", cpus[0], None, hook=hook)
            procs.append(lg)
            lgs.append(lg)
        for i, lg in enumerate(lgs):
            lg.expect("open", 60, f"load generator {i + 1}")

        def pub_hook(line: str) -> None:
            word, _, rest = line.partition(" ")
            if word in ("measure", "sent"):
                events[word] = (float(rest), snapshot())

        log = open(log_dir / f"r{rnd}-{key}-publisher.log", "w")
        publisher = Lines([args.python, str(Path(__file__).resolve()), "--publish",
                           "--ports", ",".join(map(str, ports)), "--topics", str(args.topics),
                           "--window", str(args.window), "--warmup", str(args.warmup),
                           "--messages", str(args.messages), "--size", str(args.size),
                           "--probe", str(args.probe)],
                          "stdout", cpus[0], env, log=log, hook=pub_hook)
        log.close()
        procs.append(publisher)
        publisher.expect("connected", 60, "publisher")
        for i, node in enumerate(nodes):
            node.expect("subscribed", 90, f"node {i + 1}")
        os.kill(publisher.proc.pid, signal.SIGUSR2)  # the process we started: "publish now"
        publisher.expect("measure", 120, "publisher")
        publisher.expect("sent", 300, "publisher")
        for i, lg in enumerate(lgs):
            lg.expect("done", 120, f"load generator {i + 1}")
        published = json.loads(publisher.expect("{", 90, "publisher")[0])
        if published["errors"] or published["own_messages_short"]:
            raise RuntimeError(f"publisher: {published['own_messages_short']} own-topic "
                               f"messages missing; errors {published['errors']}")
        clients = load_generator_results(lgs, expected)
    finally:
        for p in reversed(procs):
            p.stop()
    t0, s0 = events["measure"]
    t_sent = events["sent"][0]
    t_end, s1 = max((events[k] for k in ("sent", "done0", "done1")), key=lambda e: e[0])
    wall = t_end - t0
    publishes = 2 * args.topics * args.messages
    assert published["publishes"] == publishes
    deliveries = publishes * fan
    node_cpu = [b - a for a, b in zip(s0["nodes"], s1["nodes"])]
    redis_cpu = {name: s1["redis"][name] - s0["redis"][name] for name in s0["redis"]}
    loadgen_cpu = sum(s1["loadgens"]) - sum(s0["loadgens"])
    pub_cpu = s1["publisher"] - s0["publisher"]
    return {
        "config": key, "round": rnd + 1, "min_replicas": min_replicas, "prefix": prefix,
        "topics_per_shard": shards, "publishes": publishes, "fan_out": fan,
        "deliveries": deliveries, "publish_s": t_sent - t0, "wall_s": wall,
        "publishes_per_s": publishes / (t_sent - t0), "deliveries_per_s": deliveries / wall,
        "p50_ms": published["p50_us"] / 1e3, "p90_ms": published["p90_us"] / 1e3,
        "p99_ms": published["p99_us"] / 1e3, "max_ms": published["max_us"] / 1e3,
        "idle_p50_ms": published["probe_p50_us"] / 1e3,
        "idle_p99_ms": published["probe_p99_us"] / 1e3,
        "node_cpu_s": node_cpu,
        "node_sys_share": (sum(s1["nodes_sys"]) - sum(s0["nodes_sys"])) / sum(node_cpu)
        if sum(node_cpu) else None,
        "node_cpu_us_per_delivery": sum(node_cpu) * 1e6 / deliveries,
        "node_cpu_us_per_publish": sum(node_cpu) * 1e6 / publishes,
        "node_cores": sum(node_cpu) / wall,
        "redis_cpu_s": redis_cpu, "redis_cpu_us_per_publish": sum(redis_cpu.values()) * 1e6
        / publishes,
        "loadgen_cpu_s": loadgen_cpu, "publisher_cpu_s": pub_cpu,
        "client_over_nodes": (loadgen_cpu + pub_cpu) / sum(node_cpu) if sum(node_cpu) else None,
        "cpu0_cores": (loadgen_cpu + pub_cpu + sum(redis_cpu.values())) / wall,
        # What else ran meanwhile: the machine's busy time less this benchmark's processes
        # (softirq time of the loopback traffic that no process is charged with included).
        "other_cores": (s1["machine"][0] - s0["machine"][0] - sum(node_cpu) - loadgen_cpu
                        - pub_cpu - sum(redis_cpu.values()) - (s1["driver"] - s0["driver"])
                        ) / wall,
        "irq_cores": (s1["machine"][1] - s0["machine"][1]) / wall,
        "loadgen_client_cpu_s_total": sum(c["client_cpu_s"] for c in clients),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for hidden in ("--serve", "--publish"):
        parser.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--min-replicas", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--configs", default=",".join(k for k, _, _, _ in CONFIGS),
                        help="comma-separated, of: %(default)s")
    parser.add_argument("--topics", type=int, default=20)
    parser.add_argument("--subs", type=int, default=10,
                        help="load generator subscribers per topic per node (default 10)")
    parser.add_argument("--window", type=int, default=2,
                        help="publishes in flight per publisher connection (2 x topics of "
                        "them; default 2)")
    parser.add_argument("--warmup", type=int, default=25,
                        help="warm-up publishes per publisher connection (default 25)")
    parser.add_argument("--messages", type=int, default=100,
                        help="measured publishes per publisher connection (default 100)")
    parser.add_argument("--size", type=int, default=100, help="characters of text per message")
    parser.add_argument("--probe", type=int, default=200,
                        help="publishes one at a time, nothing else in flight, for the unloaded "
                        "round trip (half from each node; default 200)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the nodes")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write every run to FILE")
    args = parser.parse_args()
    if args.serve or args.publish:
        sys.path.insert(0, str(REPO_DIR / "src"))
        import tether

        tether.run(serve_node(args) if args.serve else run_publisher(args))
        return 0

    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = [k for k in keys if k not in LABELS]
    if unknown or not keys:
        sys.exit(f"redis_scaleout.py: unknown configuration(s) {unknown}; "
                 f"known: {', '.join(LABELS)}")
    configs = [c for c in CONFIGS if c[0] in keys]
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            sys.exit(f"redis_scaleout.py: {tool} is not installed (apt-get install redis-server)")
    sys.path.insert(0, str(REPO_DIR))
    sys.path.insert(0, str(REPO_DIR / "src"))
    from tests.hub import redis_topology as topo

    loadgen = build_loadgen()
    cpus = pick_cpus(args.no_pin)
    busy = background_load(1.0)
    load_before = loadavg()
    ncpu = len(os.sched_getaffinity(0))
    print(f"2 nodes; {args.topics} topics x {args.subs} subscribers per node, "
          f"{2 * args.topics} publishers x {args.window} in flight, {args.messages} measured "
          f"publishes each (+{args.warmup} warm-up) of ~{args.size + 150} B; {args.rounds} "
          f"rounds; nodes on CPU {cpus[1]}, the rest on CPU {cpus[0]}; {ncpu} CPUs; "
          f"background load {busy if busy is None else round(busy, 2)} cores, loadavg "
          f"{load_before}", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _, _ in configs}
    failures: list[str] = []
    started = time.monotonic()
    modes = {mode for _, _, mode, _ in configs}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tether-rso-")))
        setups: dict[str, Any] = {}
        try:
            if "single" in modes:
                setups["single"] = stack.enter_context(SingleRedis(tmp / "single", topo))
            if "sentinel" in modes:
                setups["sentinel"] = stack.enter_context(topo.SentinelSetup(tmp / "sentinel"))
            if "cluster" in modes:
                setups["cluster"] = stack.enter_context(
                    topo.ClusterSetup(tmp / "cluster", masters=3, replicas=1))
        except topo.TopologyError as exc:
            print(f"redis_scaleout.py: a topology did not start: {exc}", file=sys.stderr)
            return 1
        for setup in setups.values():
            for process in setup.processes:
                pin_process(process.pid, cpus[0])
        print(f"topologies up in {time.monotonic() - started:.1f} s "
              + ", ".join(f"{m} {s.url}" for m, s in setups.items()), file=sys.stderr)
        log_dir = tmp / "logs"
        log_dir.mkdir()
        try:
            for r in range(args.rounds):
                shift = r % len(configs)
                for key, label, mode, mr in configs[shift:] + configs[:shift]:
                    try:
                        result = run_config(key, setups[mode], mr, r, args, loadgen, cpus,
                                            log_dir, topo)
                    except (RuntimeError, KeyError, AssertionError, ValueError) as exc:
                        logs = sorted(log_dir.glob(f"r{r}-{key}-*.log"))
                        tail = "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
                        print(f"round {r + 1} {key}: FAILED: {exc!r}\n{tail}", file=sys.stderr)
                        failures.append(f"round {r + 1} {key}: {exc}")
                        continue
                    runs[key].append(result)
                    shards = result["topics_per_shard"]
                    print(f"round {r + 1} {key:10} {result['publishes_per_s']:>7,.0f} pub/s "
                          f"{result['deliveries_per_s']:>9,.0f} deliv/s  p50 "
                          f"{result['p50_ms']:.2f} p99 {result['p99_ms']:.2f} ms  nodes "
                          f"{result['node_cores']:.2f} cores, "
                          f"{result['node_cpu_us_per_delivery']:.2f} µs/deliv  redis "
                          f"{result['redis_cpu_us_per_publish']:.0f} µs/pub  client/nodes "
                          f"{result['client_over_nodes']:.2f}  cpu0 "
                          f"{result['cpu0_cores']:.2f}  other {result['other_cores']:.2f} "
                          f"(irq {result['irq_cores']:.2f})"
                          + (f"  topics/shard {'/'.join(map(str, shards))}" if shards else ""),
                          file=sys.stderr)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 1
    busy_after = background_load(1.0)
    load_after = loadavg()

    def values(key: str, field: str) -> list[float]:
        return [run[field] for run in runs[key]]

    def med(key: str, field: str) -> float:
        return statistics.median(values(key, field))

    def cell(key: str, field: str, fmt: str) -> str:
        v = values(key, field)
        if not v:
            return "failed"
        return f"{fmt.format(med(key, field))} ({fmt.format(min(v))}–{fmt.format(max(v))})"

    def paired(key: str, other: str, field: str, how: str = "ratio") -> list[float]:
        """Per round, key's figure over (or minus) other's, from the same round."""
        mine = {run["round"]: run[field] for run in runs.get(key, [])}
        theirs = {run["round"]: run[field] for run in runs.get(other, [])}
        return [mine[r] / theirs[r] if how == "ratio" else mine[r] - theirs[r]
                for r in sorted(mine) if r in theirs and (how != "ratio" or theirs[r])]

    def spread(v: list[float], fmt: str) -> str:
        return (f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})"
                if v else "")

    columns = [("publishes/s", "publishes_per_s", "{:,.0f}"),
               ("deliveries/s", "deliveries_per_s", "{:,.0f}"),
               ("publish p50 ms, loaded", "p50_ms", "{:.1f}"),
               ("p99 ms, loaded", "p99_ms", "{:.1f}"),
               ("publish p50 ms, alone", "idle_p50_ms", "{:.2f}"),
               ("p99 ms, alone", "idle_p99_ms", "{:.2f}"),
               ("node CPU µs/publish", "node_cpu_us_per_publish", "{:.0f}"),
               ("node CPU µs/delivery", "node_cpu_us_per_delivery", "{:.1f}"),
               ("Redis CPU µs/publish", "redis_cpu_us_per_publish", "{:.0f}")]
    print()
    print("| configuration | " + " | ".join(h for h, _, _ in columns)
          + " | publishes/s vs single, per round |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for key, label, _, _ in configs:
        ratio = spread(paired(key, "single", "publishes_per_s"), "{:.2f}")
        print(f"| {label} | " + " | ".join(cell(key, f, fmt) for _, f, fmt in columns)
              + f" | {ratio} |")
    total = time.monotonic() - started
    for zero, one in (("sentinel-0", "sentinel-1"), ("cluster-0", "cluster-1")):
        if runs.get(zero) and runs.get(one):
            print(f"\n{LABELS[one]} against {LABELS[zero]}, per round (median, range): "
                  f"publishes/s x{spread(paired(one, zero, 'publishes_per_s'), '{:.2f}')}, "
                  f"node CPU per publish x"
                  f"{spread(paired(one, zero, 'node_cpu_us_per_publish'), '{:.2f}')}, "
                  f"publish alone p50 "
                  f"{spread(paired(one, zero, 'idle_p50_ms', 'diff'), '{:+.2f}')} ms, "
                  f"p99 {spread(paired(one, zero, 'idle_p99_ms', 'diff'), '{:+.2f}')} ms.", end="")
    print()
    print(f"\nMedians (min–max) of {args.rounds} rounds; 2 nodes, {args.topics} topics, each "
          f"with {args.subs} subscribers and 1 publisher on each node ({args.window} publishes "
          f"in flight per publisher, {2 * args.topics * args.window} in all); "
          f"{2 * args.topics * args.messages} measured publishes per run, each delivered to "
          f"{2 * (args.subs + 1)} connections; total {total:.0f} s.")
    print("Client check (median per configuration): client CPU / node CPU "
          + ", ".join(f"{k} {med(k, 'client_over_nodes'):.2f}" for k, *_ in configs if runs[k])
          + "; nodes busy (cores, of the 1 they share; kernel share of it) "
          + ", ".join(f"{k} {med(k, 'node_cores'):.2f} ({med(k, 'node_sys_share'):.0%})"
                      for k, *_ in configs if runs[k])
          + "; first CPU busy with Redis + clients (cores) "
          + ", ".join(f"{k} {med(k, 'cpu0_cores'):.2f}" for k, *_ in configs if runs[k]) + ".")
    others = [run["other_cores"] for k, *_ in configs for run in runs[k]]
    irqs = [run["irq_cores"] for k, *_ in configs for run in runs[k]]
    if others:
        print(f"Other load on the machine during the measured windows (busy CPU time less this "
              f"benchmark's processes, cores): median {statistics.median(others):.2f}, "
              f"range {min(others):.2f}–{max(others):.2f}; of it in interrupts (irq + softirq, "
              f"partly this benchmark's loopback traffic): median "
              f"{statistics.median(irqs):.2f}.")
    if any(runs[k] and runs[k][0]["topics_per_shard"] for k, *_ in configs):
        print("Topics per cluster shard, per run: " + "; ".join(
            f"{k} " + " ".join("/".join(map(str, run["topics_per_shard"])) for run in runs[k])
            for k, *_ in configs if runs[k] and runs[k][0]["topics_per_shard"]) + ".")
    print(f"Machine: {ncpu} CPUs; background load {busy if busy is None else round(busy, 2)} "
          f"cores before, {busy_after if busy_after is None else round(busy_after, 2)} after; "
          f"loadavg {load_before} before, {load_after} after.")
    if failures:
        print("FAILED runs: " + "; ".join(failures))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "meta": {k: getattr(args, k) for k in ("topics", "subs", "window", "warmup",
                                                  "messages", "size", "rounds")}
            | {"cpus": list(cpus), "ncpu": ncpu, "background_load": [busy, busy_after],
               "loadavg": [load_before, load_after], "total_s": total,
               "failures": failures},
            "runs": runs,
            "medians": {k: {f: med(k, f) for f in (
                "publishes_per_s", "deliveries_per_s", "p50_ms", "p99_ms",
                "idle_p50_ms", "idle_p99_ms", "node_sys_share",
                "node_cpu_us_per_delivery", "node_cpu_us_per_publish",
                "redis_cpu_us_per_publish", "node_cores", "cpu0_cores",
                "client_over_nodes", "other_cores", "irq_cores")} for k, *_ in configs if runs[k]},
        }, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
