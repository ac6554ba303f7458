#!/usr/bin/env python3
"""tether as uvicorn's WebSocket engine against uvicorn's own engines, granian and hypercorn
(issue 13), measured as bench/peers.py measures servers.

One bare ASGI app for every server (bench/asgi_app.py: echo at /, a relay at /relay; for
--e-load push, broadcast subscribers at /bcast and a control connection at /trigger) and the
C load generator (bench/loadgen.c):

  a  1 connection, 32-byte text, 100 in flight      server CPU µs per message
  c  100 connections, 10 in flight each             server CPU µs per message
  e  broadcast relay, 1,000 clients: one sends      server CPU µs per delivery
     1,000 × 32 B (100 in flight), all receive all
  f  10,000 idle connections                        KiB of server RSS per connection
  g  connect + handshake + close, 10 concurrent     server CPU µs per handshake

Servers (one worker each, uvloop, access log off, no permessage-deflate: the load generator
never offers it and rejects a response that selects it; pings at each server's default):

  uvicorn-tether   uvicorn --loop uvloop --http httptools --ws tether.asgi:UvicornProtocol
                   --ws-per-message-deflate false --no-access-log
  uvicorn-sansio   the same with --ws websockets-sansio (uvicorn 0.55's default engine)
  uvicorn-wsproto  the same with --ws wsproto
  granian          granian --interface asgi --loop uvloop --workers 1 --no-access-log
  hypercorn        hypercorn --worker-class uvloop --workers 1 --backlog 1024 (its default
                   backlog is 100; peers.py's servers use 1024)

uvicorn logs each accepted WebSocket at INFO ('"WebSocket /" [accepted]', on uvicorn.error,
which --no-access-log leaves on) with every engine; granian and hypercorn log nothing per
connection. --uvicorn-log-level warning turns it off.

Method (peers.py's helpers, imported): server CPU = utime + stime from /proc/PID/stat, summed
over the server's process tree (granian and hypercorn serve from a child process), sampled
around the measured phase only; f's RSS is VmRSS of the serving process (the child for
granian and hypercorn). The load generator is pinned to the first CPU, the servers (and
their children) to the second. Per round and server: a fresh server; one handshake as a
check; f (10,000 idle connections, 100 opening at a time); a short warm-up; a, c, g
(peers.scenario_echo); stop. Then a fresh server for e, the independent checker's load
(../shared/perf-scenarios.md), run by peers.scenario_relay with peers.py's --relay-* options
and defaults: `loadgen relay --path /relay` opens 1,000 connections; connection 0 sends 100
warm-up messages, which the app relays to every connection (await send() on each in turn,
the sender included) and every connection must receive; then, CPU sampled, 1,000 measured
messages of 32 bytes, at most 100 in flight; CPU sampled again once every connection has every
message; CPU µs per delivery = server CPU / (1,000 × 1,000). The client sleeps 1 ms after each
batch of epoll events. The order of the servers rotates every round; medians (min–max) of the
rounds.

--e-load push runs the old e instead: `loadgen broadcast --path /bcast` opens K subscribers;
once all are open, this script opens /trigger and sends one text "K M S B"; the app sends M
texts of S bytes to each subscriber (await send() for each, asyncio.sleep(0) after every B
messages); CPU from that message until the load generator has every message (--bcast-*).

Setup (the extra dependencies stay out of the project):

  python3 -m venv /tmp/asgivenv
  /tmp/asgivenv/bin/pip install -e . uvicorn==0.55.0 websockets wsproto granian hypercorn \\
      uvloop httptools

Usage:
  /tmp/asgivenv/bin/python bench/asgi.py                         # 5 servers x 3 rounds, ~5 min
  /tmp/asgivenv/bin/python bench/asgi.py --servers uvicorn-tether,granian --scenarios a,g
  /tmp/asgivenv/bin/python bench/asgi.py --rounds 1 --idle-conns 2000 --json asgi.json
  /tmp/asgivenv/bin/python bench/asgi.py --scenarios e --e-load push  # the old e

Stops only the processes it started, by their PID. Exit status 1 if a run failed.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import platform
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import peers  # noqa: E402  (bench/peers.py: its scenario drivers and process helpers)
from echo import (  # noqa: E402  (bench/echo.py's helpers, which peers.py uses too)
    HOST,
    background_load,
    build_loadgen,
    free_port,
    pick_cpus,
    proc_cpu_seconds,
    python_speed,
    rotation,
    run_loadgen,
    run_probe,
)
from peers import (  # noqa: E402
    LiveLoadgen,
    raise_nofile,
    scenario_echo,
    scenario_idle,
    scenario_relay,
)

ALL_SERVERS = ["uvicorn-tether", "uvicorn-sansio", "uvicorn-wsproto", "granian", "hypercorn"]
# Not run unless named: uvicorn with a no-op engine (bench/asgi_floor.py), row g only.
FLOOR = "uvicorn-floor"
ALL_SCENARIOS = ["a", "c", "e", "f", "g"]
ROWS = {k: peers.ROWS[k] for k in ALL_SCENARIOS}  # main() puts peers.e_label(args) in e
UVICORN_WS = {"uvicorn-tether": "tether.asgi:UvicornProtocol",
              "uvicorn-sansio": "websockets-sansio", "uvicorn-wsproto": "wsproto",
              FLOOR: "asgi_floor:FloorProtocol"}
LABELS = {"uvicorn-tether": "uvicorn + tether", "uvicorn-sansio": "uvicorn + websockets-sansio",
          "uvicorn-wsproto": "uvicorn + wsproto", "granian": "granian",
          "hypercorn": "hypercorn", FLOOR: "uvicorn + no-op engine (floor)"}
# issue 13: uvicorn + tether / uvicorn's default engine at most this, per row
TARGETS = {"a": 0.35, "c": 0.35, "e": 0.5, "f": 0.5, "g": 0.8}
BASE = "uvicorn-sansio"
MINE = "uvicorn-tether"


# --------------------------------------------------------------------------
# servers


def server_command(name: str, python: str, port: int, args: argparse.Namespace) -> list[str]:
    if name.startswith("uvicorn"):
        cmd = [python, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(BENCH_DIR),
               "--host", HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
               "--ws", UVICORN_WS[name], "--ws-per-message-deflate", "false",
               "--no-access-log"]
        if args.uvicorn_log_level:
            cmd += ["--log-level", args.uvicorn_log_level]
        return cmd
    if name == "granian":
        return [python, "-m", "granian", "--interface", "asgi", "--loop", "uvloop",
                "--host", HOST, "--port", str(port), "--workers", "1", "--no-access-log",
                "asgi_app:app"]
    if name == "hypercorn":
        return [python, "-m", "hypercorn", "--worker-class", "uvloop", "--workers", "1",
                "--backlog", "1024", "--bind", f"{HOST}:{port}", "asgi_app:app"]
    raise ValueError(name)


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(BENCH_DIR), str(REPO_DIR / "src")]  # the app; tether even without pip -e
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def check_server(name: str, python: str) -> str | None:
    module = {"granian": "granian", "hypercorn": "hypercorn"}.get(name, "uvicorn")
    probe = [python, "-c", f"import asgi_app, uvloop, {module}"]
    if name.startswith("uvicorn"):
        probe[-1] += ", httptools"
        probe[-1] += {"uvicorn-tether": "; import tether.asgi.uvicorn",
                      "uvicorn-sansio": ", websockets", "uvicorn-wsproto": ", wsproto",
                      FLOOR: ", asgi_floor"}[name]
    return run_probe(probe, server_env())


def versions(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m, sys\n"
            "print('python', sys.version.split()[0])\n"
            "for p in ('tether','uvicorn','websockets','wsproto','granian','hypercorn',"
            "'uvloop','httptools'):\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: pass\n")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line)


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/*/stat's ppid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


class AsgiServer(peers.Server):
    """peers.Server, for servers that serve from a child process: ``pid`` is the serving
    process (its VmRSS is f's figure), ``cpu()`` sums the whole process tree."""

    worker_pid: int | None = None
    tree: list[int] = []

    @property
    def pid(self) -> int:
        return self.worker_pid or self.proc.pid

    def find_worker(self) -> None:
        tree = process_tree(self.proc.pid)
        workers = []
        for p in tree[1:]:
            try:
                cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline:
                workers.append(p)
        if len(workers) > 1:
            raise RuntimeError(f"more than one worker process: {workers}")
        self.worker_pid = workers[0] if workers else None
        self.tree = tree
        self.cmdlines = {}
        for p in tree[1:]:
            try:
                self.cmdlines[p] = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                pass

    def stop(self) -> None:
        super().stop()
        # Children the main process left behind (it was killed, or did not wait for them):
        # ours, by PID, if that PID still runs the same command line.
        for p, cmdline in getattr(self, "cmdlines", {}).items():
            try:
                if Path(f"/proc/{p}/cmdline").read_bytes() == cmdline:
                    os.kill(p, signal.SIGKILL)
            except OSError:
                pass

    def cpu(self) -> float:
        total = 0.0
        for p in self.tree or [self.proc.pid]:
            u, s = proc_cpu_seconds(p)
            total += u + s
        return total


class Trigger:
    """A minimal WebSocket client for /trigger (blocking socket, masked frames)."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /trigger HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"/trigger: {head.splitlines()[0]!r}")

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("/trigger: connection closed by the server")
        self.buf += data

    def send(self, opcode: int, data: bytes) -> None:
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126
                                         else b"\xfe" + struct.pack("!H", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def recv_text(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        while True:
            while len(self.buf) < 2:
                self._read()
            opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            start = 2
            if n == 126:
                while len(self.buf) < 4:
                    self._read()
                n, start = struct.unpack("!H", self.buf[2:4])[0], 4
            while len(self.buf) < start + n:
                self._read()
            data, self.buf = self.buf[start:start + n], self.buf[start + n:]
            if opcode == 9:
                self.send(10, data)  # pong
            elif opcode == 1:
                return data.decode()
            elif opcode == 8:
                raise RuntimeError(f"/trigger: closed by the server ({data[:2].hex()})")

    def close(self) -> None:
        try:
            self.send(8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------
# scenarios (a, c, g: peers.scenario_echo; f: peers.scenario_idle; e: peers.scenario_relay
# at /relay; e with --e-load push: scenario_broadcast below)


def scenario_broadcast(srv: AsgiServer, port: int, loadgen: Path, cpu: int | None,
                       args: argparse.Namespace) -> dict[str, Any]:
    k, m = args.bcast_clients, args.bcast_messages
    expected = k * m
    lg = LiveLoadgen(loadgen, ["broadcast", "--path", "/bcast", "-c", str(k),
                               "--concurrency", "100", "-n", str(expected), "-d", "300",
                               "--timeout", "60"], port, cpu)
    trigger = None
    try:
        lg.expect("open", timeout=120)
        trigger = Trigger(port)
        time.sleep(0.3)  # the last handshakes settle on the server's side
        c0, t0 = srv.cpu(), time.monotonic()
        trigger.send(1, f"{k} {m} {args.bcast_size} {args.bcast_burst}".encode())
        lg.expect("done", timeout=120)
        wall = time.monotonic() - t0
        cpu_s = srv.cpu() - c0
        reply = trigger.recv_text(timeout=30)
        if reply != f"sent {m} to {k}":
            raise RuntimeError(f"/trigger answered {reply!r}")
        res = lg.finish(timeout=120)
    finally:
        if trigger is not None:
            trigger.close()
        lg.kill()
    if res["messages"] != expected:
        raise RuntimeError(f"{res['messages']} messages received, {expected} expected")
    return dict(res, deliveries=expected, server_cpu_s=cpu_s, scenario_wall_s=wall,
                server_cpu_us_per_delivery=cpu_s * 1e6 / expected,
                deliveries_per_s=expected / wall,
                loadgen_over_server_cpu=res["client_cpu_s"] / cpu_s if cpu_s else None)


def warm_up(port: int, loadgen: Path, cpu: int | None, seconds: float) -> None:
    if seconds > 0:  # peers.warm_up without its 1 MiB messages (no d here)
        run_loadgen(loadgen, ["echo", "-k", "10", "-s", "32", "-d", str(seconds)], port, cpu, 60)
        run_loadgen(loadgen, ["handshake", "-c", "10", "-n", "200"], port, cpu, 60)


def one_server_round(name: str, rnd: int, args: argparse.Namespace, loadgen: Path,
                     cpus: tuple[int | None, int | None], log_dir: Path,
                     results: dict[str, Any]) -> None:
    lg_cpu, srv_cpu = cpus
    res = results[name]

    def record(key: str, fn: Callable[[], dict[str, Any]], srv: AsgiServer) -> None:
        try:
            r = fn()
        except (RuntimeError, OSError, ValueError) as e:
            msg = str(e)
            if srv.proc.poll() is not None:
                msg += f" (server exited with status {srv.proc.returncode}: {srv.log_tail(4)})"
            res["errors"].append({"round": rnd, "scenario": key, "error": msg})
            print(f"  [{rnd + 1}] {name:<15} {key}: FAILED: {msg}", file=sys.stderr)
            return
        r["round"] = rnd
        res["runs"][key].append(r)
        _, field, fmt = ROWS[key]
        extra = ""
        if r.get("loadgen_over_server_cpu") is not None:
            extra = f"  (loadgen/server CPU {r['loadgen_over_server_cpu']:.2f})"
        print(f"  [{rnd + 1}] {name:<15} {key}: {fmt.format(r[field])}{extra}", file=sys.stderr)

    groups = []
    echo_keys = [k for k in ["f", "a", "c", "g"] if k in args.scenario_list
                 and (name != FLOOR or k == "g")]
    if echo_keys:
        groups.append(("echo", echo_keys))
    if "e" in args.scenario_list and name != FLOOR:
        groups.append(("relay" if args.e_load == "relay" else "broadcast", ["e"]))
    for mode, keys in groups:
        port = free_port()
        srv = AsgiServer(name, mode, server_command(name, args.python, port, args),
                         server_env(), srv_cpu, log_dir)
        try:
            try:
                srv.wait_ready(port)
                run_loadgen(loadgen, ["handshake", "-n", "1"], port, lg_cpu, timeout=30)
                srv.find_worker()
            except RuntimeError as e:
                for key in keys:
                    res["errors"].append({"round": rnd, "scenario": key,
                                          "error": f"{mode} server: {e}"})
                print(f"  [{rnd + 1}] {name:<15} {mode} server failed: {e}", file=sys.stderr)
                continue
            warmed = False
            for key in keys:
                if key == "f":
                    record(key, lambda: scenario_idle(srv, port, loadgen, lg_cpu, args), srv)
                elif key == "e" and args.e_load == "relay":
                    record(key, lambda: scenario_relay(srv, port, loadgen, lg_cpu, args,
                                                       path="/relay"), srv)
                elif key == "e":
                    record(key, lambda: scenario_broadcast(srv, port, loadgen, lg_cpu, args),
                           srv)
                else:
                    if not warmed and name != FLOOR:
                        try:
                            warm_up(port, loadgen, lg_cpu, args.warmup)
                        except RuntimeError as e:
                            print(f"  [{rnd + 1}] {name:<15} warm-up failed: {e}",
                                  file=sys.stderr)
                        warmed = True
                    record(key, functools.partial(scenario_echo, key, srv, port, loadgen,
                                                  lg_cpu, args), srv)
        finally:
            srv.stop()


# --------------------------------------------------------------------------
# report


def render(results: dict[str, Any], servers: list[str], scenarios: list[str],
           vers: dict[str, str]) -> tuple[str, dict[str, dict[str, float]],
                                          dict[str, dict[str, float]]]:
    def head(name: str) -> str:
        if name == FLOOR:
            return f"{LABELS[name]}, uvicorn {vers.get('uvicorn', '')}"
        if name.startswith("uvicorn"):
            engine = {"uvicorn-tether": "tether", "uvicorn-sansio": "websockets",
                      "uvicorn-wsproto": "wsproto"}[name]
            return f"{LABELS[name]} {vers.get(engine, '')}".strip()
        return f"{LABELS[name]} {vers.get(name, '')}".strip()

    def label_of(key: str) -> str:
        return ROWS[key][0].replace("10,000", f"{results['_idle_conns']:,}")

    medians: dict[str, dict[str, float]] = {s: {} for s in servers}
    lines = ["| scenario | " + " | ".join(head(s) for s in servers) + " |",
             "|---|" + "---:|" * len(servers)]
    for key in scenarios:
        _, field, fmt = ROWS[key]
        row = [label_of(key)]
        for s in servers:
            r = results[s]
            if r["status"] != "ok":
                row.append("skipped")
                continue
            vals = [run[field] for run in r["runs"][key]]
            if not vals:
                row.append("–" if s == FLOOR and key != "g" else "failed")
                continue
            med = statistics.median(vals)
            medians[s][key] = med
            cell = fmt.format(med)
            if len(vals) > 1:
                cell += f" ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)
    ratios: dict[str, dict[str, float]] = {}
    if MINE in servers:
        others = [s for s in servers if s != MINE]
        rl = ["| uvicorn + tether / server (< 1: tether's engine costs less) | "
              + " | ".join(head(s) for s in others) + " | target vs default engine |",
              "|---|" + "---:|" * (len(others) + 1)]
        for key in scenarios:
            mine = medians[MINE].get(key)
            row = [label_of(key).split(":")[0]]
            for s in others:
                v = medians[s].get(key)
                if mine and v:
                    ratios.setdefault(s, {})[key] = mine / v
                    row.append(f"{mine / v:.2f}x")
                else:
                    row.append("–")
            target = TARGETS[key]
            got = ratios.get(BASE, {}).get(key)
            mark = "" if got is None else (" met" if got <= target else " **missed**")
            vs_granian = ratios.get("granian", {}).get(key)
            if vs_granian is not None and vs_granian >= 1:
                mark += ", behind granian"
            row.append(f"≤ {target:.2f}x{mark}")
            rl.append("| " + " | ".join(row) + " |")
        table += "\n\n" + "\n".join(rl)
    return table, medians, ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=",".join(ALL_SERVERS),
                   help=f"comma-separated, among {','.join(ALL_SERVERS)} (default: all), "
                   f"and {FLOOR} (uvicorn's own cost: a no-op engine, row g only)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                   help="comma-separated among a,c,e,f,g (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, servers interleaved (3)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per run of a, c (2)")
    p.add_argument("--duration-g", type=float, default=2.0, help="seconds per run of g (2)")
    peers.add_e_arguments(p)  # --e-load relay|push, --relay-*, --bcast-*: peers.py's own
    p.add_argument("--idle-conns", type=int, default=10000, help="f: idle connections (10000)")
    p.add_argument("--idle-settle", type=float, default=0.5,
                   help="f: seconds between the last handshake and the RSS sample (0.5)")
    p.add_argument("--warmup", type=float, default=0.3,
                   help="seconds of echo traffic before a, c, g on each fresh server (0.3)")
    p.add_argument("--uvicorn-log-level", default=None,
                   help="uvicorn's --log-level (default: uvicorn's, info: one line per "
                        "accepted WebSocket)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    p.add_argument("--json", metavar="FILE", help="also write every run, medians and ratios")
    p.add_argument("--no-pin", action="store_true", help="don't pin to CPUs")
    p.add_argument("--rebuild", action="store_true", help="recompile the load generator")
    args = p.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in servers:
        if s not in ALL_SERVERS + [FLOOR]:
            p.error(f"unknown server {s!r}")
    for s in args.scenario_list:
        if s not in ROWS:
            p.error(f"unknown scenario {s!r}")
    scenarios = [s for s in ALL_SCENARIOS if s in args.scenario_list]
    ROWS["e"] = (peers.e_label(args), *ROWS["e"][1:])

    raise_nofile()
    need = args.idle_conns + 64
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if "f" in scenarios and soft != resource.RLIM_INFINITY and soft < need:
        print(f"warning: the open-files limit is {soft}; f needs about {need} in the server "
              f"and in the load generator", file=sys.stderr)

    loadgen = build_loadgen(force=args.rebuild)
    cpus = pick_cpus(args.no_pin)
    results: dict[str, Any] = {"_idle_conns": args.idle_conns}
    runnable = []
    for name in servers:
        reason = check_server(name, args.python)
        if reason:
            results[name] = {"status": "skipped", "reason": reason}
            print(f"{name}: skipped: {reason}", file=sys.stderr)
        else:
            results[name] = {"status": "ok", "runs": {k: [] for k in scenarios}, "errors": []}
            runnable.append(name)
    vers = versions(args.python)
    busy = background_load()
    speed = python_speed(args.python, cpus[1])
    pin = (f"load generator on CPU {cpus[0]}, servers on CPU {cpus[1]}"
           if cpus[0] is not None else "no CPU pinning")
    print(f"servers: {', '.join(runnable) or 'none'}; scenarios {','.join(scenarios)}; "
          f"{args.rounds} rounds; {pin}; background load "
          f"{'?' if busy is None else f'{busy:.2f}'} cores", file=sys.stderr)

    log_dir = Path(tempfile.mkdtemp(prefix="tether-asgi-"))
    started = time.monotonic()
    interrupted = False
    try:
        for rnd in range(args.rounds):
            order = rotation(runnable, rnd)
            print(f"round {rnd + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr)
            for name in order:
                one_server_round(name, rnd, args, loadgen, cpus, log_dir, results)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; reporting what was measured", file=sys.stderr)
    total = time.monotonic() - started

    table, medians, ratios = render(results, servers, scenarios, vers)
    cmd = "python bench/asgi.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print()
    print(f"## ASGI servers ({args.rounds} rounds, medians (min–max); {pin}; {total:.0f} s)")
    print()
    print(table)
    print()
    notes = [f"- command: `{cmd.strip()}`",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())),
             f"- a, c {args.duration:g} s per run, g {args.duration_g:g} s; e "
             + peers.e_note(args)
             + (f", {args.bcast_burst} per loop turn" if args.e_load == "push" else "")
             + f"; f {args.idle_conns} connections; uvicorn log level "
             f"{args.uvicorn_log_level or 'info (default)'}"]
    if speed is not None:
        notes.append(f"- Python speed reference on the server CPU: sum(range(1000)) = "
                     f"{speed:.1f} µs")
    lg = []
    for key in scenarios:
        vals = [run["loadgen_over_server_cpu"] for s in runnable for run in results[s]["runs"][key]
                if run.get("loadgen_over_server_cpu") is not None]
        if vals:
            lg.append(f"{key} {min(vals):.2f}–{max(vals):.2f}")
    if lg:
        notes.append("- load generator CPU / server CPU, range over servers and rounds: "
                     + ", ".join(lg))
    for s in servers:
        r = results[s]
        if r["status"] == "skipped":
            notes.append(f"- {s}: skipped ({r['reason']})")
        elif r["errors"]:
            e = r["errors"][0]
            notes.append(f"- {s}: {len(r['errors'])} failed run(s); first ({e['scenario']}, "
                         f"round {e['round'] + 1}): {e['error'].splitlines()[0][:300]}")
    if busy is not None and busy > 0.2:
        notes.append(f"- warning: {busy:.1f} cores were busy with other processes at the start")
    print("\n".join(notes))
    print(f"\n(server logs in {log_dir})", file=sys.stderr)
    if args.json:
        doc = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": cmd.strip(),
                        "platform": platform.platform(), "cpus": os.cpu_count(),
                        "pin": {"loadgen": cpus[0], "server": cpus[1]}, "versions": vers,
                        "options": {k: v for k, v in vars(args).items() if k != "scenario_list"},
                        "commands": {s: server_command(s, args.python, 0, args)
                                     for s in servers},
                        "python_sum_range_1000_us": speed, "background_busy_cores": busy,
                        "total_s": total, "interrupted": interrupted},
               "servers": {s: results[s] for s in servers},
               "medians": medians,
               "ratios_tether_over_server": ratios}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    failed = any(results[s].get("errors") for s in runnable)
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
