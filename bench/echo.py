#!/usr/bin/env python3
"""Echo benchmark driver: tether vs. websockets.

Compiles bench/loadgen.c (a C WebSocket load generator) into bench/.build/,
then for each round and each server: starts the server on a free loopback
port, waits until it accepts connections, warms it up, runs the scenarios
with the load generator, and measures the server process's own CPU time
(utime + stime from /proc/<pid>/stat) and the wall time of each scenario.

Scenarios (see bench/README.md):
  a  32-byte text messages, 1 connection, 100 in flight  -> msgs/s, CPU us/msg
  b  32-byte text messages, 1 connection, 1 in flight    -> p50/p99 round trip
  c  handshakes (opt-in: --scenarios a,b,c,d)             -> handshakes/s, CPU
  d  1 MiB binary messages, 1 connection, 1 in flight    -> CPU us/MB, MB/s

Usage:
  python bench/echo.py [--servers tether,websockets] [--duration 3]
                       [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / ".build"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BUILD_DIR / "loadgen"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------
# servers


def server_command(name: str, python: str, port: int) -> list[str]:
    if name == "tether":
        return [python, "-m", "tether", "echo", "--host", HOST, "--port", str(port),
                "--no-compression", "--max-size", "2000000"]
    if name == "websockets":
        return [python, str(BENCH_DIR / "servers" / "websockets_echo.py"), HOST, str(port)]
    raise ValueError(name)


def server_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    if name == "tether":
        # Benchmark the working tree: make src/ importable even if tether is
        # not installed in the interpreter.
        src = str(REPO_DIR / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def check_server(name: str, python: str) -> str | None:
    """Return None if the server can run, else the reason it can't."""
    if name == "tether":
        probe = [python, "-m", "tether", "echo", "--help"]
    elif name == "websockets":
        probe = [python, "-c", "import websockets.asyncio.server"]
    else:
        return f"unknown server {name!r}"
    reason = run_probe(probe, server_env(name))
    return f"`{' '.join(probe[1:])}`: {reason}" if reason else None


def run_probe(probe: list[str], env: dict[str, str]) -> str | None:
    """Run a command that checks a server can start; None if it exits 0, else why not (its
    last line of output)."""
    try:
        r = subprocess.run(probe, env=env, capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {r.returncode}"
    return None


# --------------------------------------------------------------------------
# scenarios

SCENARIOS = {
    "a": {
        "title": "32 B text, 1 conn, 100 in flight",
        "args": ["echo", "-c", "1", "-k", "100", "-s", "32", "--text"],
    },
    "b": {
        "title": "32 B text, 1 conn, 1 in flight (ping-pong)",
        "args": ["echo", "-c", "1", "-k", "1", "-s", "32", "--text"],
    },
    "c": {
        "title": "handshake + close, 10 concurrent",
        "args": ["handshake", "-c", "10", "-n", "100000000"],
    },
    "d": {
        "title": "1 MiB binary, 1 conn, 1 in flight",
        "args": ["echo", "-c", "1", "-k", "1", "-s", "1048576", "--binary"],
    },
}

# (scenario, key, label, higher_is_better, format)
TABLE_ROWS = [
    ("a", "msgs_per_s", "(a) 32 B x100 in flight: msgs/s", True, "{:,.0f}"),
    ("a", "server_cpu_us_per_msg", "(a) 32 B x100 in flight: server CPU µs/msg", False, "{:.2f}"),
    ("b", "p50_us", "(b) 32 B ping-pong: p50 round trip µs", False, "{:.1f}"),
    ("b", "p99_us", "(b) 32 B ping-pong: p99 round trip µs", False, "{:.1f}"),
    ("b", "server_cpu_us_per_msg", "(b) 32 B ping-pong: server CPU µs/msg", False, "{:.2f}"),
    ("c", "handshakes_per_s", "(c) handshakes/s", True, "{:,.0f}"),
    ("c", "server_cpu_us_per_handshake", "(c) server CPU µs/handshake", False, "{:.1f}"),
    ("d", "server_cpu_us_per_mb", "(d) 1 MiB echo: server CPU µs/MB", False, "{:.1f}"),
    ("d", "mb_per_s", "(d) 1 MiB echo: MB/s", True, "{:,.1f}"),
]


# --------------------------------------------------------------------------
# helpers


def build_loadgen(force: bool = False) -> Path:
    BUILD_DIR.mkdir(exist_ok=True)
    if (not force and LOADGEN_BIN.exists()
            and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime):
        return LOADGEN_BIN
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        sys.exit("echo.py: no C compiler found (install gcc)")
    tmp = LOADGEN_BIN.with_suffix(".tmp")
    cmd = [cc, "-O2", "-o", str(tmp), str(LOADGEN_SRC)]
    print(f"building load generator: {' '.join(cmd)}", file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"echo.py: compiling loadgen.c failed:\n{r.stderr}")
    os.replace(tmp, LOADGEN_BIN)
    return LOADGEN_BIN


def rotation(names: list[str], rnd: int) -> list[str]:
    """The servers in round ``rnd``'s order: each round starts one further along, so that no
    server always runs first (or last) on a machine whose load drifts."""
    k = rnd % max(1, len(names))
    return names[k:] + names[:k]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Stop a process we started, by its PID only: SIGINT, then SIGKILL after 5 s."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def proc_cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15
    utime, stime = int(fields[11]), int(fields[12])
    return utime / CLK_TCK, stime / CLK_TCK


def background_load(seconds: float = 0.5) -> float | None:
    """CPU cores busy (machine-wide) while this script sleeps; None if unknown."""

    def sample():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        return sum(vals[:8]), idle

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    return (1 - (i1 - i0) / (t1 - t0)) * (os.cpu_count() or 1)


def python_speed(python: str, cpu: int | None) -> float | None:
    """CPU µs for `sum(range(1000))` in the server interpreter on the server's
    CPU: a reference for comparing figures taken on different machines."""
    code = ("import time, timeit; t = timeit.Timer('sum(range(1000))', timer=time.thread_time); "
            "print(min(t.repeat(repeat=5, number=2000)) / 2000 * 1e6)")
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                           preexec_fn=child_setup(cpu), stdin=subprocess.DEVNULL)
        return float(r.stdout.strip())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def pick_cpus(no_pin: bool) -> tuple[int | None, int | None]:
    """(loadgen cpu, server cpu), or (None, None) when not pinning."""
    if no_pin:
        return None, None
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def child_setup(cpu: int | None):
    """preexec_fn for children: optional CPU pinning, default SIGINT handling.

    A driver started in the background by a non-interactive shell inherits
    SIGINT as ignored; reset it so that servers stop on SIGINT.
    """

    def fn():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return fn


class ServerProcess:
    def __init__(self, name: str, python: str, cpu: int | None, log_dir: Path):
        self.name = name
        self.port = free_port()
        self.cmd = server_command(name, python, self.port)
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd, env=server_env(name), stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=child_setup(cpu),
        )

    def log_tail(self, n: int = 8) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} server exited with status {self.proc.returncode} before "
                    f"accepting connections:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} server did not accept connections within {timeout:.0f} s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> tuple[float, float]:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def run_loadgen(loadgen: Path, args: list[str], port: int, cpu: int | None,
                timeout: float) -> dict:
    cmd = [str(loadgen)] + args + ["--host", HOST, "--port", str(port)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=child_setup(cpu), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"load generator timed out after {timeout:.0f} s: {' '.join(cmd)}")
    if r.returncode != 0:
        msg = r.stderr.strip() or f"exit status {r.returncode}"
        raise RuntimeError(f"load generator failed: {msg}")
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"could not parse load generator output: {r.stdout!r}")


def run_scenario(key: str, server: ServerProcess, loadgen: Path, cpu: int | None,
                 duration: float) -> dict:
    sc = SCENARIOS[key]
    args = sc["args"] + ["-d", str(duration)]
    cpu0 = server.cpu()
    t0 = time.monotonic()
    res = run_loadgen(loadgen, args, server.port, cpu, timeout=duration + 60)
    wall = time.monotonic() - t0
    cpu1 = server.cpu()
    server_user = cpu1[0] - cpu0[0]
    server_sys = cpu1[1] - cpu0[1]
    server_cpu = server_user + server_sys
    out = dict(res)
    out["server_cpu_s"] = server_cpu
    out["server_user_s"] = server_user
    out["server_sys_s"] = server_sys
    out["scenario_wall_s"] = wall
    out["server_cpu_util"] = server_cpu / wall if wall > 0 else 0.0
    if res["mode"] == "echo":
        n = res["messages"] or 1
        out["server_cpu_us_per_msg"] = server_cpu * 1e6 / n
        out["server_cpu_us_per_mb"] = server_cpu * 1e6 / (res["bytes"] / 1e6) if res["bytes"] else 0.0
        out["client_cpu_us_per_msg"] = res["client_cpu_us_per_op"]
    elif res["mode"] == "handshake":
        n = res["handshakes"] or 1
        out["server_cpu_us_per_handshake"] = server_cpu * 1e6 / n
    return out


def warm_up(server: ServerProcess, loadgen: Path, cpu: int | None, seconds: float) -> None:
    # A WebSocket-level sanity check first, then a short burst of each kind.
    run_loadgen(loadgen, ["handshake", "-n", "1"], server.port, cpu, timeout=30)
    if seconds > 0:
        run_loadgen(loadgen, ["echo", "-k", "10", "-s", "32", "-d", str(seconds)],
                    server.port, cpu, timeout=seconds + 30)
        run_loadgen(loadgen, ["echo", "-k", "1", "-s", "1M", "--binary", "-n", "5"],
                    server.port, cpu, timeout=60)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="tether,websockets",
                   help="comma-separated servers to run (tether, websockets)")
    p.add_argument("--scenarios", default="a,b,d",
                   help="comma-separated scenarios among a,b,c,d (default a,b,d)")
    p.add_argument("--duration", type=float, default=3.0,
                   help="seconds per scenario run (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, servers interleaved (default 3)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="seconds of warm-up traffic after each server start (default 0.5)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter used to run the servers (default: this one)")
    p.add_argument("--json", metavar="FILE", help="also write all results as JSON to FILE")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin load generator and server to separate CPUs")
    p.add_argument("--rebuild", action="store_true", help="recompile the load generator")
    args = p.parse_args(argv)

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")

    loadgen = build_loadgen(force=args.rebuild)
    lg_cpu, srv_cpu = pick_cpus(args.no_pin)

    results: dict[str, dict] = {}
    runnable = []
    for name in servers:
        reason = check_server(name, args.python)
        if reason:
            results[name] = {"status": "skipped", "reason": reason}
            print(f"[{name}] skipped: {reason}", file=sys.stderr)
        else:
            results[name] = {"status": "ok", "runs": {k: [] for k in scenarios}, "errors": []}
            runnable.append(name)

    est = args.rounds * len(runnable) * (len(scenarios) * args.duration + args.warmup + 2)
    pin_desc = (f"load generator on CPU {lg_cpu}, servers on CPU {srv_cpu}"
                if lg_cpu is not None else "no CPU pinning")
    print(f"servers: {', '.join(runnable) or 'none'}; scenarios: {','.join(scenarios)}; "
          f"{args.rounds} rounds x {args.duration:g} s; {pin_desc}; ~{est:.0f} s",
          file=sys.stderr)

    busy = background_load()
    if busy is not None and busy > 0.2:
        print(f"warning: the machine is already busy ({busy:.1f} CPU cores in use by other "
              f"processes); figures will be noisy", file=sys.stderr)

    speed = python_speed(args.python, srv_cpu)

    log_dir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    started = time.monotonic()
    interrupted = False
    try:
        for rnd in range(args.rounds):
            order = runnable if rnd % 2 == 0 else list(reversed(runnable))
            for name in order:
                res = results[name]
                server = ServerProcess(name, args.python, srv_cpu, log_dir)
                try:
                    server.wait_ready(timeout=30)
                    warm_up(server, loadgen, lg_cpu, args.warmup)
                    for key in scenarios:
                        r = run_scenario(key, server, loadgen, lg_cpu, args.duration)
                        r["round"] = rnd
                        res["runs"][key].append(r)
                        print(f"[round {rnd + 1}/{args.rounds}] {name:<10} {key}: "
                              + summarize(key, r), file=sys.stderr)
                except RuntimeError as e:
                    msg = str(e)
                    if not server.alive():
                        msg += (f"\n(server exited with status {server.proc.returncode}; "
                                f"log tail:)\n{server.log_tail()}")
                    res["errors"].append({"round": rnd, "error": msg})
                    print(f"[round {rnd + 1}/{args.rounds}] {name}: ERROR: {msg}",
                          file=sys.stderr)
                finally:
                    server.stop()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; reporting what was measured", file=sys.stderr)
    total = time.monotonic() - started

    # medians
    for name in runnable:
        res = results[name]
        res["median"] = {}
        for key in scenarios:
            runs = res["runs"][key]
            if not runs:
                continue
            numeric = {k for r in runs for k, v in r.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            res["median"][key] = {k: median([r[k] for r in runs if k in r]) for k in sorted(numeric)}

    table, ratios = render_table(results, servers, scenarios)
    print()
    print(f"## Echo benchmark ({args.rounds} rounds x {args.duration:g} s, medians; {pin_desc})")
    print()
    print(table)
    if speed is not None:
        print(f"\nPython speed reference on the server CPU: sum(range(1000)) = {speed:.1f} µs CPU "
              f"(scale by this when comparing machines)")
    notes = []
    for name in servers:
        res = results[name]
        if res["status"] == "skipped":
            notes.append(f"- {name}: skipped ({res['reason']})")
        elif res["errors"]:
            notes.append(f"- {name}: {len(res['errors'])} failed server run(s); first: "
                         + res["errors"][0]["error"].splitlines()[0])
    lg_notes = []
    for name in runnable:
        for key in scenarios:
            m = results[name]["median"].get(key)
            if m and "client_cpu_us_per_msg" in m:
                lg_notes.append(f"{name}/{key} {m['client_cpu_us_per_msg']:.2f}")
    if lg_notes:
        notes.append("- load generator CPU µs/msg (median): " + ", ".join(lg_notes))
    if busy is not None and busy > 0.2:
        notes.append(f"- warning: {busy:.1f} CPU cores were busy with other processes before the "
                     f"run; figures are noisy")
    if notes:
        print()
        print("\n".join(notes))
    print(f"\n(total {total:.0f} s; server logs in {log_dir})")

    if args.json:
        doc = {
            "meta": {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "python": args.python,
                "python_version": subprocess.run(
                    [args.python, "-c", "import sys; print(sys.version.split()[0])"],
                    capture_output=True, text=True).stdout.strip(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "loadgen_cpu": lg_cpu,
                "server_cpu": srv_cpu,
                "rounds": args.rounds,
                "duration_s": args.duration,
                "scenarios": {k: {"title": SCENARIOS[k]["title"], "loadgen_args": SCENARIOS[k]["args"]}
                              for k in scenarios},
                "clk_tck": CLK_TCK,
                "background_busy_cores": busy,
                "python_sum_range_1000_us": speed,
                "interrupted": interrupted,
                "total_s": total,
            },
            "servers": results,
            "ratios": ratios,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)

    failed = any(results[n].get("errors") for n in runnable)
    return 1 if failed or interrupted else 0


def summarize(key: str, r: dict) -> str:
    if r["mode"] == "handshake":
        return (f"{r['handshakes_per_s']:,.0f} hs/s, server {r['server_cpu_us_per_handshake']:.1f} "
                f"µs CPU/hs")
    s = (f"{r['msgs_per_s']:,.0f} msg/s, p50 {r['p50_us']:.1f} µs, p99 {r['p99_us']:.1f} µs, "
         f"server {r['server_cpu_us_per_msg']:.2f} µs CPU/msg (util {r['server_cpu_util']:.0%}), "
         f"loadgen {r['client_cpu_us_per_msg']:.2f} µs CPU/msg")
    if key == "d":
        s += f", {r['mb_per_s']:.0f} MB/s, server {r['server_cpu_us_per_mb']:.0f} µs CPU/MB"
    return s


def render_table(results: dict, servers: list[str], scenarios: list[str]) -> tuple[str, dict]:
    cols = [s for s in servers]
    show_ratio = "tether" in servers and "websockets" in servers
    header = ["metric"] + cols + (["ratio (>1: tether better)"] if show_ratio else [])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    ratios = {}
    for sc, key, label, higher, fmt in TABLE_ROWS:
        if sc not in scenarios:
            continue
        row = [label]
        vals = {}
        for name in cols:
            res = results[name]
            if res["status"] != "ok":
                row.append("skipped")
                continue
            runs = [r[key] for r in res["runs"].get(sc, []) if key in r]
            if not runs:
                row.append("failed")
                continue
            med = statistics.median(runs)
            vals[name] = med
            cell = fmt.format(med)
            if len(runs) > 1:
                cell += f" ({fmt.format(min(runs))}–{fmt.format(max(runs))})"
            row.append(cell)
        if show_ratio:
            t, w = vals.get("tether"), vals.get("websockets")
            if t and w:
                ratio = t / w if higher else w / t
                ratios[f"{sc}.{key}"] = ratio
                kind = "tether/websockets" if higher else "websockets/tether"
                row.append(f"{ratio:.2f}x ({kind})")
            else:
                row.append("–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), ratios


if __name__ == "__main__":
    sys.exit(main())
