#!/usr/bin/env python3
"""Where tether's server time goes in issue 6's scenarios a, c, e and g (bench/peers.py).

  a  1 connection, 32-byte text, 100 in flight      server CPU per message
  c  100 connections, 10 in flight each             server CPU per message
  e  broadcast relay, 1,000 clients: one sends      server CPU per delivery
     1,000 × 32 B (100 in flight), all receive all
  g  connect + handshake + close, 10 concurrent     server CPU per handshake

For each tether API (coroutines, callbacks) and each scenario, one fresh server started with
peers.py's own helpers (a, c, g: the echo server, e: the relay server, `tether broadcast` /
a Listener calling tether.broadcast(); the same commands, the same pinning: load generator
on the first CPU, server on the second), warmed up as peers.py warms up its echo server
(a, c, g; e's warm-up is the relay load's own: 100 messages to every client before each
window), then four measured windows on that server, each driven exactly as peers.py drives
it (its scenario_echo for a, c, g and scenario_relay for e: the same loadgen arguments, the
same --relay-* options and defaults; e is the independent checker's load, see peers.py;
--e-load push runs the old e instead, peers.py's scenario_broadcast: the server pushes 300
messages to 1,000 clients on SIGUSR2, --bcast-* options):

  plain     no profiler: the reference CPU per message / delivery / handshake.
  perf      `perf record -e cpu-clock --call-graph dwarf` attached to the server (sampling,
            native, with whole stacks): each sample by where it was (the CPython interpreter,
            uvloop/libuv, the C accelerator, _asyncio, libc, the kernel by system call and
            by caller) and by whether its stack was inside Python code (a Python frame inside
            libuv's: a callback, a coroutine step, and whatever they call, transport.write()
            and its send, transport.close() and its close included) or in the event loop
            outside Python code (polling, reads, dispatch; in g also accepting a connection
            and creating its transport before any Python code runs). The coarse shares are
            also shown as µs of the unprofiled CPU per unit. Skipped when perf is missing.
  py-spy    `py-spy record --nonblocking` attached to the server (sampling, Python stacks):
            the innermost Python function of each sample inside Python code, which includes
            the C it calls (transport.write() and its send count in the function calling it).
            Skipped when py-spy is missing (pip install py-spy).
  cProfile  cProfile switched on and off inside the server (SIGUSR1) around the window
            (deterministic): own time of each Python function and of each C function called
            from Python (built-ins, the accelerator, _asyncio), and calls per unit. It
            does not see uvloop's methods (Cython functions: their time counts in the
            caller), and its shares carry its overhead (printed: CPU per unit under
            cProfile / without).

py-spy and cProfile only see the time inside Python code; their shares are scaled by perf's
share of the server's samples inside Python code, to be shares of the server's CPU (without
perf they are shares of the time inside Python code). perf and py-spy run pinned to the load
generator's CPU, so the server's CPU is its own. Every CPU per unit is peers.py's figure:
utime + stime of the server from /proc, over the same span as the profile.

Usage:
  python bench/profile.py                          # both APIs, a and e, ~1 min
  python bench/profile.py --scenarios a,c,e,g      # all four, ~2 min
  python bench/profile.py --apis callbacks --scenarios g --duration 3 --top 15
  python bench/profile.py --no-perf --no-pyspy     # cProfile only
  python bench/profile.py --scenarios e --e-load push   # the old e (server-side push)

Loopback only; stops only the processes it started (by their PID).
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# This file has the name of the standard library's `profile`, which cProfile imports: import
# the standard one before bench/ is on sys.path (Python puts it first when run as a script).
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == BENCH_DIR:
    del sys.path[0]
import cProfile  # noqa: E402
import pstats  # noqa: E402

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import runpy  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any, Callable  # noqa: E402

CHILD_FLAG = "--serve-profiled"
PERF_HZ = 1999


# --------------------------------------------------------------------------
# inside the server process: cProfile on at a SIGUSR1, off (and saved) at the next


def serve_profiled(argv: list[str]) -> None:
    """`profile.py --serve-profiled DIR -m module args...` or `... DIR script.py args...`: run
    the server as `python -m module args` / `python script.py args` would, with SIGUSR1
    toggling a cProfile.Profile. Window N leaves DIR/on-N when the profiler is on, then
    DIR/window-N.pstats."""
    out = Path(argv[0])
    rest = argv[1:]
    state: dict[str, Any] = {"prof": None, "n": 0}

    def toggle(signum: int, frame: Any) -> None:
        n = state["n"]
        prof = state["prof"]
        if prof is None:
            prof = state["prof"] = cProfile.Profile()
            prof.enable()
            (out / f"on-{n}").touch()
            return
        prof.disable()
        prof.dump_stats(out / f"window-{n}.tmp")
        os.replace(out / f"window-{n}.tmp", out / f"window-{n}.pstats")
        state["prof"], state["n"] = None, n + 1

    signal.signal(signal.SIGUSR1, toggle)
    if rest[0] == "-m":
        sys.argv = [rest[1]] + rest[2:]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        sys.path.insert(0, str(Path(rest[0]).resolve().parent))
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == CHILD_FLAG:
    serve_profiled(sys.argv[2:])
    sys.exit(0)

sys.path.insert(0, str(BENCH_DIR))
import peers  # noqa: E402  (bench/peers.py: servers, scenarios, load generator)
from echo import (  # noqa: E402  (bench/echo.py, which peers.py uses too)
    background_load,
    build_loadgen,
    free_port,
    pick_cpus,
    python_speed,
    run_loadgen,
)

APIS = {"coroutines": "tether", "callbacks": "tether-cb"}  # API -> peers.py's server name
# scenario -> (peers.py's server mode, unit, peers.py's figure per unit, its count of units);
# e's mode is "relay", or "broadcast" with --e-load push (main() sets it)
SCENARIOS = {"a": ("echo", "message", "server_cpu_us_per_msg", "messages"),
             "c": ("echo", "message", "server_cpu_us_per_msg", "messages"),
             "e": ("relay", "delivery", "server_cpu_us_per_delivery", "deliveries"),
             "g": ("echo", "handshake", "server_cpu_us_per_handshake", "handshakes")}
PLURAL = {"message": "messages", "delivery": "deliveries", "handshake": "handshakes"}
TOOL_LABELS = {"plain": "unprofiled", "perf": "under perf (sampling)",
               "pyspy": "under py-spy (sampling)", "cprofile": "under cProfile"}


# --------------------------------------------------------------------------
# the profilers, opened and closed around the measured window


def wait_for(path: Path, proc: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited (status {proc.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not answer SIGUSR1 within {timeout:.0f} s")
        time.sleep(0.002)


class Window:
    """One measured window: no profiler, cProfile (inside the server), perf or py-spy."""

    def __init__(self, tool: str, srv: ProfiledServer, work: Path, tool_cpu: int | None,
                 pyspy: str | None):
        self.tool, self.srv, self.work, self.tool_cpu, self.pyspy = tool, srv, work, tool_cpu, pyspy
        self.proc: subprocess.Popen[str] | None = None
        self.data: Path | None = None
        self.stderr: list[str] = []

    def _spawn(self, cmd: list[str], settle: float) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=peers.child_setup(self.tool_cpu))

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line.rstrip())

        threading.Thread(target=pump, daemon=True).start()
        # Attached well before the load starts (the server is idle then: perf takes no
        # samples, py-spy leaves idle samples out).
        time.sleep(settle)
        if self.proc.poll() is not None:
            self.proc.wait()
            time.sleep(0.05)  # the stderr pump
            raise RuntimeError(f"{cmd[0]} exited: " + " / ".join(self.stderr[-5:]))

    def start(self) -> None:
        pid = str(self.srv.pid)
        if self.tool == "cprofile":
            n = self.srv.cprofile_windows
            os.kill(self.srv.pid, signal.SIGUSR1)  # the server we started: profiler on
            wait_for(self.srv.dir / f"on-{n}", self.srv.proc)
            self.data = self.srv.dir / f"window-{n}.pstats"
        elif self.tool == "perf":
            self.data = self.work / f"perf-{pid}-{time.monotonic_ns()}.data"
            self._spawn(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(PERF_HZ),
                         "--call-graph", "dwarf,16384", "-p", pid, "-o", str(self.data)], 0.3)
        elif self.tool == "pyspy":
            assert self.pyspy
            self.data = self.work / f"pyspy-{pid}-{time.monotonic_ns()}.txt"
            self._spawn([self.pyspy, "record", "--pid", pid, "--rate", "1000", "--nonblocking",
                         "--function", "--full-filenames", "--format", "raw",
                         "-o", str(self.data)], 1.0)

    def stop(self) -> None:
        if self.tool == "cprofile":
            os.kill(self.srv.pid, signal.SIGUSR1)  # profiler off, stats saved
            assert self.data is not None
            wait_for(self.data, self.srv.proc, timeout=30)
            self.srv.cprofile_windows += 1
        elif self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # the perf / py-spy we started, by its PID
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"{self.tool} did not stop")
            time.sleep(0.05)  # the stderr pump
            if not self.data or not self.data.exists():
                raise RuntimeError(f"{self.tool} wrote nothing: " + " / ".join(self.stderr[-5:]))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # ours, by its PID
            self.proc.wait()


class ProfiledServer(peers.Server):
    """peers.Server with peers.py's command run through `profile.py --serve-profiled`, whose
    cpu() also opens and closes the profiler's window: peers.scenario_echo (a, c, g),
    scenario_relay (e) and scenario_broadcast (e with --e-load push) read the server's CPU once
    just before the measured part and once just after it, so the profile covers the span of
    the CPU figure."""

    def __init__(self, name: str, mode: str, python: str, port: int, args: argparse.Namespace,
                 cpu: int | None, log_dir: Path):
        cmd = peers.server_command(name, mode, python, port, args)
        assert cmd[0] == python, cmd
        self.dir = Path(tempfile.mkdtemp(prefix="cprofile-", dir=log_dir))
        self.cprofile_windows = 0
        self.window: Window | None = None
        self.open = False
        super().__init__(name, mode, [python, os.path.abspath(__file__), CHILD_FLAG,
                                      str(self.dir)] + cmd[1:],
                         peers.server_env(name), cpu, log_dir)

    def cpu(self) -> float:
        if not self.open:
            if self.window:
                self.window.start()
            self.open = True
            return super().cpu()
        c = super().cpu()
        self.open = False
        if self.window:
            self.window.stop()
        return c


# --------------------------------------------------------------------------
# reading the profiles

OUTSIDE = "outside Python code (the event loop)"


def short_path(path: str) -> str:
    p = path.replace("\\", "/")
    for root in ("/tether/", "/asyncio/", "/uvloop/"):
        if root in p:
            return root.strip("/") + "/" + p.rsplit(root, 1)[1]
    return Path(p).name


def python_group(path: str) -> str:
    p = path.replace("\\", "/")
    if "/tether/" in p:
        return "tether Python"
    if "/asyncio/" in p:
        return "asyncio Python (tasks, futures)"
    if p.endswith(("tether_peer.py", "_peer_common.py")):
        return "the bench server (tether_peer.py)"
    return "other Python"


def cprofile_group(path: str, func: str) -> str:
    if path == "~":  # a C function called from Python
        if "_speedups" in func:
            return "tether C accelerator (parse_messages, frame, ...)"
        if "_asyncio." in func:
            return "asyncio Task/Future (C methods)"
        return "built-ins (len, list/deque/bytes/str methods, ...)"
    return python_group(path)


def cprofile_name(path: str, line: int, func: str) -> str:
    if path == "~":
        m = re.match(r"<method '(\w+)' of '([\w.]+)' objects>", func)
        if m:
            return f"{m.group(2)}.{m.group(1)} (C)"
        m = re.match(r"<built-in method ([\w.]+)>", func)
        return f"{m.group(1)} (C)" if m else func
    return f"{func} ({short_path(path)}:{line})"


def read_cprofile(path: Path) -> dict[str, Any]:
    """Own time of each function, as shares of the time inside profiled functions (all the
    Python code, which runs in callbacks from the loop)."""
    st = pstats.Stats(str(path))
    rows = []
    for (file, line, func), (cc, nc, tt, ct, callers) in st.stats.items():  # type: ignore[attr-defined]
        if "_lsprof.Profiler" in func or (func == "toggle" and file == os.path.abspath(__file__)):
            continue  # the profiler and its switch (serve_profiled's signal handler)
        rows.append((tt, nc, cprofile_name(file, line, func), cprofile_group(file, func)))
    total = sum(r[0] for r in rows) or 1.0
    groups: Counter[str] = Counter()
    for tt, _, _, g in rows:
        groups[g] += tt / total
    rows.sort(reverse=True)
    return {"profiled_s": total, "groups": dict(groups.most_common()),
            "top": [{"func": f, "share": tt / total, "calls": nc, "group": g}
                    for tt, nc, f, g in rows[:40]]}


def read_pyspy(path: Path) -> dict[str, Any]:
    """py-spy's raw stacks: of the samples inside Python code (a frame deeper than the one
    that runs the loop, asyncio's Runner.run), the share whose innermost Python frame is each
    function. The samples where the loop's own C code runs show Runner.run as their innermost
    frame; they are left out because py-spy cannot always tell them from idle waits."""
    funcs: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    n = outside = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        m = re.match(r"(.*) \((.*):(\d+)\)$", stack.split(";")[-1])
        if not m:
            continue
        name, file, lineno = m.group(1), m.group(2), m.group(3)
        if file.replace("\\", "/").endswith("asyncio/runners.py") and name.endswith("run"):
            outside += int(count)
            continue
        funcs[f"{name.rsplit('.', 1)[-1]} ({short_path(file)}:{lineno})"] += int(count)
        groups[python_group(file)] += int(count)
        n += int(count)
    if not n:
        raise RuntimeError("py-spy recorded no samples inside Python code")
    return {"samples": n + outside, "inside_samples": n,
            "groups": {g: c / n for g, c in groups.most_common()},
            "top": [{"func": f, "share": c / n} for f, c in funcs.most_common(40)]}


CPYTHON_ALLOC = re.compile(r"alloc|free|dealloc|Dealloc|_New|NewRef|Trash|gc_|GC_|"
                           r"_PyFrame_Clear|_PyFrame_Push|freelist|visit_")
SYSCALLS = [("send", ("sendto", "sendmsg", "write", "writev")),
            ("recv", ("recvfrom", "recvmsg", "read", "readv")),
            ("epoll_wait", ("epoll_wait", "epoll_pwait", "epoll_pwait2")),
            ("accept", ("accept", "accept4")),
            ("close, shutdown", ("close", "shutdown")),
            ("epoll_ctl", ("epoll_ctl",)),
            ("socket options, names, fcntl", ("setsockopt", "getsockopt", "getsockname",
                                              "getpeername", "fcntl", "ioctl"))]


def syscall_of(chain: list[str]) -> str | None:
    """The system call a kernel call chain (innermost first) is in, or None."""
    for sym in chain:
        m = re.match(r"(?:__x64_sys_|__ia32_sys_|__do_sys_|__se_sys_|ksys_|__sys_)(\w+)", sym)
        if m:
            return m.group(1)
    return None


def perf_group(chain: list[tuple[str, str]]) -> tuple[str, bool | None]:
    """(group, inside Python code?) of one sample; chain: (symbol, DSO file name or "kernel"),
    innermost first. Inside Python code: the stack has a Python frame (the interpreter's
    _PyEval_EvalFrameDefault) inside the loop's (libuv's uv_*), i.e. the sample is in a Python
    callback or in something it called: transport.write(), a system call."""
    outer = [sym for sym, _ in reversed(chain)]
    loop = next((i for i, sym in enumerate(outer) if sym.startswith("uv_")), None)
    inside = None if loop is None else "_PyEval_EvalFrameDefault" in outer[loop:]
    sym, dso = chain[0]
    if dso == "kernel":
        call = syscall_of([s for s, d in chain if d == "kernel"])
        if call is None:
            return "kernel: interrupts, scheduler (outside system calls)", inside
        label = next((lb for lb, names in SYSCALLS if call in names), "other system calls")
        # by caller: Python code (transport.write, transport.close) or the loop (its polling,
        # reads and accepts, and what it closes or writes on its own)
        by = {True: ", from Python code", False: ", from the loop"}.get(inside, "")
        return f"kernel: {label}{by}", inside
    if dso.startswith("_speedups"):
        return "tether C accelerator (_speedups)", inside
    if dso.startswith("_asyncio"):
        return "asyncio Task/Future (C, _asyncio)", inside
    if dso.startswith("loop.cpython"):
        return (("uvloop called from Python (transport.write, call_soon, ...)" if inside else
                 "uvloop + libuv: the loop (polling, reads, accepts, new transports, "
                 "dispatch)"), inside)
    if dso.startswith(("libc.", "libc-", "libm.")):
        return "libc (memcpy, malloc, ...)", inside
    if dso.startswith("libpython") or re.fullmatch(r"python3[\d.]*", dso):
        if not inside:
            return "CPython API called by uvloop (calls, reference counts, deallocation)", inside
        if sym == "_PyEval_EvalFrameDefault":
            return "CPython: bytecode evaluation", inside
        if CPYTHON_ALLOC.search(sym):
            return "CPython: allocation, deallocation, frames, GC", inside
        return "CPython: other runtime (calls, attributes, int/str/bytes)", inside
    return "other", inside


def summary_group(group: str, inside: bool | None) -> str:
    """perf_group's groups, coarser: what the doc's table shows."""
    if not inside:
        return ("event loop outside Python code (epoll_wait, reads, accepts, new transports, "
                "libuv, uvloop)")
    if group.startswith("CPython"):
        return "CPython running Python code (tether, the handler, asyncio)"
    if group.startswith("kernel"):
        return ("kernel, called from Python code (transport.write's send, "
                "transport.close's close, ...)")
    return group


def read_perf(data: Path) -> dict[str, Any]:
    """perf's samples by where they were: the sampled instruction's DSO and symbol, the
    system call for the kernel, and whether the stack was inside Python code."""
    r = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym,dso", "--no-inline"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("perf script failed: " + r.stderr.strip()[-300:])
    groups: Counter[str] = Counter()
    summary: Counter[str] = Counter()
    where: Counter[str] = Counter()
    syms: Counter[str] = Counter()
    n = 0

    def account(chain: list[tuple[str, str]]) -> None:
        nonlocal n
        if not chain:
            return
        n += 1
        g, inside = perf_group(chain)
        groups[g] += 1
        summary[summary_group(g, inside)] += 1
        where["inside Python code" if inside else OUTSIDE if inside is False else
              "stack not unwound"] += 1
        sym, dso = chain[0]
        syms[f"{sym} ({dso})"] += 1

    chain: list[tuple[str, str]] = []
    for line in r.stdout.splitlines():
        if not line.strip():
            account(chain)
            chain = []
            continue
        m = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
        if m:
            dso = "kernel" if "kernel" in m.group(2) else Path(m.group(2)).name
            chain.append((re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)), dso))
    account(chain)
    if not n:
        raise RuntimeError("perf recorded no samples")
    return {"samples": n, "groups": {g: c / n for g, c in groups.most_common()},
            "where": {g: c / n for g, c in where.most_common()},
            "summary": {g: c / n for g, c in summary.most_common()},
            "inside": where["inside Python code"] / n,
            "top": [{"func": f, "share": c / n} for f, c in syms.most_common(40)]}


# --------------------------------------------------------------------------
# the runs


def run_windows(api: str, key: str, args: argparse.Namespace, loadgen: Path,
                cpus: tuple[int | None, int | None], log_dir: Path, tools: list[str],
                pyspy: str | None) -> dict[str, Any]:
    """A fresh server (as peers.py starts it), then one window per tool on it."""
    mode, unit, field, count = SCENARIOS[key]
    lg_cpu, srv_cpu = cpus
    port = free_port()
    srv = ProfiledServer(APIS[api], mode, args.python, port, args, srv_cpu, log_dir)
    out: dict[str, Any] = {"api": api, "scenario": key, "unit": unit, "windows": {}}
    try:
        srv.wait_ready(port)
        run_loadgen(loadgen, ["handshake", "-n", "1"], port, lg_cpu, timeout=30)
        if mode == "echo":  # as peers.py does once per fresh echo server, before a-d, g
            peers.warm_up(port, loadgen, lg_cpu, args.warmup)
        for tool in tools:
            srv.window = Window(tool, srv, log_dir, lg_cpu, pyspy)
            try:
                if mode == "echo":
                    res = peers.scenario_echo(key, srv, port, loadgen, lg_cpu, args)
                elif mode == "relay":
                    res = peers.scenario_relay(srv, port, loadgen, lg_cpu, args)
                else:
                    res = peers.scenario_broadcast(srv, port, loadgen, lg_cpu, args)
            except RuntimeError as e:
                print(f"  {api:<10} {key} {tool:<8}: FAILED: {e}", file=sys.stderr)
                out.setdefault("errors", []).append(f"{tool}: {e}")
                continue
            finally:
                srv.window.kill()
            w: dict[str, Any] = {"us_per_unit": res[field], "server_cpu_s": res["server_cpu_s"],
                                 "wall_s": res["scenario_wall_s"], "units": res[count]}
            data = srv.window.data
            if data is not None:
                w.update({"cprofile": read_cprofile, "perf": read_perf,
                          "pyspy": read_pyspy}[tool](data))
                if tool != "cprofile":
                    data.unlink()
            out["windows"][tool] = w
            print(f"  {api:<10} {key} {tool:<8}: {res[field]:.2f} µs/{unit}", file=sys.stderr)
    finally:
        srv.stop()
    return out


# --------------------------------------------------------------------------
# the report


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def group_table(runs: list[dict[str, Any]], tool: str, title: str,
                scale: Callable[[dict[str, Any]], float] = lambda r: 1.0,
                key: str = "groups", per_unit: bool = False) -> list[str]:
    """One row per group, one column per API: its share; with per_unit, also the share of the
    unprofiled CPU per unit that it stands for."""
    have = [r for r in runs if tool in r["windows"]]
    if not have:
        return []
    total: Counter[str] = Counter()
    for r in have:
        total.update(r["windows"][tool][key])
    lines = [f"| {title} | " + " | ".join(r["api"] for r in have) + " |",
             "|---|" + "---:|" * len(have)]
    for g, _ in total.most_common():
        cells = []
        for r in have:
            share = r["windows"][tool][key].get(g, 0.0) * scale(r)
            base = r["windows"].get("plain", {}).get("us_per_unit")
            cells.append(pct(share) + (f" ({share * base:.{2 if base < 20 else 0}f} µs)"
                                       if per_unit and base else ""))
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return lines + [""]


def inside_share(r: dict[str, Any]) -> float:
    """perf's share of the server's CPU inside Python code (1 without perf)."""
    return r["windows"]["perf"]["inside"] if "perf" in r["windows"] else 1.0


def render(results: list[dict[str, Any]], top: int) -> str:
    lines: list[str] = []
    for key in SCENARIOS:
        runs = [r for r in results if r["scenario"] == key]
        if not runs:
            continue
        unit = runs[0]["unit"]
        with_perf = all("perf" in r["windows"] for r in runs)
        of = "server CPU" if with_perf else "the time inside Python code"
        lines += [f"### {key}: " + peers.ROWS[key][0].split(": ")[0].split(". ", 1)[1], ""]
        lines += [f"| server CPU µs/{unit} (utime+stime) | "
                  + " | ".join(r["api"] for r in runs) + " |", "|---|" + "---:|" * len(runs)]
        for tool, label in TOOL_LABELS.items():
            if not any(tool in r["windows"] for r in runs):
                continue
            cells = []
            for r in runs:
                w = r["windows"].get(tool)
                base = r["windows"].get("plain", {}).get("us_per_unit")
                if not w:
                    cells.append("failed")
                elif tool != "plain" and base:
                    cells.append(f"{w['us_per_unit']:.2f} ({w['us_per_unit'] / base:.2f}x)")
                else:
                    cells.append(f"{w['us_per_unit']:.2f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += group_table(runs, "perf", "perf: share of the server's CPU samples (µs per "
                             f"{unit} of the unprofiled CPU)", key="summary", per_unit=True)
        lines += group_table(runs, "perf", "perf: share of the server's CPU samples, by where")
        lines += group_table(runs, "pyspy", f"py-spy: share of {of}, innermost Python frame",
                             inside_share)
        lines += group_table(runs, "cprofile", f"cProfile: share of {of}, own time",
                             inside_share)
        for r in runs:
            ws = r["windows"]
            sp, cp = ws.get("pyspy"), ws.get("cprofile")
            k = inside_share(r)
            if sp or cp:
                cpi = {f["func"]: f for f in cp["top"]} if cp else {}
                spi = {f["func"]: f["share"] for f in sp["top"]} if sp else {}
                order = [f["func"] for f in (sp or cp)["top"]
                         if not f["func"].endswith("(C)")][:top]
                lines += [f"{key}, {r['api']}: top functions, share of {of} (py-spy: own "
                          f"time with the C it calls; cProfile: own time; calls per {unit})",
                          "", "| function | py-spy | cProfile | calls |", "|---|---:|---:|---:|"]
                for f in order:
                    c = cpi.get(f)
                    calls = f"{c['calls'] / ws['cprofile']['units']:.3g}" if c else "–"
                    lines.append(f"| {f} | {pct(spi[f] * k if f in spi else None)} | "
                                 f"{pct(c['share'] * k if c else None)} | {calls} |")
                if cp:  # the C functions cProfile saw (py-spy counts them in their callers)
                    for f in [f for f in cp["top"] if f["func"].endswith("(C)")][:4]:
                        lines.append(f"| {f['func']} | – | {pct(f['share'] * k)} | "
                                     f"{f['calls'] / ws['cprofile']['units']:.3g} |")
                lines.append("")
            pf = ws.get("perf")
            if pf:
                lines += [f"{key}, {r['api']}: perf, top symbols", "",
                          "| symbol (DSO) | share of samples |", "|---|---:|"]
                lines += [f"| {f['func']} | {pct(f['share'])} |" for f in pf["top"][:top]]
                lines.append("")
    return "\n".join(lines)


def find_pyspy(python: str) -> str | None:
    near = Path(python).parent / "py-spy"
    if near.exists():
        return str(near)
    return shutil.which("py-spy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--apis", default="coroutines,callbacks", help="coroutines,callbacks")
    p.add_argument("--scenarios", default="a,e", help="comma-separated among a,c,e,g (a,e)")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds per window of a, c and g (2)")
    peers.add_e_arguments(p)  # --e-load relay|push, --relay-*, --bcast-*: peers.py's own
    p.add_argument("--warmup", type=float, default=0.3,
                   help="seconds of echo before a, c, g (0.3)")
    p.add_argument("--top", type=int, default=10, help="functions listed per profile (10)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    p.add_argument("--no-perf", action="store_true", help="skip the perf window")
    p.add_argument("--no-pyspy", action="store_true", help="skip the py-spy window")
    p.add_argument("--no-pin", action="store_true", help="don't pin to CPUs")
    p.add_argument("--json", metavar="FILE", help="also write every window's figures")
    args = p.parse_args(argv)
    if args.e_load == "push":
        SCENARIOS["e"] = ("broadcast", *SCENARIOS["e"][1:])
    peers.ROWS["e"] = (peers.e_label(args), *peers.ROWS["e"][1:])  # render()'s heading
    args.duration_g = args.duration  # peers.scenario_echo reads it for g, duration for a, c
    apis = [a.strip() for a in args.apis.split(",") if a.strip()]
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    for a in apis:
        if a not in APIS:
            p.error(f"unknown API {a!r}")
    for k in keys:
        if k not in SCENARIOS:
            p.error(f"unknown scenario {k!r} (among {','.join(SCENARIOS)})")

    tools, notes = ["plain"], []
    if args.no_perf:
        notes.append("perf: skipped (--no-perf)")
    elif not shutil.which("perf"):
        notes.append("perf: skipped (not found)")
    else:
        tools.append("perf")
        notes.append(f"perf: `perf record -e cpu-clock -F {PERF_HZ} --call-graph dwarf,16384 -p PID` for the window")
    pyspy = None if args.no_pyspy else find_pyspy(args.python)
    if args.no_pyspy:
        notes.append("py-spy: skipped (--no-pyspy)")
    elif not pyspy:
        notes.append("py-spy: skipped (not found: pip install py-spy)")
    else:
        tools.append("pyspy")
        notes.append("py-spy: `py-spy record --nonblocking --rate 1000 --function` for the "
                     "window (idle samples left out)")
    tools.append("cprofile")
    notes.append("cProfile: enabled and disabled inside the server by SIGUSR1 around the window")

    peers.raise_nofile()
    reason = peers.check_server("tether", args.python)
    if reason:
        print(f"tether cannot be imported by {args.python}: {reason}", file=sys.stderr)
        return 1
    loadgen = build_loadgen()
    cpus = pick_cpus(args.no_pin)
    busy = background_load()
    speed = python_speed(args.python, cpus[1])
    vers = peers.versions(args.python)
    log_dir = Path(tempfile.mkdtemp(prefix="tether-profile-"))
    print(f"windows: {', '.join(tools)}; background load "
          f"{'?' if busy is None else f'{busy:.2f}'} cores", file=sys.stderr)
    started = time.monotonic()
    results, failed = [], False
    for key in keys:
        for api in apis:
            try:
                r = run_windows(api, key, args, loadgen, cpus, log_dir, tools, pyspy)
            except (RuntimeError, OSError, ValueError) as e:
                failed = True
                print(f"  {api} {key}: FAILED: {e}", file=sys.stderr)
                continue
            failed = failed or bool(r.get("errors"))
            results.append(r)
    total = time.monotonic() - started

    cmd = "python bench/profile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    pin = (f"load generator and profilers on CPU {cpus[0]}, server on CPU {cpus[1]}"
           if cpus[0] is not None else "no CPU pinning")
    print(f"## Profiles of {', '.join(k for k in SCENARIOS if k in keys)} ({total:.0f} s; "
          f"{pin})\n")
    print(render(results, args.top))
    print(f"- command: `{cmd.strip()}`")
    print("- versions: " + ", ".join(f"{k} {vers[k]}" for k in ("tether", "uvloop", "python")
                                     if k in vers))
    if speed is not None:
        print(f"- sum(range(1000)) on the server's CPU: {speed:.1f} µs")
    if busy is not None and busy > 0.2:
        print(f"- warning: {busy:.1f} cores were busy with other processes at the start")
    about = []
    for k in (k for k in SCENARIOS if k in keys):
        if k == "e":
            about.append("e " + peers.e_note(args) + (
                f", {args.bcast_burst} per turn" if args.e_load == "push" else ""))
        else:
            about.append(f"{k}: {args.duration:g} s per window, loadgen "
                         f"`{' '.join(peers.ECHO_ARGS[k])} -d {args.duration:g}`")
    print("- " + "; ".join(about))
    for n in notes:
        print(f"- {n}")
    for r in results:
        ws = r["windows"]
        bits = [f"{t} {w['units']} {PLURAL[r['unit']]}, utime+stime {w['server_cpu_s']:.2f} s in "
                f"{w['wall_s']:.2f} s" for t, w in ws.items()]
        if "perf" in ws:
            bits.append(f"perf {ws['perf']['samples']} samples")
        if "pyspy" in ws:
            bits.append(f"py-spy {ws['pyspy']['samples']} samples, "
                        f"{ws['pyspy']['inside_samples']} inside Python code")
        if "cprofile" in ws:
            bits.append(f"cProfile {ws['cprofile']['profiled_s']:.2f} s in profiled functions")
        for err in r.get("errors", []):
            bits.append(f"FAILED {err}")
        print(f"- {r['scenario']} {r['api']}: " + "; ".join(bits))
    print(f"\n(server logs in {log_dir})", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": cmd.strip(), "versions": vers, "python_sum_range_1000_us": speed,
             "background_busy_cores": busy, "tools": tools, "results": results},
            indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
