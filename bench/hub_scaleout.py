#!/usr/bin/env python3
"""Cross-node fan-out through Redis: the hub on 2 nodes against 1 node, same subscribers, same
messages. Deliveries per second, node CPU per delivery and Redis CPU, in one run.

The driver starts its own redis-server (free loopback port, temporary folder, no persistence),
then, rounds interleaved, each configuration:

  1 node   one hub process (this file, `--serve`): tether.hub.Hub(RedisBackend(url)), every
           connection subscribed on connect (hub.serve(ws, name, subscribe=["bench"])); one
           C load generator (bench/loadgen.c, `broadcast` mode) opens the S subscribers.
  2 nodes  two hub processes on two ports, on the same Redis (and key prefix); one load
           generator per node, S/2 subscribers each.

Every round uses a fresh key prefix, so no presence or history is left from an earlier round.
Once every subscriber on every node is live (subscribed, presence sent), the driver sends
SIGUSR2 to node 1, which publishes M messages through hub.publish() (--burst of them in flight
at once; each publish is the Redis Lua script, and returns once node 1 saw its own message come
back on the pub/sub channel). Every node gets each message from Redis pub/sub and writes it to
its local subscribers; the load generators check that every subscriber got every message.

Figures (per round, then the median over rounds):
  deliveries/s       S x M / (time the last load generator printed "done" - time of node 1's
                     first publish); both are CLOCK_MONOTONIC, read in different processes.
  node CPU µs/deliv  utime + stime from /proc/<pid>/stat of every node, summed: from just
                     before the signal until the moment that node's own load generator has
                     every message (sampled by the thread that reads its "done").
  Redis CPU          the same for redis-server, from the signal until the last "done".

Pinning (when there are >= 2 CPUs): the load generators and redis-server on the first CPU,
every node on the second. On a 2-core machine the 2 nodes share one core: the figure shows the
cost of going through Redis and of the even split, not extra capacity (a real deployment runs
the nodes on separate machines).

Usage:
  python bench/hub_scaleout.py [--subscribers 1000] [--messages 300] [--size 100]
                               [--burst 10] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from echo import (  # noqa: E402  (bench/echo.py: the echo benchmark's helpers)
    HOST,
    background_load,
    build_loadgen,
    child_setup,
    free_port,
    pick_cpus,
    proc_cpu_seconds,
)

TOPIC = "bench"
SETUP_FRAMES = 2  # "subscribed" + "presence", per subscriber, before the messages
HIGH_WATER = 256 * 1024
CONFIGS = {"1 node": 1, "2 nodes": 2}

# --------------------------------------------------------------------------
# a node (runs in its own process)


async def serve_node(args: argparse.Namespace) -> None:
    import tether
    from tether.hub import Hub
    from tether.hub.redis import RedisBackend

    # The hub's warnings (a subscribe refused with `unavailable`, Redis outages) go to the
    # node's log, which the driver prints when a round fails.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    loop = asyncio.get_running_loop()
    # presence_ttl: the refresh (every ttl/3 s: one Lua call per member) stays out of the run.
    backend = RedisBackend(args.redis, key_prefix=args.prefix, presence_ttl=3600.0)
    await backend.connect()
    hub = Hub(backend, history_limit=0)

    async def handler(ws: Any) -> None:
        await hub.serve(ws, "bench", subscribe=[TOPIC])

    server = await tether.serve(handler, HOST, args.port, compression=None, ping_interval=None,
                                ping_timeout=None, backlog=4096)
    go = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR2, go.set)
    print("ready", flush=True)

    def live() -> int:
        fan = hub._topics.get(TOPIC)  # benchmark only: subscribers past their replay
        return 0 if fan is None else sum(1 for s in fan.subscribers if s.held is None)

    waited = 0.0
    while live() < args.local:
        await asyncio.sleep(0.01)
        waited += 0.01
        if 10.0 <= waited < 10.01:  # stuck: say where, for the driver's failure message
            fan = hub._topics.get(TOPIC)
            subs = list(fan.subscribers) if fan is not None else []
            print(f"{live()} of {args.local} subscribers live after 10 s "
                  f"({len(subs)} in the topic, {sum(not s.active for s in subs)} inactive, "
                  f"held lengths {Counter(len(s.held) for s in subs if s.held is not None)}, "
                  f"{len(hub._sessions)} sessions, "
                  f"{sum(not s.subscriptions for s in hub._sessions)} of them not subscribed: "
                  "see the warnings above); tasks:",
                  file=sys.stderr, flush=True)
            def where(task: asyncio.Task[Any]) -> str:
                frames, coro = [], task.get_coro()
                while coro is not None and hasattr(coro, "cr_frame"):
                    if coro.cr_frame is not None:
                        frames.append(f"{coro.cr_code.co_name}:{coro.cr_frame.f_lineno}")
                    coro = coro.cr_await
                return " > ".join(frames[-5:])

            stacks = Counter(where(t) for t in asyncio.all_tasks())
            for stack, n in stacks.most_common(6):
                print(f"  {n} x {stack}", file=sys.stderr, flush=True)
    print("subscribed", flush=True)
    if not args.publisher:
        await asyncio.sleep(3600)  # until the driver stops us
        return

    await go.wait()
    waits = 0
    data = {"text": "x" * args.size, "n": 0}
    first = time.monotonic()
    print(f"first {first!r}", flush=True)
    for start in range(1, args.messages + 1, args.burst):
        count = min(args.burst, args.messages + 1 - start)
        await asyncio.gather(*(hub.publish(TOPIC, dict(data, n=start + i), sender="bench")
                               for i in range(count)))
        while max((c.buffered_amount for c in list(server.connections)), default=0) > HIGH_WATER:
            waits += 1
            await asyncio.sleep(0.002)
    print(json.dumps({"publish_s": time.monotonic() - first, "waits": waits}), flush=True)
    await asyncio.sleep(3600)


# --------------------------------------------------------------------------
# the driver


class Lines:
    """A child process whose output lines (stdout or stderr) a thread reads as they come, with
    the time each arrived; `hook(line)` runs in that thread, as soon as the line is read."""

    def __init__(self, cmd: list[str], stream: str, cpu: int | None, env: dict[str, str] | None,
                 log: Any = None, hook: Callable[[str], None] | None = None) -> None:
        self.hook = hook
        out = subprocess.PIPE
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, text=True, preexec_fn=child_setup(cpu),
            stdout=out if stream == "stdout" else subprocess.PIPE,
            stderr=out if stream == "stderr" else (log or subprocess.DEVNULL))
        self.stream = self.proc.stdout if stream == "stdout" else self.proc.stderr
        self.lines: queue.Queue[tuple[str, float] | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.stream is not None
        for line in self.stream:
            line = line.rstrip("\n")
            t = time.monotonic()
            if self.hook is not None:
                self.hook(line)
            self.lines.put((line, t))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float, what: str) -> tuple[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{what}: no '{prefix}' within {timeout:.0f} s "
                                   f"({' / '.join(self.seen[-3:])})")
            try:
                item = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                self.proc.wait()
                raise RuntimeError(f"{what} exited early (status {self.proc.returncode}): "
                                   + " / ".join(self.seen[-5:]))
            if item[0].startswith(prefix):
                return item
            self.seen.append(item[0])

    def stop(self) -> None:
        """Stop the process we started, by its PID: SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load_generator_results(lgs: "list[Lines]", expected: int) -> list[dict[str, Any]]:
    """Each finished load generator's JSON summary, once it exited; an error when one did
    not finish, failed, or did not get ``expected`` messages."""
    clients = []
    for i, lg in enumerate(lgs):
        assert lg.proc.stdout is not None
        out = lg.proc.stdout.read()  # stderr is the pump thread's
        try:
            lg.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"load generator {i + 1} did not finish") from None
        if lg.proc.returncode != 0:
            raise RuntimeError(f"load generator {i + 1} failed: {' / '.join(lg.seen[-5:])}")
        client = json.loads(out.strip().splitlines()[-1])
        if client["messages"] != expected:
            raise RuntimeError(f"node {i + 1}: {client['messages']} messages received, "
                               f"{expected} expected")
        clients.append(client)
    return clients


def cpu_s(pid: int) -> float:
    return sum(proc_cpu_seconds(pid))


class Redis:
    """redis-server on a free loopback port, in a temporary folder, without persistence."""

    def __init__(self, cpu: int | None) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="tether-scaleout-")
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--dir", self.folder.name,
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--maxmemory-policy", "noeviction", "--logfile",
             str(Path(self.folder.name) / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_setup(cpu))
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the process we started, by its PID
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.folder.cleanup()


def run_config(name: str, nodes: int, rnd: int, args: argparse.Namespace, loadgen: Path,
               redis: Redis, cpus: tuple[Any, Any], log_dir: Path) -> dict[str, Any]:
    if args.subscribers % nodes:
        raise SystemExit(f"--subscribers must be a multiple of {nodes}")
    local = args.subscribers // nodes
    prefix = f"scaleout-r{rnd}-{nodes}:"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_DIR / "src") + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs: list[Lines] = []
    node_procs: list[Lines] = []
    lgs: list[Lines] = []
    done: dict[int, tuple[float, float]] = {}  # node index -> (time, node CPU) at its "done"
    try:
        ports = []
        for i in range(nodes):
            port = free_port()
            ports.append(port)
            log = open(log_dir / f"r{rnd}-{nodes}-node{i + 1}.log", "w")
            cmd = [args.python, str(Path(__file__).resolve()), "--serve", "--port", str(port),
                   "--redis", redis.url, "--prefix", prefix, "--local", str(local),
                   "--messages", str(args.messages), "--size", str(args.size),
                   "--burst", str(args.burst)] + (["--publisher"] if i == 0 else [])
            node = Lines(cmd, "stdout", cpus[1], env, log=log)
            log.close()
            procs.append(node)
            node_procs.append(node)
        for i, node in enumerate(node_procs):
            node.expect("ready", 30, f"node {i + 1}")
        expected = local * (args.messages + SETUP_FRAMES)
        for i, port in enumerate(ports):
            pid = node_procs[i].proc.pid

            def hook(line: str, i: int = i, pid: int = pid) -> None:
                if line == "done":
                    done[i] = (time.monotonic(), cpu_s(pid))

            lg = Lines([str(loadgen), "broadcast", "--host", HOST, "--port", str(port),
                        "-c", str(local), "--concurrency", "100", "-n", str(expected),
                        "-d", "300", "--timeout", "60", "--notify"],
                       "stderr", cpus[0], None, hook=hook)
            procs.append(lg)
            lgs.append(lg)
        for i, lg in enumerate(lgs):
            lg.expect("open", 60, f"load generator {i + 1}")
        for i, node in enumerate(node_procs):
            node.expect("subscribed", 60, f"node {i + 1}")
        time.sleep(0.2)
        cpu0 = [cpu_s(n.proc.pid) for n in node_procs]
        redis0 = cpu_s(redis.proc.pid)
        os.kill(node_procs[0].proc.pid, signal.SIGUSR2)  # the node we started: "publish now"
        first = float(node_procs[0].expect("first", 10, "node 1")[0].split()[1])
        for i, lg in enumerate(lgs):
            lg.expect("done", 120, f"load generator {i + 1}")
        redis1 = cpu_s(redis.proc.pid)
        published = json.loads(node_procs[0].expect("{", 10, "node 1")[0])
        clients = load_generator_results(lgs, expected)
    finally:
        for p in reversed(procs):
            p.stop()
    ends = [done[i][0] for i in range(nodes)]
    node_cpu = [done[i][1] - cpu0[i] for i in range(nodes)]
    deliveries = args.subscribers * args.messages
    wall = max(ends) - first
    return {
        "config": name, "round": rnd + 1, "nodes": nodes, "subscribers": args.subscribers,
        "messages": args.messages, "deliveries": deliveries, "wall_s": wall,
        "deliveries_per_s": deliveries / wall,
        "node_cpu_s": node_cpu, "node_cpu_us_per_delivery": sum(node_cpu) * 1e6 / deliveries,
        "node_cpu_util": sum(node_cpu) / wall,
        "redis_cpu_s": redis1 - redis0, "redis_cpu_ms": (redis1 - redis0) * 1e3,
        "publish_s": published["publish_s"], "publish_waits": published["waits"],
        "done_spread_ms": (max(ends) - min(ends)) * 1e3,
        "loadgen_cpu_s": sum(c["client_cpu_s"] for c in clients),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--local", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=1000, help="in all (default 1000)")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=100, help="characters of text per message")
    parser.add_argument("--burst", type=int, default=10,
                        help="publishes in flight at once on node 1 (default 10)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the nodes")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write every run to FILE")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_node(args))
        return 0

    if shutil.which("redis-server") is None:
        sys.exit("hub_scaleout.py: redis-server is not installed")
    loadgen = build_loadgen()
    cpus = pick_cpus(args.no_pin)
    busy = background_load()
    ncpu = len(os.sched_getaffinity(0))
    print(f"{args.subscribers} subscribers, {args.messages} messages of ~{args.size + 150} B, "
          f"{args.burst} publishes in flight, {args.rounds} rounds; loadgen + redis on CPU "
          f"{cpus[0]}, nodes on CPU {cpus[1]}; {ncpu} CPUs; background load "
          f"{busy if busy is None else round(busy, 2)} cores", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    started = time.monotonic()
    redis = Redis(cpus[0])
    log_dir = tempfile.TemporaryDirectory(prefix="tether-scaleout-logs-")
    try:
        for r in range(args.rounds):
            order = list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]
            for name in order:
                try:
                    result = run_config(name, CONFIGS[name], r, args, loadgen, redis, cpus,
                                        Path(log_dir.name))
                except RuntimeError as exc:
                    logs = sorted(Path(log_dir.name).glob(f"r{r}-{CONFIGS[name]}-*.log"))
                    tail = "".join(p.read_text()[-6000:] for p in logs)
                    print(f"round {r + 1} {name}: FAILED: {exc}\n{tail}", file=sys.stderr)
                    return 1
                runs[name].append(result)
                print(f"round {r + 1} {name:8} {result['deliveries_per_s']:>10,.0f} deliveries/s "
                      f"{result['node_cpu_us_per_delivery']:6.2f} µs node CPU/delivery "
                      f"(nodes {'+'.join(f'{c:.2f}' for c in result['node_cpu_s'])} s, "
                      f"redis {result['redis_cpu_ms']:.0f} ms, publish {result['publish_s']:.2f} s,"
                      f" done spread {result['done_spread_ms']:.0f} ms)", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        redis.stop()
        log_dir.cleanup()

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    def rng(name: str, key: str, fmt: str) -> str:
        values = [run[key] for run in runs[name]]
        return f"{fmt.format(med(name, key))} ({fmt.format(min(values))}–{fmt.format(max(values))})"

    print()
    print("| configuration | deliveries/s | node CPU µs/delivery (all nodes) | "
          "Redis CPU ms per run | Redis CPU µs per published message |")
    print("|---|---:|---:|---:|---:|")
    for name in CONFIGS:
        print(f"| {name} | {rng(name, 'deliveries_per_s', '{:,.0f}')} | "
              f"{rng(name, 'node_cpu_us_per_delivery', '{:.2f}')} | "
              f"{rng(name, 'redis_cpu_ms', '{:.0f}')} | "
              f"{med(name, 'redis_cpu_ms') * 1e3 / args.messages:.0f} |")
    if runs["1 node"] and runs["2 nodes"] and med("1 node", "node_cpu_us_per_delivery"):
        print(f"\n2 nodes / 1 node: deliveries/s x{med('2 nodes', 'deliveries_per_s') / med('1 node', 'deliveries_per_s'):.2f}, "
              f"node CPU per delivery x{med('2 nodes', 'node_cpu_us_per_delivery') / med('1 node', 'node_cpu_us_per_delivery'):.2f}")
    print(f"\nMedians (min–max) of {args.rounds} rounds; {args.subscribers} subscribers x "
          f"{args.messages} messages published on node 1; total {time.monotonic() - started:.0f} s.")
    if cpus[1] is not None and ncpu <= 2:
        print(f"Nodes pinned to CPU {cpus[1]}, load generators and Redis to CPU {cpus[0]}: on "
              "this 2-core machine the 2 nodes share one core, so the figure shows the "
              "overhead of going through Redis and of the even split, not extra capacity "
              "(a real deployment runs the nodes on separate machines).")
    elif cpus[1] is not None:
        print(f"Nodes pinned to CPU {cpus[1]} (both share it), load generators and Redis to "
              f"CPU {cpus[0]}: the figure shows the overhead of the split, not extra capacity.")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "meta": {"subscribers": args.subscribers, "messages": args.messages,
                     "size": args.size, "burst": args.burst, "rounds": args.rounds,
                     "cpus": list(cpus), "ncpu": ncpu, "background_load": busy},
            "runs": runs,
            "medians": {name: {k: med(name, k) for k in (
                "deliveries_per_s", "node_cpu_us_per_delivery", "redis_cpu_ms", "wall_s",
                "publish_s", "done_spread_ms", "loadgen_cpu_s", "node_cpu_util")}
                for name in CONFIGS if runs[name]},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
