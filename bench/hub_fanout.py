#!/usr/bin/env python3
"""Fan-out benchmark: one topic, 1,000 subscribers, deliveries per second and server CPU per
delivery. tether's hub against the `websockets` library's broadcast(), in the same run.

The subscribers are the C load generator (bench/loadgen.c, `broadcast` mode: C connections
that only read and count messages), pinned to one CPU; the server runs pinned to the other.
Each round starts each server fresh, in its own process (this file, `--serve KIND`):

  hub         tether.hub.Hub (memory backend): each connection is subscribed on connect
              (hub.serve(ws, name, subscribe=["bench"])); hub.publish() assigns the seq, keeps
              the history, frames the message once and writes it to every subscriber.
  hub-sqlite  the same with the SQLite backend (a file in a temporary folder).
  broadcast   tether.broadcast() of the same JSON text: the fan-out without the hub.
  websockets  websockets.asyncio.server.broadcast() of the same JSON text.

Once every subscriber is connected, the server publishes --messages messages of the hub's
`message` shape ({"type": "message", "topic", "seq", "epoch", "data", "sender", "time"},
about --size bytes of text in data), and measures its own CPU time (user + system, from
os.times()) from the first publish until every connection's write buffer is empty. Every
server is paced the same way: after each burst of --burst messages (default 10) it yields to
the event loop and waits while some connection has more than 256 KiB unsent, so no server drops
or closes a subscriber. The hub writes the messages of one turn of the loop to each subscriber
at once (one system call for the burst); broadcast() and websockets write each message as it
comes. --burst 1 compares the fan-out of single messages. The load generator checks that every subscriber received every message.

Figures: deliveries/s = subscribers x messages / that wall time; server CPU µs per delivery;
the load generator's own receive rate, for reference.

Usage:
  python bench/hub_fanout.py [--subscribers 1000] [--messages 300] [--size 100]
                             [--burst 10] [--rounds 3]
                             [--servers hub,hub-sqlite,broadcast,websockets]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from echo import (  # noqa: E402  (bench/echo.py: the echo benchmark's helpers)
    HOST,
    background_load,
    build_loadgen,
    child_setup,
    free_port,
    pick_cpus,
)

SERVERS = ["hub", "hub-sqlite", "broadcast", "websockets"]
HIGH_WATER = 256 * 1024
SETUP_FRAMES = {"hub": 2, "hub-sqlite": 2}  # subscribed + presence, per subscriber

# --------------------------------------------------------------------------
# the server side (runs in its own process)


def envelope(seq: int, size: int) -> dict[str, Any]:
    return {"type": "message", "topic": "bench", "seq": seq, "epoch": "0123456789abcdef",
            "data": {"text": "x" * size, "n": seq}, "sender": "bench",
            "time": int(time.time() * 1000)}


async def serve(kind: str, port: int, subscribers: int, messages: int, size: int, burst: int,
                data: str | None) -> None:
    loop = asyncio.get_running_loop()
    connections: Any
    if kind == "websockets":
        from websockets.asyncio.server import broadcast as ws_broadcast
        from websockets.asyncio.server import serve as ws_serve

        clients: set[Any] = set()

        async def ws_handler(ws: Any) -> None:
            clients.add(ws)
            try:
                await ws.wait_closed()
            finally:
                clients.discard(ws)

        server: Any = await ws_serve(ws_handler, HOST, port, compression=None,
                                     ping_interval=None, backlog=4096)
        connections = clients

        def ready() -> bool:
            return len(clients) >= subscribers

        def buffered(ws: Any) -> int:
            return int(ws.transport.get_write_buffer_size())

        async def publish(seq: int) -> None:
            ws_broadcast(clients, json.dumps(envelope(seq, size)))
    else:
        import tether
        from tether.hub import Hub

        hub = None
        if kind in ("hub", "hub-sqlite"):
            backend = None
            if kind == "hub-sqlite":
                from tether.hub.sqlite import SQLiteBackend

                assert data is not None
                backend = SQLiteBackend(Path(data) / "bench.sqlite3")
            hub = Hub(backend, history_limit=0)

            async def handler(ws: Any) -> None:
                await hub.serve(ws, "bench", subscribe=["bench"])
        else:
            async def handler(ws: Any) -> None:
                await ws.wait_closed()

        server = await tether.serve(handler, HOST, port, compression=None, ping_interval=None,
                                    ping_timeout=None, backlog=4096)
        connections = server.connections

        def ready() -> bool:
            if hub is not None:
                return hub.topics().get("bench", 0) >= subscribers
            return sum(1 for c in server.connections if c.handler_task) >= subscribers

        def buffered(ws: Any) -> int:
            return int(ws.buffered_amount)

        if hub is not None:
            async def publish(seq: int) -> None:
                data = envelope(seq, size)["data"]
                await hub.publish("bench", data, sender="bench")
        else:
            async def publish(seq: int) -> None:
                tether.broadcast(server.connections, json.dumps(envelope(seq, size)))

    print("ready", flush=True)
    while not ready():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # let the last handshakes settle
    waits = 0
    t0, wall0 = os.times(), loop.time()
    for seq in range(1, messages + 1):
        await publish(seq)
        if seq % burst == 0:
            await asyncio.sleep(0)
            while max(buffered(ws) for ws in list(connections)) > HIGH_WATER:
                waits += 1
                await asyncio.sleep(0.002)
    while any(buffered(ws) for ws in list(connections)):
        waits += 1
        await asyncio.sleep(0.002)
    t1, wall1 = os.times(), loop.time()
    result = {
        "server": kind, "subscribers": len(connections), "messages": messages,
        "wall_s": wall1 - wall0, "user_s": t1.user - t0.user, "sys_s": t1.system - t0.system,
        "waits": waits,
    }
    print(json.dumps(result), flush=True)
    await asyncio.sleep(3600)  # until the driver stops us


# --------------------------------------------------------------------------
# the driver


def run_round(kind: str, args: argparse.Namespace, loadgen: Path, cpus: tuple[Any, Any]
              ) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_DIR / "src") + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    folder = tempfile.TemporaryDirectory(prefix="tether-bench-")
    cmd = [args.python, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port),
           "--subscribers", str(args.subscribers), "--messages", str(args.messages),
           "--size", str(args.size), "--burst", str(args.burst), "--data", folder.name]
    log = open(Path(folder.name) / "server.log", "w+")
    server = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=log, text=True, preexec_fn=child_setup(cpus[1]))
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if line.strip() != "ready":
            server.wait(timeout=10)
            log.seek(0)
            raise RuntimeError(f"{kind} server did not start: {line}{log.read()[-2000:]}")
        expected = args.subscribers * (args.messages + SETUP_FRAMES.get(kind, 0))
        lg = subprocess.run(
            [str(loadgen), "broadcast", "--host", HOST, "--port", str(port), "-c",
             str(args.subscribers), "-n", str(expected), "-d", "100", "--timeout", "30"],
            capture_output=True, text=True, timeout=110, preexec_fn=child_setup(cpus[0]))
        if lg.returncode != 0:
            raise RuntimeError(f"load generator failed against {kind}: {lg.stderr.strip()}")
        client = json.loads(lg.stdout.strip().splitlines()[-1])
        if client["messages"] != expected:
            raise RuntimeError(f"{kind}: {client['messages']} messages received, "
                               f"{expected} expected")
        result = json.loads(server.stdout.readline())
    finally:
        if server.poll() is None:
            server.terminate()  # the process we started, by its PID
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()
        folder.cleanup()
    deliveries = args.subscribers * args.messages
    cpu = result["user_s"] + result["sys_s"]
    result["deliveries"] = deliveries
    result["deliveries_per_s"] = deliveries / result["wall_s"]
    result["cpu_us_per_delivery"] = cpu * 1e6 / deliveries
    result["cpu_util"] = cpu / result["wall_s"]
    result["loadgen_msgs_per_s"] = client["msgs_per_s"]
    result["loadgen_cpu_us_per_msg"] = client["client_cpu_us_per_op"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=100, help="characters of text per message")
    parser.add_argument("--burst", type=int, default=10,
                        help="messages published per turn of the event loop (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write every run to FILE")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.subscribers, args.messages, args.size,
                          args.burst, args.data))
        return 0

    servers = [s for s in args.servers.split(",") if s]
    loadgen = build_loadgen()
    cpus = pick_cpus(args.no_pin)
    busy = background_load()
    print(f"{args.subscribers} subscribers, {args.messages} messages of ~{args.size + 150} B "
          f"in bursts of {args.burst}, {args.rounds} rounds; loadgen on CPU {cpus[0]}, servers on CPU {cpus[1]}; "
          f"background load {busy if busy is None else round(busy, 2)} cores", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
    started = time.monotonic()
    for r in range(args.rounds):
        order = servers if r % 2 == 0 else servers[::-1]
        for kind in order:
            result = run_round(kind, args, loadgen, cpus)
            runs[kind].append(result)
            print(f"round {r + 1} {kind:11} {result['deliveries_per_s']:>10,.0f} deliveries/s "
                  f"{result['cpu_us_per_delivery']:6.2f} µs CPU/delivery "
                  f"(cpu util {result['cpu_util']:.2f}, {result['waits']} waits)", file=sys.stderr)

    def median(kind: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[kind])

    print()
    print(f"| server | deliveries/s | server CPU µs/delivery | loadgen msgs/s |")
    print("|---|---:|---:|---:|")
    for kind in servers:
        print(f"| {kind} | {median(kind, 'deliveries_per_s'):,.0f} | "
              f"{median(kind, 'cpu_us_per_delivery'):.2f} | "
              f"{median(kind, 'loadgen_msgs_per_s'):,.0f} |")
    if "websockets" in servers:
        base = median("websockets", "cpu_us_per_delivery")
        for kind in servers:
            if kind != "websockets":
                print(f"\n{kind}: {base / median(kind, 'cpu_us_per_delivery'):.2f}x less CPU "
                      "per delivery than websockets", end="")
        print()
    print(f"\n(medians of {args.rounds} rounds; total {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
