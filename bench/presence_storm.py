#!/usr/bin/env python3
"""Join storm (issue 17): N distinct members join ONE topic, at most --concurrency (50)
handshakes + joins in flight; every client stays connected until all N have joined. tether's
chat hub (with presence) against Socket.IO 4.8 on Node and python-socketio on uvicorn (room
joins, no presence), in the same run.

Figures, per server and N (--members, default 1,000 and 5,000):

  wall time     from the first connect until every client has joined (tether: every client
                got its `subscribed` frame; Socket.IO: every client's "join" was acked)
  server CPU    utime + stime from /proc/PID/stat, summed over the server's process tree,
                from just before the first connect until the presence frames of the last
                joins have arrived (no client received anything for --drain-quiet s)
  presence      per subscriber: the frames whose "type" is "presence" (whatever their fields:
                today's full `members` list or issue 17's snapshot + `joined`/`left` deltas)
                and their size (UTF-8 bytes of the text); mean over clients, and the max
  join latency  connect → joined of each client, p99

Servers (each a fresh process per (N, round); the order rotates every round; pinned to the
second CPU, the load client to the first):

  tether           python -m tether chat --data - --host 127.0.0.1 --port P, from the
                   repository (cwd), --python (default .venv/bin/python) with --tether-src
                   first on PYTHONPATH (default: the working tree's src/; --tether-rev REV
                   runs REV's src/ instead, extracted with `git archive` into a temporary
                   folder, the built extension copied in when its C source is the same).
                   Client: ws://127.0.0.1:P/ws?name=memberNNNN, Origin http://127.0.0.1:P,
                   then {"type": "subscribe", "topic": "storm"}.
  socketio-node    bench/servers/socketio_storm.js: socket.io 4.8 (bench/.socketio, pinned by
                   its package-lock.json; `npm ci` there when node_modules is missing); "join"
                   does socket.join("storm") and acks.
  python-socketio  bench/servers/socketio_storm_app.py under uvicorn (defaults: uvloop,
                   httptools, its default websockets engine, log level info), in a venv of
                   its own (--socketio-python); "join" does enter_room and acks.

The load client is one Node process for every server (bench/presence_storm_client.js). By
default (--client raw) it is the same small WebSocket client of its own for all three servers:
net sockets, the RFC 6455 handshake (Sec-WebSocket-Accept checked, no extension offered),
masked client frames, pings answered, the closing handshake; it reads the server's frames as a
stream without assembling their payload (a message's first 48 bytes give its "type", its
length is counted), into one read buffer shared by every connection. For Socket.IO it speaks
what socket.io-client sends over a WebSocket (Engine.IO 4, `/socket.io/?EIO=4&transport=
websocket`): "40" (connect to "/"), '420["join","storm"]' (an event with ack id 0), "3" (pong);
joined = "430[...]". --client lib uses the libraries instead, `ws` 8 for tether and
socket.io-client 4.8 for Socket.IO (transports ["websocket"], forceNew, no reconnection,
perMessageDeflate off): the same figures, but the client costs more CPU than the servers
(ws assembles and copies every presence frame; socket.io-client's per-connection setup), so
the wall times measure the client. 3 sampled tether clients (the first, middle and last to
start) keep and parse every presence frame, rebuild their member view (asking for the pages
past a capped snapshot, issue 17's `more`) and check it against N. Before each storm the client
joins and leaves 5 clients on another topic (a warm-up, not measured). The notes give "client
CPU / server CPU" per server and N, and the table the CPU the rest of the machine used
meanwhile (other benchmarks: this machine is shared).

A run that has not seen every client join within --timeout s (180) is reported as "timeout"
(with how many had joined); one where a join failed (error frame, close, refused connection)
as "failed". Everything is bounded; only the processes started here are stopped, by PID.

Setup:

  (cd bench/.socketio && npm ci)          # done by the script when node_modules is missing
  python3 -m venv /tmp/s7storm/venv && /tmp/s7storm/venv/bin/pip install python-socketio 'uvicorn[standard]'

Usage:

  .venv/bin/python bench/presence_storm.py                        # 3 servers x 2 sizes x 3 rounds
  .venv/bin/python bench/presence_storm.py --tether-rev HEAD --json storm.json
  .venv/bin/python bench/presence_storm.py --members 1000 --rounds 1 --servers tether
  .venv/bin/python bench/presence_storm.py --members 250,500,1000,2000 --servers tether

Options: --members 1000,5000 --rounds 3 --servers tether,socketio-node,python-socketio
--concurrency 50 --timeout 180 --drain-quiet 1 --drain-max 60 --python --socketio-python
--tether-src --tether-rev --client raw|lib --json FILE --no-pin. The servers' logs (and a
--tether-rev copy of src/) go to a new folder under $TMPDIR (default /tmp). Exit status 1 if a run failed or a server could
not start (a timeout is a result, not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SERVERS_DIR = BENCH_DIR / "servers"
SIO_DIR = BENCH_DIR / ".socketio"
CLIENT_JS = BENCH_DIR / "presence_storm_client.js"
sys.path.insert(0, str(BENCH_DIR))

from asgi import process_tree  # noqa: E402  (bench/asgi.py: pid + descendants)
from echo import (  # noqa: E402  (bench/echo.py's helpers)
    HOST,
    background_load,
    free_port,
    pick_cpus,
    proc_cpu_seconds,
    rotation,
    stop_process,
)
from peers import child_setup, raise_nofile  # noqa: E402

ALL_SERVERS = ["tether", "socketio-node", "python-socketio"]
DEFAULT_PYTHON = REPO_DIR / ".venv" / "bin" / "python"
DEFAULT_SIO_PYTHON = Path("/tmp/s7storm/venv/bin/python")
TOPIC = "storm"

# (row label, key in a run's result, format, presence row: "–" for servers without presence)
ROWS = [
    ("wall time, first connect → all joined (s)", "wall_joined_s", "{:.2f}", False),
    ("server CPU (s)", "server_cpu_s", "{:.2f}", False),
    ("server CPU per join (ms)", "server_cpu_ms_per_join", "{:.2f}", False),
    ("presence kB / subscriber, mean", "presence_kb_mean", "{:,.1f}", True),
    ("presence kB / subscriber, max", "presence_kb_max", "{:,.1f}", True),
    ("presence frames / subscriber, mean", "presence_frames_mean", "{:,.1f}", True),
    ("presence frames / subscriber, max", "presence_frames_max", "{:,.0f}", True),
    ("join latency p99 (ms)", "join_ms_p99", "{:,.0f}", False),
    ("other processes' CPU meanwhile (cores)", "others_cores", "{:.2f}", False),
]


# --------------------------------------------------------------------------
# setup


def run(cmd: list[str], **kw: Any) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def ensure_node_modules() -> str | None:
    """bench/.socketio/node_modules from its lockfile; None or the reason it failed."""
    if not shutil.which("node"):
        return "node not found"
    mods = SIO_DIR / "node_modules"
    if all((mods / p).is_dir() for p in ("socket.io", "socket.io-client", "ws")):
        return None
    npm = shutil.which("npm")
    if not npm:
        return "npm not found (needed for socket.io, socket.io-client and ws)"
    print(f"installing socket.io, socket.io-client and ws into {SIO_DIR} (npm ci)",
          file=sys.stderr)
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SIO_DIR,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return "npm ci failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


def extract_rev(rev: str, dest: Path) -> tuple[Path, str]:
    """REV's src/ into dest (git archive: reads the repository, changes nothing), with the
    working tree's built extension when REV's C source is the same. (src dir, note)."""
    sha = run(["git", "-C", str(REPO_DIR), "rev-parse", "--verify", f"{rev}^{{commit}}"])
    if not sha:
        raise SystemExit(f"--tether-rev {rev}: not a commit")
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO_DIR), "archive", sha, "src"],
                             capture_output=True, check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=120)
    note = f"{sha[:7]} (git archive)"
    accel = REPO_DIR / "src" / "tether" / "accel"
    c_src = accel / "_speedups.c"
    built = sorted(accel.glob("_speedups*.so"))
    if built and c_src.exists():
        in_rev = run(["git", "-C", str(REPO_DIR), "rev-parse", f"{sha}:src/tether/accel/_speedups.c"])
        here = run(["git", "-C", str(REPO_DIR), "hash-object", str(c_src)])
        if in_rev and in_rev == here:
            for so in built:
                shutil.copy2(so, dest / "src" / "tether" / "accel" / so.name)
            note += ", built extension copied"
        else:
            note += ", without the built extension (its C source differs)"
    return dest / "src", note


def set_tether_source(args: argparse.Namespace, tmp: Path) -> None:
    """args.tether_src_path and args.tether_src_note from --tether-src / --tether-rev (a REV's
    src/ goes under tmp)."""
    if args.tether_rev:
        args.tether_src_path, note = extract_rev(args.tether_rev, tmp / "tether")
        args.tether_src_note = f"--tether-rev {args.tether_rev}: {note}"
    else:
        args.tether_src_path = Path(args.tether_src).resolve()
        note = str(args.tether_src_path)
        if args.tether_src_path == (REPO_DIR / "src").resolve():
            sha = run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
            dirty = run(["git", "--no-optional-locks", "-C", str(REPO_DIR), "status",
                         "--porcelain", "--", "src"])
            note = f"working tree src/ at {sha}" + (" with uncommitted changes" if dirty else "")
        args.tether_src_note = note


def add_server_args(p: argparse.ArgumentParser, sio_python: str, sio_hint: str) -> None:
    """The options that say what runs the servers (shared with bench/rooms.py)."""
    p.add_argument("--python", default=str(DEFAULT_PYTHON) if DEFAULT_PYTHON.exists()
                   else sys.executable, help="interpreter for tether (.venv/bin/python)")
    p.add_argument("--tether-src", default=str(REPO_DIR / "src"),
                   help="put this folder first on tether's PYTHONPATH (the working tree's src/)")
    p.add_argument("--tether-rev", metavar="REV",
                   help="run this commit's src/ instead (git archive into a temporary folder)")
    p.add_argument("--socketio-python", default=sio_python,
                   help=f"interpreter with python-socketio and uvicorn ({sio_hint})")


def tether_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
    return env


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NODE_PATH"] = str(SIO_DIR / "node_modules")
    return env


def server_spec(name: str, port: int, args: argparse.Namespace
                ) -> tuple[list[str], dict[str, str], Path | None]:
    if name == "tether":
        return ([args.python, "-m", "tether", "chat", "--data", "-", "--host", HOST,
                 "--port", str(port)], tether_env(args.tether_src_path), REPO_DIR)
    if name == "socketio-node":
        return ([shutil.which("node") or "node", str(SERVERS_DIR / "socketio_storm.js"), HOST,
                 str(port)], node_env(), None)
    if name == "python-socketio":
        return ([args.socketio_python, "-m", "uvicorn", "socketio_storm_app:app",
                 "--app-dir", str(SERVERS_DIR), "--host", HOST, "--port", str(port)],
                dict(os.environ), None)
    raise ValueError(name)


def check_server(name: str, args: argparse.Namespace) -> str | None:
    if name == "tether":
        cmd = [args.python, "-c", "import tether.apps.chat.server, tether.hub"]
        env, cwd = tether_env(args.tether_src_path), REPO_DIR
    elif name == "socketio-node":
        cmd = ["node", "-e", "require('socket.io')"]
        env, cwd = node_env(), None
    else:
        if not Path(args.socketio_python).exists():
            return (f"{args.socketio_python} not found (python3 -m venv /tmp/s7storm/venv && "
                    "/tmp/s7storm/venv/bin/pip install python-socketio 'uvicorn[standard]')")
        cmd = [args.socketio_python, "-c", "import socketio, uvicorn"]
        env, cwd = dict(os.environ), None
    try:
        r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or [f"status {r.returncode}"])[-1]
    return None


def runnable_servers(servers: list[str], args: argparse.Namespace
                     ) -> tuple[list[str], dict[str, str]]:
    """(the servers that can run, {server: why not} for the others, also on stderr)."""
    runnable: list[str] = []
    skipped: dict[str, str] = {}
    for s in servers:
        why = check_server(s, args)
        if why:
            skipped[s] = why
            print(f"{s}: skipped: {why}", file=sys.stderr)
        else:
            runnable.append(s)
    return runnable, skipped


def versions(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    code = ("import importlib.metadata as m, sys\n"
            "print('python', sys.version.split()[0])\n"
            "for p in PKGS:\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: pass\n")
    for py, pkgs, prefix in (
            (args.python, ("tether", "uvloop"), ""),
            (args.socketio_python, ("python-socketio", "python-engineio", "uvicorn", "uvloop",
                                    "httptools", "websockets"), "sio:")):
        if not Path(py).exists() and not shutil.which(py):
            continue
        r = subprocess.run([py, "-c", f"PKGS = {pkgs!r}\n" + code], capture_output=True,
                           text=True, env=tether_env(args.tether_src_path) if not prefix
                           else None)
        for line in r.stdout.splitlines():
            k, _, v = line.partition(" ")
            out[prefix + k] = v
    for pkg in ("socket.io", "socket.io-client", "engine.io", "engine.io-client", "ws"):
        try:
            pj = json.loads((SIO_DIR / "node_modules" / pkg / "package.json").read_text())
            out[pkg] = pj["version"]
        except (OSError, ValueError, KeyError):
            pass
    out["node"] = run(["node", "--version"])
    out["tether source"] = args.tether_src_note
    return out


def json_meta(cmd: str, cpus: tuple[Any, Any], vers: dict[str, str], args: argparse.Namespace,
              total: float, interrupted: bool, **extra: Any) -> dict[str, Any]:
    """The "meta" object of a --json file (shared with bench/rooms.py)."""
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": cmd.strip(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "pin": {"client": cpus[0], "server": cpus[1]}, "versions": vers,
            "options": {k: (str(v) if isinstance(v, Path) else v)
                        for k, v in vars(args).items()},
            **extra, "total_s": total, "interrupted": interrupted}


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------
# processes


class Server:
    """A server process we started; stopped by its PID only (SIGINT, SIGKILL after 5 s)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None,
                 cpu: int | None, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=child_setup(cpu))
        self.tree: list[int] = [self.proc.pid]

    def log_tail(self, n: int = 6) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            return " / ".join(lines[-n:])
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
                    self.tree = process_tree(self.proc.pid)
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"did not accept connections within {timeout:.0f} s")

    def cpu(self) -> float:
        """utime + stime of the process tree (as found now; and the ones found before)."""
        pids = set(self.tree) | set(process_tree(self.proc.pid))
        self.tree = sorted(pids)
        total = 0.0
        for p in pids:
            try:
                u, s = proc_cpu_seconds(p)
            except (OSError, ValueError, IndexError):
                continue
            total += u + s
        return total

    def peak_rss_kib(self) -> int | None:
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


class Client:
    """The Node load client; its stderr lines are read by a thread into a queue."""

    def __init__(self, kind: str, url: str, origin: str | None, members: int,
                 args: argparse.Namespace, cpu: int | None):
        cmd = [shutil.which("node") or "node", str(CLIENT_JS), "--kind", kind, "--url", url,
               "--members", str(members), "--concurrency", str(args.concurrency),
               "--topic", TOPIC, "--timeout", str(args.timeout),
               "--drain-quiet", str(args.drain_quiet), "--drain-max", str(args.drain_max),
               "--client", args.client]
        if origin:
            cmd += ["--origin", origin]
        self.proc = subprocess.Popen(cmd, env=node_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=child_setup(cpu))
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.other: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, words: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"load client: none of {sorted(words)} within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait()
                raise RuntimeError("load client exited early: "
                                   + (" / ".join(self.other[-5:]) or f"status {self.proc.returncode}"))
            if line in words:
                return line
            self.other.append(line)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or not box[0].strip():
            raise RuntimeError("load client: no result " + " / ".join(self.other[-5:]))
        return json.loads(box[0])

    def finish(self, timeout: float = 20) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the process we started, by its PID
            self.proc.wait()


# --------------------------------------------------------------------------
# one storm


def storm(name: str, members: int, args: argparse.Namespace, cpus: tuple[Any, Any],
          log_dir: Path) -> dict[str, Any]:
    lg_cpu, srv_cpu = cpus
    port = free_port()
    cmd, env, cwd = server_spec(name, port, args)
    srv = Server(name, cmd, env, cwd, srv_cpu, log_dir)
    client: Client | None = None
    try:
        srv.wait_ready(port)
        if name == "tether":
            client = Client("tether", f"ws://{HOST}:{port}/ws", f"http://{HOST}:{port}",
                            members, args, lg_cpu)
        else:
            client = Client("socketio", f"http://{HOST}:{port}", None, members, args, lg_cpu)
        client.expect({"ready"}, timeout=120)
        time.sleep(0.3)  # the warm-up clients' closes settle on the server's side
        c0, m0, t0 = srv.cpu(), machine_busy_s(), time.monotonic()
        client.go()
        outcome = client.expect({"joined", "timeout", "failed"}, timeout=args.timeout + 60)
        c1 = srv.cpu()
        c2 = c1
        if outcome == "joined":
            client.expect({"drained"}, timeout=args.drain_max + 60)
            c2 = srv.cpu()
        m2, t2 = machine_busy_s(), time.monotonic()
        res = client.result(timeout=60)
        client.finish()
        alive = srv.proc.poll() is None
        res.update(server=name, outcome=outcome, timeout_s=args.timeout,
                   server_cpu_joined_s=c1 - c0,
                   server_cpu_s=c2 - c0, server_peak_rss_kib=srv.peak_rss_kib(),
                   server_alive=alive)
        res["server_cpu_ms_per_join"] = res["server_cpu_s"] * 1e3 / max(1, res["joined"])
        # Everything else the machine ran meanwhile (other benchmarks, tests): its busy CPU
        # time over the same window minus the server's and the load client's, in cores.
        if m0 is not None and m2 is not None and t2 > t0:
            others = (m2 - m0) - res["server_cpu_s"] - res["client_cpu_s"]
            res["others_cores"] = max(0.0, others) / (t2 - t0)
        res["client_over_server_cpu"] = (res["client_cpu_s"] / res["server_cpu_s"]
                                         if res["server_cpu_s"] else None)
        for k in ("mean", "max"):
            v = res.get(f"presence_bytes_{k}")
            res[f"presence_kb_{k}"] = v / 1e3 if v is not None else None
        if outcome == "failed":
            res["error"] = "; ".join(res.get("errors") or []) or "failed"
            if not alive:
                res["error"] += f" (server exited: {srv.log_tail(4)})"
        return res
    finally:
        if client is not None:
            client.kill()
        srv.stop()


# --------------------------------------------------------------------------
# report


def header(name: str, vers: dict[str, str]) -> str:
    if name == "tether":
        return f"tether {vers.get('tether', '?')} chat"
    if name == "socketio-node":
        return f"Socket.IO {vers.get('socket.io', '?')} (Node {vers.get('node', '?')})"
    return (f"python-socketio {vers.get('sio:python-socketio', '?')} "
            f"(uvicorn {vers.get('sio:uvicorn', '?')})")


def cell(runs: list[dict[str, Any]], key: str, fmt: str, presence_row: bool, name: str,
         rounds: int) -> tuple[str, float | None]:
    if presence_row and name != "tether":
        return "–", None
    ok = [r for r in runs if r["outcome"] == "joined" and r.get(key) is not None]
    timeouts = sum(1 for r in runs if r["outcome"] == "timeout")
    failed = len(runs) - len(ok) - timeouts
    if not ok:
        if timeouts:
            text = "timeout" if timeouts == len(runs) else f"timeout ({timeouts}/{len(runs)})"
            if key == "wall_joined_s":
                j = [r["joined"] for r in runs if r["outcome"] == "timeout"]
                text += f": {statistics.median(j):,.0f}"
                if len(j) > 1:
                    text += f" ({min(j):,}–{max(j):,})"
                text += f" joined in {runs[0].get('timeout_s', 0):g} s"
            elif key == "others_cores":
                vals = [r[key] for r in runs if r.get(key) is not None]
                if vals:
                    text = f"{statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"
            return text + (f", failed ({failed})" if failed else ""), None
        return "failed" if runs else "–", None
    vals = [r[key] for r in ok]
    med = statistics.median(vals)
    text = fmt.format(med)
    if len(vals) > 1:
        text += f" ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
    if timeouts:
        text += f" [{timeouts} timeout]"
    if failed:
        text += f" [{failed} failed]"
    return text, med


def render(results: dict[str, dict[int, list[dict[str, Any]]]], servers: list[str],
           sizes: list[int], vers: dict[str, str], rounds: int
           ) -> tuple[str, dict[str, dict[str, dict[str, float]]]]:
    medians: dict[str, dict[str, dict[str, float]]] = {s: {} for s in servers}
    lines = ["| members joining one topic | " + " | ".join(header(s, vers) for s in servers)
             + " |", "|---|" + "---:|" * len(servers)]
    for n in sizes:
        for label, key, fmt, presence_row in ROWS:
            row = [f"{n:,}: {label}"]
            for s in servers:
                if s not in results:
                    row.append("skipped")
                    continue
                text, med = cell(results[s].get(n, []), key, fmt, presence_row, s, rounds)
                if med is not None:
                    medians[s].setdefault(str(n), {})[key] = med
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), medians


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="1000,5000", help="comma-separated sizes (1000,5000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, servers interleaved (3)")
    p.add_argument("--servers", default=",".join(ALL_SERVERS),
                   help=f"comma-separated among {','.join(ALL_SERVERS)}")
    p.add_argument("--concurrency", type=int, default=50,
                   help="handshakes + joins in flight at most (50)")
    p.add_argument("--timeout", type=float, default=180,
                   help="seconds for every client to join, per run; else 'timeout' (180)")
    p.add_argument("--drain-quiet", type=float, default=1.0,
                   help="after the last join: presence is done once nothing arrived for this "
                        "long (1 s)")
    p.add_argument("--drain-max", type=float, default=60,
                   help="... or at most this long after the last join (60 s)")
    add_server_args(p, str(DEFAULT_SIO_PYTHON), "/tmp/s7storm/venv")
    p.add_argument("--client", choices=["raw", "lib"], default="raw",
                   help="load client: raw (its own streaming WebSocket client, the default) or "
                        "lib (ws and socket.io-client, to cross-check)")
    p.add_argument("--json", metavar="FILE", help="also write every run and the medians")
    p.add_argument("--no-pin", action="store_true", help="don't pin to CPUs")
    args = p.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in ALL_SERVERS:
            p.error(f"unknown server {s!r}")
    try:
        sizes = [int(x) for x in args.members.split(",") if x.strip()]
    except ValueError:
        p.error("--members: comma-separated integers")

    raise_nofile()
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    need = max(sizes) + 200
    if soft != resource.RLIM_INFINITY and soft < need:
        print(f"warning: the open-files limit is {soft}; {max(sizes)} members need about "
              f"{need} in the client and in the server", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="tether-storm-"))
    set_tether_source(args, tmp)

    reason = ensure_node_modules()
    if reason:
        print(f"error: {reason} (the load client needs it)", file=sys.stderr)
        return 1
    runnable, skipped = runnable_servers(servers, args)
    results: dict[str, dict[int, list[dict[str, Any]]]] = {s: {n: [] for n in sizes}
                                                           for s in runnable}
    vers = versions(args)
    cpus = pick_cpus(args.no_pin)
    busy = background_load()
    pin = (f"load client on CPU {cpus[0]}, servers on CPU {cpus[1]}"
           if cpus[0] is not None else "no CPU pinning")
    print(f"servers: {', '.join(runnable) or 'none'}; members {sizes}; {args.rounds} rounds; "
          f"{pin}; background load {'?' if busy is None else f'{busy:.2f}'} cores; "
          f"tether source: {args.tether_src_note}", file=sys.stderr)

    log_dir = tmp / "logs"
    log_dir.mkdir()
    started = time.monotonic()
    interrupted = False
    failures = 0
    try:
        for n in sizes:
            for rnd in range(args.rounds):
                order = rotation(runnable, rnd)
                print(f"{n:,} members, round {rnd + 1}/{args.rounds}: {', '.join(order)}",
                      file=sys.stderr)
                for name in order:
                    try:
                        r = storm(name, n, args, cpus, log_dir)
                    except (RuntimeError, OSError, ValueError) as e:
                        r = {"server": name, "outcome": "failed", "error": str(e), "joined": 0}
                    r["round"] = rnd
                    results[name][n].append(r)
                    if r["outcome"] == "failed":
                        failures += 1
                        print(f"  [{rnd + 1}] {name:<16} FAILED: {r.get('error')}",
                              file=sys.stderr)
                        continue
                    extra = ""
                    if r.get("presence_frames_mean"):
                        extra = (f", presence {r['presence_kb_mean']:,.1f} kB / "
                                 f"{r['presence_frames_mean']:,.0f} frames per subscriber")
                    ratio = r.get("client_over_server_cpu")
                    print(f"  [{rnd + 1}] {name:<16} {r['outcome']}: {r['joined']:,} joined in "
                          f"{r['wall_joined_s']:.2f} s, server CPU {r['server_cpu_s']:.2f} s"
                          f"{extra}; client/server CPU "
                          f"{'?' if ratio is None else f'{ratio:.2f}'}", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; reporting what was measured", file=sys.stderr)
    total = time.monotonic() - started

    table, medians = render(results, servers, sizes, vers, args.rounds)
    cmd = "python bench/presence_storm.py " + " ".join(argv if argv is not None
                                                       else sys.argv[1:])
    print()
    print(f"## Join storm: N members join one topic, {args.concurrency} in flight "
          f"({args.rounds} rounds, medians (min–max); {pin}; {total:.0f} s)")
    print()
    print(table)
    print()
    notes = [f"- command: `{cmd.strip()}`",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v),
             f"- per-run timeout {args.timeout:g} s; server CPU from the first connect until "
             f"no client received anything for {args.drain_quiet:g} s after the last join "
             f"(the last presence frames included); tether's chat sends presence, the "
             f"Socket.IO servers only join rooms (\"–\")"]
    for s in runnable:
        for n in sizes:
            runs = results[s][n]
            ratios = [r["client_over_server_cpu"] for r in runs
                      if r.get("client_over_server_cpu") is not None]
            tos = [r for r in runs if r["outcome"] == "timeout"]
            closed = sum(r.get("closed_by_server_after_join") or 0 for r in runs)
            bad_views = [v for r in runs if r["outcome"] == "joined"
                         for v in r.get("sampled_views") or [] if v["members_seen"] != n]
            undrained = sum(1 for r in runs if r.get("drain_complete") is False)
            bits = []
            if ratios:
                bits.append(f"client/server CPU {min(ratios):.2f}–{max(ratios):.2f}")
            if tos:
                j = [r["joined"] for r in tos]
                cpu = [r["server_cpu_s"] for r in tos]
                text = (f"{len(tos)} timeout(s) at {args.timeout:g} s with "
                        f"{statistics.median(j):,.0f} ({min(j):,}–{max(j):,}) joined, server CPU "
                        f"{statistics.median(cpu):.1f} ({min(cpu):.1f}–{max(cpu):.1f}) s")
                if s == "tether":
                    kb = [r["presence_kb_mean"] or 0 for r in tos]
                    fr = [r["presence_frames_mean"] or 0 for r in tos]
                    text += (f"; by then presence {statistics.median(kb):,.1f} "
                             f"({min(kb):,.1f}–{max(kb):,.1f}) kB and "
                             f"{statistics.median(fr):,.0f} frames per joined subscriber (mean)")
                bits.append(text)
            if closed:
                bits.append(f"{closed} subscriber(s) closed by the server after joining "
                            f"(codes {sorted({c for r in runs for c in r.get('closed_by_server_codes') or []}, key=str)})")
            if bad_views:
                bits.append(f"{len(bad_views)} sampled client(s) ended with a member view "
                            f"!= {n}: {bad_views[:2]}")
            if undrained:
                bits.append(f"{undrained} run(s) still receiving {args.drain_max:g} s after "
                            f"the last join")
            fails = [r for r in runs if r["outcome"] == "failed"]
            if fails:
                bits.append(f"{len(fails)} failed: {str(fails[0].get('error'))[:300]}")
            if bits:
                notes.append(f"- {s}, {n:,}: " + "; ".join(bits))
    for s, why in skipped.items():
        notes.append(f"- {s}: skipped ({why})")
    if "tether" in medians and len(sizes) > 1:
        m = medians["tether"]
        pts = [(n, m[str(n)]["presence_kb_mean"]) for n in sizes
               if str(n) in m and "presence_kb_mean" in m[str(n)]]
        if len(pts) > 1:
            (n0, b0), (n1, b1) = pts[0], pts[-1]
            notes.append(f"- tether presence kB / subscriber, {n1:,} vs {n0:,}: "
                         f"x{b1 / b0:.1f} (N ratio x{n1 / n0:.1f}, N² x{(n1 / n0) ** 2:.1f})")
    if busy is not None and busy > 0.2:
        notes.append(f"- warning: {busy:.1f} cores were busy with other processes at the start")
    print("\n".join(notes))
    print(f"\n(server logs in {log_dir})", file=sys.stderr)
    if args.json:
        doc = {"meta": json_meta(cmd, cpus, vers, args, total, interrupted,
                                 background_busy_cores=busy),
               "skipped": skipped,
               "runs": {s: {str(n): results[s][n] for n in sizes} for s in results},
               "medians": medians}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    return 1 if failures or interrupted or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
