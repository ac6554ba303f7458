#!/usr/bin/env python3
"""Peer benchmark: tether against websockets, aiohttp, Node's ws, picows and a minimal C
server (issue 6).

Seven scenarios, each server measured on loopback with the C load generator
(bench/loadgen.c) pinned to one CPU and the server pinned to the other:

  a  1 connection, 32-byte text, 100 in flight      server CPU µs per message
  b  1 connection, 32-byte text, 1 in flight        server CPU µs per message; p50 round trip µs
  c  100 connections, 10 in flight each             server CPU µs per message
  d  1 MiB binary echo, 1 in flight                 server CPU µs per MB (10^6 bytes)
  e  broadcast relay, 1,000 clients: one sends      server CPU µs per delivery
     1,000 × 32 B (100 in flight), all receive all
  f  10,000 idle connections                        KiB of server RSS per connection
  g  connect + handshake + close, 10 concurrent     server CPU µs per handshake

Server CPU is utime+stime of the server process (/proc/<pid>/stat), sampled around the
measured part only. Compression is off on both sides. Rounds interleave the servers (the
order rotates every round); the table shows medians across rounds, then each server's ratio
to picows and to the minimal C server, in the same run (issue 16's targets are these ratios;
every row is "lower is better": < 1 beats the reference). b has two rows: server CPU per
message and the p50 round trip. `tether` is `tether echo` as a user runs it (logging on,
heartbeats at the default interval); `tether-cb` a tether.Listener echo.

e is the independent checker's load (../shared/perf-scenarios.md): every server is a relay
that sends each message it receives to every open connection, the sender included. The
load generator opens 1,000 connections (100 handshakes at a time); connection 0 sends 100
warm-up messages, which every connection must receive, then (after the server's CPU is
sampled) 1,000 measured messages of 32 bytes, at most 100 in flight (sent, not yet received
back by the sender); the run ends when every connection has received every message, and the
server's CPU is sampled again. CPU µs per delivery = server CPU / (1,000 × 1,000). The client
sleeps 1 ms after each batch of epoll events, as the checker's does, so that messages pile
up. `tether` is `tether broadcast` as a user runs it (logging on, default heartbeats and
--max-buffered); `tether-cb` a tether.Listener whose on_message calls tether.broadcast();
`tether-py` the same command without the compiled extensions; the others their library's
usual way: websockets.broadcast(), a loop of transport.send() (picows), a loop of
client.send() over wss.clients (Node ws), awaiting send_str on each client in turn
(aiohttp), and one send() per connection per read (the minimal C server). The previous e,
where the server itself pushes 300 messages to 1,000 clients on SIGUSR2, is still there with
--e-load push.

Usage:
  python bench/peers.py                                  # all servers, 3 rounds, ~6-8 min
  python bench/peers.py --servers tether,picows --rounds 1 --duration 1
  python bench/peers.py --json peers.json

Each round, for each server: start the echo server fresh; one handshake as a sanity check;
f (before/after VmRSS around 10,000 idle connections); a short warm-up; a, b, c, d, g; stop.
Then start the relay (broadcast) server fresh; e; stop. A server that cannot start is reported as
skipped with the reason; a scenario that fails is reported as failed and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SERVERS_DIR = BENCH_DIR / "servers"
NODE_DIR = BENCH_DIR / ".node"
BUILD_DIR = BENCH_DIR / ".build"
C_SERVER_SRC = SERVERS_DIR / "minimal_server.c"
C_SERVER_BIN = BUILD_DIR / "minimal_server"
sys.path.insert(0, str(BENCH_DIR))

from echo import (  # noqa: E402  (bench/echo.py: the echo benchmark's helpers)
    stop_process,
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

ALL_SERVERS = ["tether", "tether-cb", "tether-py", "websockets", "aiohttp", "node-ws", "picows",
               "c-minimal"]
ALL_SCENARIOS = ["a", "b", "c", "d", "e", "f", "g"]

# (row label, key of the figure in a run's result, format)
ROWS = {
    "a": ("a. 1 connection, 32-byte text, 100 in flight: CPU µs per message",
          "server_cpu_us_per_msg", "{:.2f}"),
    "b": ("b. 1 connection, 1 in flight: CPU µs per message", "server_cpu_us_per_msg",
          "{:.1f}"),
    "c": ("c. 100 connections, 10 in flight each: CPU µs per message",
          "server_cpu_us_per_msg", "{:.2f}"),
    "d": ("d. 1 MiB binary echo: CPU µs per MB", "server_cpu_us_per_mb", "{:.0f}"),
    # main() puts e_label(args) here (the relay load's by default); this one is a placeholder
    # (asgi.py and profile.py use e_label(args) too).
    "e": ("e. broadcast to 1,000 clients: CPU µs per delivery",
          "server_cpu_us_per_delivery", "{:.2f}"),
    "f": ("f. 10,000 idle connections: KiB RSS per connection", "kib_per_conn", "{:.1f}"),
    "g": ("g. connect + handshake + close: CPU µs per handshake",
          "server_cpu_us_per_handshake", "{:.0f}"),
}

# More figures of one scenario, each a row of its own: (scenario, row key, label, field, format)
MORE_ROWS = [("b", "b-p50", "b. 1 connection, 1 in flight: p50 round trip µs", "p50_us",
              "{:.1f}")]

ECHO_ARGS = {
    "a": ["echo", "-c", "1", "-k", "100", "-s", "32", "--text"],
    "b": ["echo", "-c", "1", "-k", "1", "-s", "32", "--text"],
    "c": ["echo", "-c", "100", "-k", "10", "-s", "32", "--text"],
    "d": ["echo", "-c", "1", "-k", "1", "-s", "1M", "--binary"],
    "g": ["handshake", "-c", "10"],
}


# --------------------------------------------------------------------------
# processes


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def child_setup(cpu: int | None) -> Callable[[], None]:
    """preexec_fn: default SIGINT, the fd limit raised to its hard limit, CPU pinning."""

    def fn() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise_nofile()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return fn


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """One server process that we started (and only ever signal by its PID)."""

    def __init__(self, name: str, mode: str, cmd: list[str], env: dict[str, str],
                 cpu: int | None, log_dir: Path):
        self.name = name
        self.mode = mode
        self.log_path = log_dir / f"{name}-{mode}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=child_setup(cpu))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 8) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").strip()
                             .splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, port: int, timeout: float = 30) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with status {self.proc.returncode} before "
                                   f"listening: {self.log_tail()}")
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"did not accept connections within {timeout:.0f} s")

    def cpu(self) -> float:
        u, s = proc_cpu_seconds(self.proc.pid)
        return u + s

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


# --------------------------------------------------------------------------
# the servers under test


def ensure_node_ws() -> str | None:
    """Install ws + bufferutil into bench/.node when missing; None or the reason it failed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        return "node not found"
    if (NODE_DIR / "node_modules" / "ws").is_dir() and \
            (NODE_DIR / "node_modules" / "bufferutil").is_dir():
        return None
    if not npm:
        return "npm not found (needed to install ws and bufferutil)"
    NODE_DIR.mkdir(exist_ok=True)
    pkg = NODE_DIR / "package.json"
    if not pkg.exists():
        pkg.write_text('{"name": "tether-bench-peers", "private": true}\n')
    print(f"installing ws and bufferutil into {NODE_DIR} (npm)", file=sys.stderr)
    r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "ws@8", "bufferutil@4"],
                       cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return "npm install ws bufferutil failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


def build_c_server(force: bool = False) -> str | None:
    """Compile servers/minimal_server.c into bench/.build/ when missing or older than its
    source (as echo.build_loadgen does); None or the reason it failed."""
    if (not force and C_SERVER_BIN.exists()
            and C_SERVER_BIN.stat().st_mtime >= C_SERVER_SRC.stat().st_mtime):
        return None
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return "no C compiler found (install gcc)"
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = C_SERVER_BIN.with_suffix(".tmp")
    cmd = [cc, "-O2", "-o", str(tmp), str(C_SERVER_SRC)]
    print(f"building the minimal C server: {' '.join(cmd)}", file=sys.stderr)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"compiling minimal_server.c failed: {e}"
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        lines = r.stderr.strip().splitlines()
        return "compiling minimal_server.c failed: " + (lines[0] if lines else
                                                         f"status {r.returncode}")
    os.replace(tmp, C_SERVER_BIN)
    return None


def server_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    if name.startswith("tether"):
        src = str(REPO_DIR / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if name == "tether-cb":
        env["TETHER_PEER_API"] = "callbacks"
    if name == "tether-py":  # the pure-Python fallback: what users without a compiler get
        env["TETHER_NO_EXTENSIONS"] = "1"
    if name == "node-ws":
        env["NODE_PATH"] = str(NODE_DIR / "node_modules")
    return env


def server_command(name: str, mode: str, python: str, port: int, args: argparse.Namespace
                   ) -> list[str]:
    bc = ["--clients", str(args.bcast_clients), "--messages", str(args.bcast_messages),
          "--size", str(args.bcast_size), "--burst", str(args.bcast_burst)]
    if name in ("tether", "tether-py") and mode in ("echo", "relay"):
        # As a user runs it (issue 16): logging on (to the server's log file here) and
        # heartbeats at the default interval. Only compression is off, as for every server.
        # "relay" is `tether broadcast`: every message to every open client, sender included.
        command = "echo" if mode == "echo" else "broadcast"
        return [python, "-m", "tether", command, "--host", HOST, "--port", str(port),
                "--no-compression", "--max-size", "2000000"]
    if name.startswith("tether"):
        script = [python, str(SERVERS_DIR / "tether_peer.py")]
    elif name == "node-ws":
        script = [shutil.which("node") or "node", str(SERVERS_DIR / "ws_peer.js")]
    elif name == "c-minimal":
        script = [str(C_SERVER_BIN)]
    else:
        script = [python, str(SERVERS_DIR / f"{name}_peer.py")]
    return script + [mode, HOST, str(port)] + bc


def check_server(name: str, python: str, rebuild: bool = False) -> str | None:
    if name == "c-minimal":
        return build_c_server(force=rebuild)
    if name == "node-ws":
        reason = ensure_node_ws()
        if reason:
            return reason
        probe = [shutil.which("node") or "node", "-e",
                 "require('ws'); const b = require('bufferutil'); "
                 "if (!require('node-gyp-build').path) throw new Error('no native bufferutil')"]
    elif name.startswith("tether"):
        probe = [python, "-c", "import tether, tether.asyncio.broadcast"]
    elif name == "websockets":
        probe = [python, "-c", "import websockets.asyncio.server"]
    elif name == "aiohttp":
        probe = [python, "-c", "import aiohttp.web"]
    elif name == "picows":
        probe = [python, "-c", "import picows, uvloop"]
    else:
        return f"unknown server {name!r}"
    return run_probe(probe, server_env(name))


def versions(python: str) -> dict[str, str]:
    out: dict[str, str] = {}
    code = ("import importlib.metadata as m\n"
            "for p in ('tether','websockets','aiohttp','picows','uvloop','httptools'):\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: pass\n")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        k, v = line.split()
        out[k] = v
    try:
        pj = json.loads((NODE_DIR / "node_modules" / "ws" / "package.json").read_text())
        out["ws"] = pj["version"]
        out["node"] = subprocess.run(["node", "--version"], capture_output=True,
                                     text=True).stdout.strip()
    except (OSError, ValueError, KeyError):
        pass
    out["python"] = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                   capture_output=True, text=True).stdout.strip()
    return out


# --------------------------------------------------------------------------
# the load generator (run_loadgen comes from echo.py)


class LiveLoadgen:
    """A load generator whose --notify lines on stderr we wait for while it runs."""

    def __init__(self, loadgen: Path, lg_args: list[str], port: int, cpu: int | None):
        self.cmd = [str(loadgen)] + lg_args + ["--notify", "--host", HOST, "--port", str(port)]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=child_setup(cpu))
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, word: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"load generator: no '{word}' within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait()
                raise RuntimeError("load generator exited early: " + " / ".join(self.errors))
            if line == word:
                return
            self.errors.append(line)

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(input="stop\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"load generator did not finish within {timeout:.0f} s")
        while True:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                break
            if line is None:
                break
            self.errors.append(line)
        if self.proc.returncode != 0:
            raise RuntimeError("load generator: " + (" / ".join(self.errors)
                                                     or f"status {self.proc.returncode}"))
        return json.loads(out.strip().splitlines()[-1])

    def send(self, line: str) -> None:
        """A line on the load generator's stdin (relay mode: "go on")."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the process we started, by its PID
            self.proc.wait()


# --------------------------------------------------------------------------
# scenarios


def scenario_echo(key: str, srv: Server, port: int, loadgen: Path, cpu: int | None,
                  args: argparse.Namespace) -> dict[str, Any]:
    duration = args.duration_g if key == "g" else args.duration
    c0, t0 = srv.cpu(), time.monotonic()
    res = run_loadgen(loadgen, ECHO_ARGS[key] + ["-d", str(duration)], port, cpu,
                      timeout=duration + 60)
    wall = time.monotonic() - t0
    cpu_s = srv.cpu() - c0
    out = dict(res, server_cpu_s=cpu_s, scenario_wall_s=wall, server_cpu_util=cpu_s / wall)
    if key == "g":
        n = res["handshakes"] or 1
        out["server_cpu_us_per_handshake"] = cpu_s * 1e6 / n
    else:
        n = res["messages"] or 1
        out["server_cpu_us_per_msg"] = cpu_s * 1e6 / n
        out["server_cpu_us_per_mb"] = cpu_s * 1e6 / (res["bytes"] / 1e6) if res["bytes"] else 0
    out["loadgen_over_server_cpu"] = res["client_cpu_s"] / cpu_s if cpu_s else None
    return out


def scenario_idle(srv: Server, port: int, loadgen: Path, cpu: int | None,
                  args: argparse.Namespace) -> dict[str, Any]:
    n = args.idle_conns
    time.sleep(0.2)
    rss0, c0 = vm_rss_kib(srv.pid), srv.cpu()
    lg = LiveLoadgen(loadgen, ["idle", "-c", str(n), "--concurrency", "100", "-d", "300",
                               "--timeout", "30"], port, cpu)
    try:
        lg.expect("open", timeout=120)
        t_open = time.monotonic()
        time.sleep(args.idle_settle)
        rss1 = vm_rss_kib(srv.pid)
        c1 = srv.cpu()
        res = lg.finish(timeout=120)
    finally:
        lg.kill()
    return dict(res, rss_before_kib=rss0, rss_after_kib=rss1, kib_per_conn=(rss1 - rss0) / n,
                server_cpu_open_s=c1 - c0,
                server_cpu_us_per_open=(c1 - c0) * 1e6 / n,
                settle_s=time.monotonic() - t_open,
                loadgen_over_server_cpu=res["client_cpu_s"] / (c1 - c0) if c1 > c0 else None)


def scenario_broadcast(srv: Server, port: int, loadgen: Path, cpu: int | None,
                       args: argparse.Namespace) -> dict[str, Any]:
    k, m = args.bcast_clients, args.bcast_messages
    expected = k * m
    lg = LiveLoadgen(loadgen, ["broadcast", "-c", str(k), "--concurrency", "100",
                               "-n", str(expected), "-d", "300", "--timeout", "60"], port, cpu)
    try:
        lg.expect("open", timeout=120)
        time.sleep(0.3)  # the last handshakes settle on the server's side
        c0, t0 = srv.cpu(), time.monotonic()
        os.kill(srv.pid, signal.SIGUSR2)  # the server we started: "broadcast now"
        lg.expect("done", timeout=120)
        wall = time.monotonic() - t0
        cpu_s = srv.cpu() - c0
        res = lg.finish(timeout=120)
    finally:
        lg.kill()
    if res["messages"] != expected:
        raise RuntimeError(f"{res['messages']} messages received, {expected} expected")
    return dict(res, deliveries=expected, server_cpu_s=cpu_s, scenario_wall_s=wall,
                server_cpu_us_per_delivery=cpu_s * 1e6 / expected,
                deliveries_per_s=expected / wall,
                loadgen_over_server_cpu=res["client_cpu_s"] / cpu_s if cpu_s else None)


def scenario_relay(srv: Server, port: int, loadgen: Path, cpu: int | None,
                   args: argparse.Namespace, path: str | None = None) -> dict[str, Any]:
    """e as the independent checker runs it: connection 0 of K sends N messages (window W),
    the server relays each to every open connection, every connection must receive all.
    path: the request path of every connection (the load generator's default, /, if None;
    bench/asgi.py's app relays at /relay)."""
    k, n = args.relay_clients, args.relay_messages
    expected = k * n
    lg = LiveLoadgen(loadgen, ["relay", "-c", str(k), "--concurrency", "100", "-n", str(n),
                               "-k", str(args.relay_window), "-s", str(args.relay_size),
                               "--text", "--warmup", str(args.relay_warmup),
                               "--sleep-us", str(args.relay_sleep_us), "--timeout", "60"]
                     + (["--path", path] if path else []),
                     port, cpu)
    try:
        lg.expect("open", timeout=120)
        lg.expect("warm", timeout=120)  # every connection has every warm-up message
        c0, t0 = srv.cpu(), time.monotonic()
        lg.send("go")
        lg.expect("done", timeout=300)  # every connection has every measured message
        wall = time.monotonic() - t0
        cpu_s = srv.cpu() - c0
        res = lg.finish(timeout=120)
    finally:
        lg.kill()
    total = k * (n + args.relay_warmup)
    if res["deliveries"] != expected or res["received_total"] != total:
        raise RuntimeError(f"{res['received_total']} messages received, {total} expected")
    return dict(res, server_cpu_s=cpu_s, scenario_wall_s=wall,
                server_cpu_us_per_delivery=cpu_s * 1e6 / expected,
                server_cpu_util=cpu_s / wall,
                loadgen_over_server_cpu=res["client_cpu_s"] / cpu_s if cpu_s else None)


def warm_up(port: int, loadgen: Path, cpu: int | None, seconds: float) -> None:
    if seconds > 0:
        run_loadgen(loadgen, ["echo", "-k", "10", "-s", "32", "-d", str(seconds)], port, cpu, 60)
        run_loadgen(loadgen, ["echo", "-k", "1", "-s", "1M", "--binary", "-n", "5"], port, cpu, 60)
        run_loadgen(loadgen, ["handshake", "-c", "10", "-n", "200"], port, cpu, 60)


# --------------------------------------------------------------------------
# main


def one_server_round(name: str, rnd: int, args: argparse.Namespace, loadgen: Path,
                     cpus: tuple[int | None, int | None], log_dir: Path,
                     results: dict[str, Any]) -> None:
    lg_cpu, srv_cpu = cpus
    res = results[name]
    echo_keys = [k for k in ["f", "a", "b", "c", "d", "g"] if k in args.scenario_list]

    def record(key: str, fn: Callable[[], dict[str, Any]], srv: Server) -> None:
        try:
            r = fn()
        except (RuntimeError, OSError, ValueError) as e:
            msg = str(e)
            if srv.proc.poll() is not None:
                msg += f" (server exited with status {srv.proc.returncode}: {srv.log_tail(4)})"
            res["errors"].append({"round": rnd, "scenario": key, "error": msg})
            print(f"  [{rnd + 1}] {name:<10} {key}: FAILED: {msg}", file=sys.stderr)
            return
        r["round"] = rnd
        res["runs"][key].append(r)
        label, field, fmt = ROWS[key]
        extra = ""
        if r.get("loadgen_over_server_cpu") is not None:
            extra = f"  (loadgen/server CPU {r['loadgen_over_server_cpu']:.2f})"
        print(f"  [{rnd + 1}] {name:<10} {key}: {fmt.format(r[field])}{extra}", file=sys.stderr)

    groups = []
    if echo_keys:
        groups.append(("echo", echo_keys))
    if "e" in args.scenario_list:
        groups.append(("relay" if args.e_load == "relay" else "broadcast", ["e"]))
    for mode, keys in groups:
        port = free_port()
        cmd = server_command(name, mode, args.python, port, args)
        srv = Server(name, mode, cmd, server_env(name), srv_cpu, log_dir)
        try:
            try:
                srv.wait_ready(port)
                run_loadgen(loadgen, ["handshake", "-n", "1"], port, lg_cpu, timeout=30)
            except RuntimeError as e:
                for key in keys:
                    res["errors"].append({"round": rnd, "scenario": key,
                                          "error": f"{mode} server: {e}"})
                print(f"  [{rnd + 1}] {name:<10} {mode} server failed: {e}", file=sys.stderr)
                continue
            warmed = False
            for key in keys:
                if key == "f":
                    record(key, lambda: scenario_idle(srv, port, loadgen, lg_cpu, args), srv)
                    continue
                if key == "e":
                    fn = scenario_relay if args.e_load == "relay" else scenario_broadcast
                    record(key, lambda: fn(srv, port, loadgen, lg_cpu, args), srv)
                    continue
                if not warmed:
                    try:
                        warm_up(port, loadgen, lg_cpu, args.warmup)
                    except RuntimeError as e:
                        print(f"  [{rnd + 1}] {name:<10} warm-up failed: {e}", file=sys.stderr)
                    warmed = True
                record(key, lambda k=key: scenario_echo(k, srv, port, loadgen, lg_cpu, args),
                       srv)
        finally:
            srv.stop()


def render(results: dict[str, Any], servers: list[str], scenarios: list[str], vers: dict
           ) -> tuple[str, dict[str, dict[str, float]]]:
    def head(name: str) -> str:
        v = {"tether": vers.get("tether"), "tether-cb": vers.get("tether"),
             "tether-py": vers.get("tether"),
             "websockets": vers.get("websockets"),
             "aiohttp": vers.get("aiohttp"), "picows": vers.get("picows"),
             "node-ws": vers.get("ws")}.get(name)
        label = {"node-ws": "Node ws", "picows": "picows", "tether": "tether (coroutines)",
                 "tether-cb": "tether (callbacks)",
                 "tether-py": "tether (pure Python)",
                 "c-minimal": "minimal C server"}.get(name, name)
        if name == "node-ws":
            label += f" {v} (+bufferutil)" if v else ""
        elif name == "picows":
            label += f" {v} (uvloop)" if v else ""
        elif v:
            label += f" {v}"
        return label

    medians: dict[str, dict[str, float]] = {s: {} for s in servers}
    lines = ["| scenario | " + " | ".join(head(s) for s in servers) + " |",
             "|---|" + "---:|" * len(servers)]
    rows = table_rows(scenarios)
    for scenario, key, label, field, fmt in rows:
        row = [label]
        for s in servers:
            r = results[s]
            if r["status"] != "ok":
                row.append("skipped")
                continue
            vals = [run[field] for run in r["runs"][scenario] if field in run]
            if not vals:
                row.append("failed")
                continue
            med = statistics.median(vals)
            medians[s][key] = med
            cell = fmt.format(med)
            if len(vals) > 1:
                cell += f" ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)
    # Issue 16's targets are ratios in one run: each server's median over picows' and over
    # the minimal C server's (every row is "lower is better": < 1 beats the reference).
    ratios: dict[str, dict[str, float]] = {s: {} for s in servers}
    for base_name, title in (("picows", "server / picows (< 1: better than picows)"),
                             ("c-minimal", "server / minimal C server (the floor)")):
        if base_name not in servers:
            continue
        others = [s for s in servers if s != base_name]
        rl = [f"| {title} | " + " | ".join(head(s) for s in others) + " |",
              "|---|" + "---:|" * len(others)]
        for scenario, key, label, field, fmt in rows:
            base = medians[base_name].get(key)
            row = [label.split(":")[0] + ("" if key == scenario else " (" + label.split(": ")[-1]
                                          + ")")]
            for s in others:
                v = medians[s].get(key)
                if base and v:
                    if base_name == "picows":
                        ratios[s][key] = v / base
                    row.append(f"{v / base:.2f}x")
                else:
                    row.append("–")
            rl.append("| " + " | ".join(row) + " |")
        table += "\n\n" + "\n".join(rl)
    return table, ratios


def table_rows(scenarios: list[str]) -> list[tuple[str, str, str, str, str]]:
    """Every row of the table: (scenario, row key, label, field of the run, format)."""
    rows = []
    for key in scenarios:
        label, field, fmt = ROWS[key]
        rows.append((key, key, label, field, fmt))
        rows.extend(row for row in MORE_ROWS if row[0] == key)
    return rows


def add_e_arguments(p: argparse.ArgumentParser) -> None:
    """e's options and defaults: the relay load (the default) and the old push load. Shared
    with bench/profile.py and bench/asgi.py, which run e with scenario_relay too."""
    p.add_argument("--e-load", choices=["relay", "push"], default="relay",
                   help="e: relay (default; the checker's load: one client sends, the server "
                        "relays to all) or push (the server broadcasts on its own, on SIGUSR2)")
    p.add_argument("--relay-clients", type=int, default=1000, help="e: clients (1000)")
    p.add_argument("--relay-messages", type=int, default=1000,
                   help="e: measured messages sent by one client, relayed to all (1000)")
    p.add_argument("--relay-window", type=int, default=100,
                   help="e: messages in flight, sent and not yet back at the sender (100)")
    p.add_argument("--relay-size", type=int, default=32, help="e: bytes of text per message (32)")
    p.add_argument("--relay-warmup", type=int, default=100,
                   help="e: warm-up messages before the measured ones, not counted (100)")
    p.add_argument("--relay-sleep-us", type=int, default=1000,
                   help="e: the client's sleep after each batch of epoll events, µs (1000)")
    p.add_argument("--bcast-clients", type=int, default=1000,
                   help="e with --e-load push: subscribers (1000)")
    p.add_argument("--bcast-messages", type=int, default=300,
                   help="e with --e-load push: messages broadcast to every subscriber (300)")
    p.add_argument("--bcast-size", type=int, default=32,
                   help="e with --e-load push: bytes of text per message (32)")
    p.add_argument("--bcast-burst", type=int, default=10,
                   help="e with --e-load push: messages per turn of the event loop (10)")


def e_label(args: argparse.Namespace) -> str:
    """e's row label for args.e_load (relay or push)."""
    if args.e_load == "relay":
        return (f"e. {args.relay_clients:,} clients, one sends {args.relay_messages:,} × "
                f"{args.relay_size} B ({args.relay_window} in flight), relayed to all: "
                "CPU µs per delivery")
    return (f"e. server pushes {args.bcast_messages} × {args.bcast_size} B to "
            f"{args.bcast_clients:,} clients: CPU µs per delivery")


def e_note(args: argparse.Namespace) -> str:
    """e's load in words, for a report's notes (after "e ")."""
    if args.e_load == "relay":
        return (f"relay: {args.relay_clients} clients, one sends {args.relay_messages} "
                f"messages of {args.relay_size} B ({args.relay_window} in flight, "
                f"+{args.relay_warmup} warm-up), every client receives all; client sleeps "
                f"{args.relay_sleep_us} µs per batch of events")
    return (f"push: {args.bcast_clients} clients x {args.bcast_messages} messages of "
            f"{args.bcast_size} B")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=",".join(ALL_SERVERS),
                   help=f"comma-separated, among {','.join(ALL_SERVERS)} (default: all)")
    p.add_argument("--scenarios", default="a,b,c,d,e,f,g", help="comma-separated among a-g")
    p.add_argument("--rounds", type=int, default=3, help="rounds, servers interleaved (3)")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds per run of a, b, c, d (default 2)")
    p.add_argument("--duration-g", type=float, default=2.0,
                   help="seconds per run of g, the handshake scenario (default 2)")
    add_e_arguments(p)
    p.add_argument("--idle-conns", type=int, default=10000, help="f: idle connections (10000)")
    p.add_argument("--idle-settle", type=float, default=0.5,
                   help="f: seconds between the last handshake and the RSS sample (0.5)")
    p.add_argument("--warmup", type=float, default=0.3,
                   help="seconds of echo traffic before a-d, g on each fresh server (0.3)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the Python servers")
    p.add_argument("--json", metavar="FILE", help="also write every run, medians and ratios")
    p.add_argument("--no-pin", action="store_true", help="don't pin to CPUs")
    p.add_argument("--rebuild", action="store_true",
                   help="recompile the load generator and the minimal C server")
    args = p.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in servers:
        if s not in ALL_SERVERS:
            p.error(f"unknown server {s!r}")
    for s in args.scenario_list:
        if s not in ROWS:
            p.error(f"unknown scenario {s!r}")
    scenarios = [s for s in ALL_SCENARIOS if s in args.scenario_list]
    ROWS["e"] = (e_label(args), *ROWS["e"][1:])

    raise_nofile()
    need = args.idle_conns + 64
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if "f" in scenarios and soft != resource.RLIM_INFINITY and soft < need:
        print(f"warning: the open-files limit is {soft}; f needs about {need} in the server "
              f"and in the load generator", file=sys.stderr)

    loadgen = build_loadgen(force=args.rebuild)
    cpus = pick_cpus(args.no_pin)
    results: dict[str, Any] = {}
    runnable = []
    for name in servers:
        reason = check_server(name, args.python, args.rebuild)
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

    log_dir = Path(tempfile.mkdtemp(prefix="tether-peers-"))
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

    table, ratios = render(results, servers, scenarios, vers)
    cmd = "python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print()
    print(f"## Peers ({args.rounds} rounds, medians (min–max); {pin}; {total:.0f} s)")
    print()
    print(table)
    print()
    notes = [f"- command: `{cmd.strip()}`",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())),
             f"- a–d {args.duration:g} s per run, g {args.duration_g:g} s; e "
             + e_note(args) + f"; f {args.idle_conns} connections"]
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
                        "python_sum_range_1000_us": speed, "background_busy_cores": busy,
                        "total_s": total, "interrupted": interrupted},
               "servers": results,
               "medians": {s: {key: statistics.median([r[field] for r in results[s]["runs"][k]])
                               for k, key, _, field, _ in table_rows(scenarios)
                               if results[s].get("runs", {}).get(k)}
                           for s in servers},
               "ratios_server_over_picows": ratios}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    failed = any(results[s].get("errors") for s in runnable)
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
