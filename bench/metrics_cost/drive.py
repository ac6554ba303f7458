#!/usr/bin/env python3
"""A/B/C of the metrics counters (issue 14): bench/peers.py's scenarios a, c, e, g for the
tether server at b42df00 ("before"), at HEAD ("after"), and at HEAD with --metrics while
/metrics is scraped every 1 s ("after+metrics"). Interleaved: every round runs the three
variants, the order rotating each round; a fresh server per (variant, round, mode).

It imports peers.py's helpers (Server, scenario_echo, scenario_broadcast, warm_up, the
loadgen build, CPU picking, python_speed) from the "after" worktree's bench/ and uses its
defaults: a, c, g 2 s each, 0.3 s warm-up, e 1000 clients x 300 messages x 32 B, burst 10.

Servers (PYTHONPATH = <worktree>/src only):
  echo       python -m tether echo --host 127.0.0.1 --port P --no-compression --quiet
             --ping-interval 0 --max-size 2000000   [+ --metrics for after+metrics]
  broadcast  python <worktree>/bench/servers/tether_peer.py broadcast 127.0.0.1 P --clients
             1000 --messages 300 --size 32 --burst 10   (as peers.py "tether")
             after+metrics: peer/tether_peer_metrics.py (the same + what --metrics adds)
Server pinned to the 2nd CPU, loadgen and the scraper to the 1st (sched_setaffinity).

Setup (two worktrees; the C accelerator copied when _speedups.c is the same in both):

  git worktree add --detach /tmp/s7bench/before b42df00
  git worktree add --detach /tmp/s7bench/after HEAD
  cp src/tether/accel/_speedups.*.so /tmp/s7bench/before/src/tether/accel/
  cp src/tether/accel/_speedups.*.so /tmp/s7bench/after/src/tether/accel/

(TETHER_AB_DIR=DIR for another place.) Figures of session 7: docs/operations.md.

Usage: .venv/bin/python bench/metrics_cost/drive.py [--rounds 5] [--json out.json]
       .venv/bin/python bench/metrics_cost/analyze.py run*.json
       PYTHONPATH=/tmp/s7bench/after/src .venv/bin/python bench/metrics_cost/scrape_time.py 0 1000 10000
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Two worktrees of the repository (see the setup above), by default under /tmp/s7bench.
WORK = Path(os.environ.get("TETHER_AB_DIR", "/tmp/s7bench"))
TREES = {"before": WORK / "before", "after": WORK / "after"}
sys.path.insert(0, str(TREES["after"] / "bench"))
import peers  # noqa: E402
from echo import background_load, proc_cpu_seconds  # noqa: E402

PY = sys.executable
HOST = peers.HOST
VARIANTS = ["before", "after", "after+metrics"]
KEYS = ["a", "c", "e", "g"]
FIELD = {"a": "server_cpu_us_per_msg", "c": "server_cpu_us_per_msg",
         "e": "server_cpu_us_per_delivery", "g": "server_cpu_us_per_handshake"}
UNIT = {"a": "µs/message", "c": "µs/message", "e": "µs/delivery", "g": "µs/handshake"}


def run_delay_s(pid: int) -> float:
    """Time the process spent runnable but waiting for a CPU (/proc/PID/schedstat, field 2;
    main thread only): how much other load competed for the server's CPU."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def env_for(tree: Path, extra: list[Path] = ()) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [tree / "src", *extra])
    env.pop("TETHER_NO_EXTENSIONS", None)
    return env


def command(variant: str, mode: str, port: int, a: argparse.Namespace) -> tuple[list[str], dict]:
    tree = TREES["before" if variant == "before" else "after"]
    metrics = variant == "after+metrics"
    if mode == "echo":
        cmd = [PY, "-m", "tether", "echo", "--host", HOST, "--port", str(port),
               "--no-compression", "--quiet", "--ping-interval", "0", "--max-size", "2000000"]
        if metrics:
            cmd.append("--metrics")
        return cmd, env_for(tree)
    bc = ["--clients", str(a.bcast_clients), "--messages", str(a.bcast_messages),
          "--size", str(a.bcast_size), "--burst", str(a.bcast_burst)]
    if metrics:
        script = HERE / "tether_peer_metrics.py"
        return [PY, str(script), "broadcast", HOST, str(port)] + bc, \
            env_for(tree, [tree / "bench" / "servers"])
    script = tree / "bench" / "servers" / "tether_peer.py"
    return [PY, str(script), "broadcast", HOST, str(port)] + bc, env_for(tree)


class Scraper:
    def __init__(self, port: int, cpu: int | None, interval: float):
        self.proc = subprocess.Popen(
            [PY, str(HERE / "scraper.py"), f"http://{HOST}:{port}/metrics", str(interval)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=peers.child_setup(cpu))

    def stop(self) -> dict:
        os.kill(self.proc.pid, signal.SIGTERM)  # the process we started, by its PID
        out, err = self.proc.communicate(timeout=15)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": err.strip()[-300:]}


def scenario_broadcast(srv, port, loadgen, cpu, args) -> dict:
    """peers.scenario_broadcast, also returning the measured window (monotonic)."""
    k, m = args.bcast_clients, args.bcast_messages
    expected = k * m
    lg = peers.LiveLoadgen(loadgen, ["broadcast", "-c", str(k), "--concurrency", "100",
                                     "-n", str(expected), "-d", "300", "--timeout", "60"],
                           port, cpu)
    try:
        lg.expect("open", timeout=120)
        time.sleep(0.3)
        c0, t0 = srv.cpu(), time.monotonic()
        os.kill(srv.pid, signal.SIGUSR2)  # the server we started
        lg.expect("done", timeout=120)
        t1 = time.monotonic()
        cpu_s = srv.cpu() - c0
        res = lg.finish(timeout=120)
    finally:
        lg.kill()
    if res["messages"] != expected:
        raise RuntimeError(f"{res['messages']} messages received, {expected} expected")
    return dict(res, deliveries=expected, server_cpu_s=cpu_s, scenario_wall_s=t1 - t0,
                server_cpu_us_per_delivery=cpu_s * 1e6 / expected, window=(t0, t1),
                loadgen_over_server_cpu=res["client_cpu_s"] / cpu_s if cpu_s else None)


def one(variant: str, rnd: int, a, loadgen, cpus, log_dir, runs, scrapes) -> None:
    lg_cpu, srv_cpu = cpus
    for mode, keys in (("echo", [k for k in ["a", "c", "g"] if k in a.keys]),
                       ("broadcast", [k for k in ["e"] if k in a.keys])):
        if not keys:
            continue
        port = peers.free_port()
        cmd, env = command(variant, mode, port, a)
        srv = peers.Server(variant.replace("+", "_"), mode, cmd, env, srv_cpu, log_dir)
        scraper = None
        measured: list[dict] = []
        try:
            srv.wait_ready(port)
            peers.run_loadgen(loadgen, ["handshake", "-n", "1"], port, lg_cpu, timeout=30)
            if variant == "after+metrics":
                scraper = Scraper(port, lg_cpu, a.scrape_interval)
            if mode == "echo":
                peers.warm_up(port, loadgen, lg_cpu, a.warmup)
            for key in keys:
                u0, s0 = proc_cpu_seconds(srv.pid)
                d0 = run_delay_s(srv.pid)
                try:
                    if key == "e":
                        r = scenario_broadcast(srv, port, loadgen, lg_cpu, a)
                    else:
                        w0 = time.monotonic()
                        r = peers.scenario_echo(key, srv, port, loadgen, lg_cpu, a)
                        r["window"] = (w0, time.monotonic())
                except (RuntimeError, OSError, ValueError) as e:
                    print(f"  [{rnd + 1}] {variant:<14} {key}: FAILED {e} {srv.log_tail(4)}",
                          file=sys.stderr)
                    runs.append({"variant": variant, "round": rnd, "key": key, "error": str(e)})
                    continue
                u1, s1 = proc_cpu_seconds(srv.pid)
                r["server_wait_s"] = run_delay_s(srv.pid) - d0
                n = {"a": "messages", "c": "messages", "e": "deliveries", "g": "handshakes"}[key]
                r.update(variant=variant, round=rnd, key=key, user_s_outer=u1 - u0,
                         sys_s_outer=s1 - s0, user_us_per_unit=(u1 - u0) * 1e6 / r[n])
                measured.append(r)
                runs.append(r)
                lgr = r.get("loadgen_over_server_cpu")
                print(f"  [{rnd + 1}] {variant:<14} {key}: {r[FIELD[key]]:8.2f} {UNIT[key]}"
                      f"  (user {u1 - u0:.2f} s, sys {s1 - s0:.2f} s, loadgen/server "
                      f"{lgr if lgr is None else round(lgr, 2)}, server waited for CPU "
                      f"{r['server_wait_s']:.2f} s of {r['window'][1] - r['window'][0]:.2f})",
                      file=sys.stderr)
        except RuntimeError as e:
            print(f"  [{rnd + 1}] {variant} {mode} server failed: {e}", file=sys.stderr)
            runs.append({"variant": variant, "round": rnd, "key": mode, "error": str(e)})
        finally:
            if scraper is not None:
                s = scraper.stop()
                s.update(variant=variant, round=rnd, mode=mode)
                scrapes.append(s)
                for r in measured:  # scrapes that overlapped the measured window
                    w0, w1 = r["window"]
                    r["scrapes_in_window"] = sum(1 for b, e in s.get("stamps", ())
                                                 if b < w1 and e > w0)
                s = {k: v for k, v in s.items() if k != "stamps"}
                print(f"  [{rnd + 1}] {variant:<14} {mode} scraper: {s}", file=sys.stderr)
            srv.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--scrape-interval", type=float, default=1.0)
    p.add_argument("--keys", default="a,c,e,g", help="scenarios, among a,c,e,g")
    a = p.parse_args()
    a.keys = a.keys.split(",")
    # peers.py's defaults
    a.duration, a.duration_g, a.warmup = 2.0, 2.0, 0.3
    a.bcast_clients, a.bcast_messages, a.bcast_size, a.bcast_burst = 1000, 300, 32, 10
    peers.raise_nofile()
    loadgen = peers.build_loadgen()
    cpus = peers.pick_cpus(False)
    speed0 = peers.python_speed(PY, cpus[1])
    print(f"loadgen CPU {cpus[0]}, server CPU {cpus[1]}; sum(range(1000)) = {speed0:.2f} µs",
          file=sys.stderr)
    log_dir = Path(tempfile.mkdtemp(prefix="tether-metrics-cost-"))
    runs: list[dict] = []
    scrapes: list[dict] = []
    busy: list[float | None] = []
    t0 = time.monotonic()
    for rnd in range(a.rounds):
        b = background_load()
        busy.append(b)
        k = rnd % len(VARIANTS)
        order = VARIANTS[k:] + VARIANTS[:k]
        print(f"round {rnd + 1}/{a.rounds}: {', '.join(order)}; background load "
              f"{b if b is None else round(b, 2)} cores", file=sys.stderr)
        for v in order:
            one(v, rnd, a, loadgen, cpus, log_dir, runs, scrapes)
    speed1 = peers.python_speed(PY, cpus[1])
    total = time.monotonic() - t0

    def vals(v, k):
        return [r[FIELD[k]] for r in runs if r.get("variant") == v and r.get("key") == k
                and "error" not in r]

    med = {v: {k: statistics.median(vals(v, k)) for k in KEYS if vals(v, k)} for v in VARIANTS}
    lines = [f"rounds {a.rounds}, {total:.0f} s; sum(range(1000)) {speed0:.2f} µs before, "
             f"{speed1:.2f} µs after; background load per round (cores): "
             + ", ".join("?" if b is None else f"{b:.2f}" for b in busy), "",
             "| scenario | before (b42df00) | after (HEAD) | after + --metrics, scraped 1/s "
             "| after/before | after+metrics/before |", "|---|---:|---:|---:|---:|---:|"]
    for k in KEYS:
        cells = []
        for v in VARIANTS:
            xs = vals(v, k)
            cells.append(f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})" if xs
                         else "failed")
        rat = [f"{med[v][k] / med['before'][k]:.3f}" if k in med[v] and k in med["before"]
               else "–" for v in ("after", "after+metrics")]
        lines.append(f"| {k} ({UNIT[k]}) | " + " | ".join(cells + rat) + " |")
    # paired: per-round ratio to the same round's "before"
    lines += ["", "per-round ratios to the same round's before: median (min–max)", "",
              "| scenario | after/before | after+metrics/before | before spread (max/min) |",
              "|---|---:|---:|---:|"]
    for k in KEYS:
        row = [f"{k}"]
        for v in ("after", "after+metrics"):
            rs = []
            for rnd in range(a.rounds):
                x = [r[FIELD[k]] for r in runs if r.get("variant") == v and r.get("key") == k
                     and r.get("round") == rnd and "error" not in r]
                y = [r[FIELD[k]] for r in runs if r.get("variant") == "before"
                     and r.get("key") == k and r.get("round") == rnd and "error" not in r]
                if x and y:
                    rs.append(x[0] / y[0])
            row.append(f"{statistics.median(rs):.3f} ({min(rs):.3f}–{max(rs):.3f})" if rs
                       else "–")
        b = vals("before", k)
        row.append(f"{max(b) / min(b):.3f}" if b else "–")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "user CPU only (utime), same units: median (min–max)", "",
              "| scenario | before | after | after+metrics | after/before | after+metrics/before |",
              "|---|---:|---:|---:|---:|---:|"]
    for k in KEYS:
        um = {}
        cells = []
        for v in VARIANTS:
            xs = [r["user_us_per_unit"] for r in runs if r.get("variant") == v
                  and r.get("key") == k and "error" not in r]
            if xs:
                um[v] = statistics.median(xs)
                cells.append(f"{um[v]:.2f} ({min(xs):.2f}–{max(xs):.2f})")
            else:
                cells.append("–")
        cells += [f"{um[v] / um['before']:.3f}" if v in um and "before" in um else "–"
                  for v in ("after", "after+metrics")]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    siw = {k: [r.get("scrapes_in_window", 0) for r in runs if r.get("variant") == "after+metrics"
               and r.get("key") == k and "error" not in r] for k in KEYS}
    lines.append("")
    lines.append("scrapes overlapping the measured window, per after+metrics run: " + "; ".join(
        f"{k} {x}" for k, x in siw.items()))
    wf = {v: [r["server_wait_s"] / (r["window"][1] - r["window"][0]) for r in runs
              if r.get("variant") == v and "error" not in r] for v in VARIANTS}
    lines.append("server runnable-but-waiting / measured wall (contention), median (max) per "
                 "variant: " + "; ".join(f"{v} {statistics.median(x):.2f} ({max(x):.2f})"
                                          for v, x in wf.items() if x))
    lgr = {k: [r["loadgen_over_server_cpu"] for r in runs if r.get("key") == k
               and r.get("loadgen_over_server_cpu")] for k in KEYS}
    lines += ["", "loadgen CPU / server CPU: " + ", ".join(
        f"{k} {min(x):.2f}–{max(x):.2f}" for k, x in lgr.items() if x)]
    ok = sum(s.get("scrapes", 0) for s in scrapes)
    bad = sum(s.get("failures", 0) for s in scrapes)
    lines.append(f"scrapes during after+metrics: {ok} ok, {bad} failed")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "scrapes": scrapes, "busy": busy,
                                            "speed": [speed0, speed1], "medians": med,
                                            "total_s": total}, indent=1))
    return 1 if any("error" in r for r in runs) or bad else 0


if __name__ == "__main__":
    sys.exit(main())
