#!/usr/bin/env python3
"""A million connections on one machine (issue 16): one `tether broadcast` process, as users run
it (logging on, pings at the default 20 s interval, uvloop when installed), holds N concurrent
WebSocket connections from a C load generator on the same machine (loopback, source addresses
127.0.0.2, 127.0.0.3, ...), then broadcasts one message to all of them.

Run by hand, as root (it raises the open-files limit of both processes past the default hard
limit), on an otherwise quiet machine with ~20 GiB free. Not part of the test suite. Needs gcc
(it builds bench/million.c into bench/.build/million).

Usage:
  sudo .venv/bin/python bench/million.py                       # 1,000,000 connections
  sudo .venv/bin/python bench/million.py -n 100000             # a smaller run
  sudo .venv/bin/python bench/million.py --json million.json   # also write the figures as JSON
  sudo .venv/bin/python bench/million.py --app echo            # tether echo: hold + pings only

Time: opening runs at ~2,500-7,000 connections/s on 2 cores, then 5 s settle, 30 s idle
sample, the broadcast, and the teardown (the server logs every close): ~1 min for 20,000;
for 1M, opening alone is 3-7 min and stops at --open-budget (720 s) in any case.

Why `tether broadcast` and not `tether echo`: echo only answers the sender, so nothing in it
sends one message to everyone. `tether broadcast` (the articles' chat room) relays every message
from one client to every open client, the sender included, through tether.broadcast() -- the
same server, handshake, pings and per-connection task as echo, plus one set of clients.

What it sets (and restores at the end, also on Ctrl-C or failure):
  - RLIMIT_NOFILE of the server and of the load generator: N + 4096 (soft and hard), set in
    this process and inherited. Raising the hard limit needs CAP_SYS_RESOURCE (root outside a
    restricted container); when that fails, the run is capped at the hard limit minus 100
    connections and says so: descriptors are then the limit.
  - fs.nr_open, only if it is below that (the kernel default, 1048576, is enough for 1M).
  - fs.file-max, only if below 2*N + 65536 (the server's and the client's ends both count).
  - Nothing else: the load generator binds each socket to an explicit source address and port
    (127.0.0.2..., ports 20000-59999, --per-ip 40000 per address: 25 addresses for 1M), so the
    ephemeral port range (net.ipv4.ip_local_port_range) does not limit it and connect() does
    not search it; 127.0.0.0/8 is all on the loopback already. The CLI listens with a
    backlog of 1024 (somaxconn 4096 here) and allows 2048 pending handshakes: the load
    generator keeps at most --concurrency (500) connections opening at once, under both.
    tcp_mem is left alone: idle sockets hold no buffer memory (sockstat "mem" stays ~0).
  The originals are printed at the start and restored at the end.

What it reports (a table, and JSON with --json):
  - time to open all N connections and the rate (connections/s), and what stopped the opening
    if it stopped short: descriptors (EMFILE), ports (EADDRNOTAVAIL), memory (MemAvailable under
    --min-avail-mib, default 3072), or the --open-budget time limit;
  - server RSS (VmRSS) before and after, and per connection;
  - kernel memory before/after: Slab, SUnreclaim, /proc/net/sockstat TCP "mem" pages and
    sockets in use, MemAvailable; per connection (each connection is two sockets here: the
    server's end and the client's);
  - server CPU while idle with pings running (utime+stime over --idle-seconds, default 30):
    cores busy, and µs per ping answered;
  - the broadcast: one 32-byte text message from one client, time until 50/90/99/100% of the
    connections received it, and the server CPU it took.
The server's log (one line per connection) goes to a temporary file, deleted at the end unless
--keep-log.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SRC = BENCH_DIR / "million.c"
BIN = BENCH_DIR / ".build" / "million"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def build() -> Path:
    BIN.parent.mkdir(exist_ok=True)
    if BIN.exists() and BIN.stat().st_mtime >= SRC.stat().st_mtime:
        return BIN
    tmp = BIN.with_suffix(".tmp")
    subprocess.run(["gcc", "-O2", "-o", str(tmp), str(SRC)], check=True)
    os.replace(tmp, BIN)
    return BIN


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def sysctl_get(name: str) -> str:
    return " ".join(sysctl_path(name).read_text().split())


def sysctl_set(name: str, value: str) -> None:
    sysctl_path(name).write_text(value + "\n")


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0])  # kB
    return out


def sockstat() -> dict[str, int]:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            return {f[i]: int(f[i + 1]) for i in range(0, len(f), 2)}
    return {}


def kernel_snapshot() -> dict[str, int]:
    m = meminfo()
    s = sockstat()
    return {"slab_kib": m["Slab"], "sunreclaim_kib": m["SUnreclaim"],
            "mem_available_kib": m["MemAvailable"], "tcp_mem_pages": s.get("mem", 0),
            "tcp_inuse": s.get("inuse", 0)}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    return sum(cpu_us(pid))


def cpu_us(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds."""
    data = Path(f"/proc/{pid}/stat").read_text()
    f = data[data.rindex(")") + 2:].split()
    return int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores; /proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / CLK_TCK


def stop(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Stop a process this script started, by its PID: SIGINT, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


class _Skip(Exception):
    pass


class Loadgen:
    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.last: dict[str, Any] = {}

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        if not self.sel.select(timeout):
            return None
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({self.proc.wait()})")
        ev = json.loads(line)
        if ev.get("event") in ("progress", "opened", "exit"):
            self.last = ev
        return ev  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--conns", type=int, default=1_000_000)
    ap.add_argument("--port", type=int, default=18765)
    ap.add_argument("--per-ip", type=int, default=40000,
                    help="connections per source address, on explicit source ports 20000 "
                         "onwards (default 40000: 25 addresses for 1M)")
    ap.add_argument("--concurrency", type=int, default=500,
                    help="connections opening at once (default 500)")
    ap.add_argument("--min-avail-mib", type=int, default=3072,
                    help="stop opening when MemAvailable falls under this (default 3072)")
    ap.add_argument("--open-budget", type=float, default=720,
                    help="stop opening after this many seconds (default 720)")
    ap.add_argument("--idle-seconds", type=float, default=30)
    ap.add_argument("--app", choices=["broadcast", "echo"], default="broadcast",
                    help="the tether CLI app to run (default broadcast; echo: hold and pings "
                         "only, no broadcast step)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep-log", action="store_true")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("million.py: run as root (it raises RLIMIT_NOFILE past the hard limit)",
              file=sys.stderr)
        return 2
    loadgen = build()
    watched = ["fs.nr_open", "fs.file-max", "net.ipv4.ip_local_port_range", "net.core.somaxconn",
               "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_mem"]
    original = {k: sysctl_get(k) for k in watched}
    nofile = args.conns + 4096
    # Raise this process's RLIMIT_NOFILE (the children inherit it). Raising the hard limit
    # takes CAP_SYS_RESOURCE; without it (some containers), every process here is capped at
    # the hard limit, and the run goes as far as that allows: descriptors are the limit.
    soft0, hard0 = resource.getrlimit(resource.RLIMIT_NOFILE)
    fd_limit: dict[str, Any] = {"soft_before": soft0, "hard_before": hard0, "wanted": nofile}
    try:
        if nofile > int(sysctl_get("fs.nr_open")):
            sysctl_set("fs.nr_open", str(nofile))  # restored below
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    except (PermissionError, ValueError, OSError) as e:
        if sysctl_get("fs.nr_open") != original["fs.nr_open"]:
            sysctl_set("fs.nr_open", original["fs.nr_open"])
        nofile = hard0
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard0, hard0))
        capped = max(1, min(args.conns, hard0 - 100))
        fd_limit["raise_failed"] = f"{type(e).__name__}: {e}"
        fd_limit["conns_capped_to"] = capped
        print(f"million.py: cannot raise RLIMIT_NOFILE to {args.conns + 4096} ({e}; raising the "
              f"hard limit needs CAP_SYS_RESOURCE): each process may hold {hard0} descriptors, "
              f"so this run opens {capped:,} connections, not {args.conns:,}", file=sys.stderr)
        args.conns = capped
    wanted = {"fs.file-max": 2 * args.conns + 65536}
    print("settings before:", json.dumps(original), file=sys.stderr)
    changed: dict[str, str] = {}
    result: dict[str, Any] = {"conns_target": args.conns, "settings_before": original,
                              "rlimit_nofile": nofile, "fd_limit": fd_limit}
    server = lg = None
    logdir = tempfile.mkdtemp(prefix="million-")
    log_path = Path(logdir) / "server.log"
    try:
        for k, v in wanted.items():
            if int(original[k]) < v:
                sysctl_set(k, str(v))
                changed[k] = str(v)
        result["settings_changed"] = changed
        print("settings changed:", json.dumps(changed) if changed else "none",
              f"(and RLIMIT_NOFILE={nofile} for both processes)", file=sys.stderr)

        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_DIR / "src") + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "tether", args.app, "--host", "127.0.0.1",
               "--port", str(args.port)]
        result["server_cmd"] = " ".join(["python"] + cmd[1:])
        logf = open(log_path, "wb")
        server = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        for _ in range(100):
            time.sleep(0.1)
            if server.poll() is not None:
                raise RuntimeError("server exited: " + log_path.read_text()[-2000:])
            if b"event=listen" in log_path.read_bytes()[:4096]:
                break
        time.sleep(1)
        rss0 = rss_kib(server.pid)
        k0 = kernel_snapshot()
        result["server_rss_before_kib"] = rss0
        result["kernel_before"] = k0

        lg = Loadgen([str(loadgen), "--port", str(args.port), "-n", str(args.conns),
                      "--per-ip", str(args.per_ip), "--concurrency", str(args.concurrency),
                      "--min-avail-mib", str(args.min_avail_mib)])
        t_start = time.monotonic()
        cpu_open0 = cpu_s(server.pid)
        ou0, os0 = cpu_us(server.pid)
        busy0 = machine_busy_s()
        opened = None
        last_print = 0.0
        stop_sent = False
        while opened is None:
            ev = lg.next_event(5)
            now = time.monotonic()
            if ev and ev["event"] == "opened":
                opened = ev
            elif ev and now - last_print >= 10:
                last_print = now
                print(f"  {ev['t']:6.0f} s  open {ev['open']:>9,}  pending {ev['pending']:>4}  "
                      f"failed {ev['failed_connect'] + ev['failed_handshake']:,}  closed "
                      f"{ev['closed_after_open']:,}  server RSS {rss_kib(server.pid) / 1024:,.0f} "
                      f"MiB  MemAvailable {ev['mem_available_kib'] / 1048576:.1f} GiB",
                      file=sys.stderr)
            if not stop_sent and now - t_start > args.open_budget:
                lg.send("stop")
                stop_sent = True
                result["open_budget_hit"] = True
            if server.poll() is not None:
                raise RuntimeError("server exited while opening")
        result["open_cpu_s"] = cpu_s(server.pid) - cpu_open0
        ou1, os1 = cpu_us(server.pid)
        result["open_server_user_s"], result["open_server_sys_s"] = ou1 - ou0, os1 - os0
        result["open_machine_busy_s"] = machine_busy_s() - busy0
        result["open_loadgen_cpu_s"] = cpu_s(lg.proc.pid)
        result["opened"] = opened
        n = opened["open"]
        result["conns_open"] = n
        result["open_s"] = opened["open_s"]
        result["open_rate_per_s"] = n / opened["open_s"] if opened["open_s"] else None
        result["open_stopped_by"] = opened["reason"] + (
            f" ({opened['errno']})" if opened["errno"] else "")
        print(f"opened {n:,} in {opened['open_s']:.1f} s ({result['open_stopped_by']})",
              file=sys.stderr)

        # settle, then memory
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:
            lg.next_event(1)
        rss1 = rss_kib(server.pid)
        k1 = kernel_snapshot()
        result["server_rss_after_kib"] = rss1
        result["kernel_after"] = k1
        result["server_rss_per_conn_kib"] = (rss1 - rss0) / n if n else None
        kd = {k: k1[k] - k0[k] for k in k0}
        result["kernel_delta"] = kd
        if n:
            result["kernel_per_conn"] = {
                "slab_kib": kd["slab_kib"] / n, "sunreclaim_kib": kd["sunreclaim_kib"] / n,
                "tcp_mem_kib": kd["tcp_mem_pages"] * PAGE / 1024 / n,
                "mem_available_drop_kib": -kd["mem_available_kib"] / n,
            }
        print(f"server RSS {rss0 / 1024:,.0f} -> {rss1 / 1024:,.0f} MiB; kernel "
              f"{json.dumps(kd)}", file=sys.stderr)

        # idle with pings: server CPU and pings answered over the window
        print(f"sampling server CPU for {args.idle_seconds:.0f} s (idle, pings on)...",
              file=sys.stderr)
        u0, s0 = cpu_us(server.pid)
        c0 = u0 + s0
        b0 = machine_busy_s()
        p0 = lg.last["pings"]
        closed0 = lg.last["closed_after_open"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.idle_seconds:
            lg.next_event(1)
        dt = time.monotonic() - t0
        u1, s1 = cpu_us(server.pid)
        c1 = u1 + s1
        b1 = machine_busy_s()
        lg.send("stop")  # no-op once opening is over; makes sure a progress line comes
        lg.next_event(2)
        pings = lg.last["pings"] - p0
        result["idle"] = {
            "seconds": dt, "server_cpu_s": c1 - c0, "cores": (c1 - c0) / dt,
            "server_user_s": u1 - u0, "server_sys_s": s1 - s0,
            "machine_cores_busy": (b1 - b0) / dt,
            "pings": pings, "pings_per_s": pings / dt,
            "us_per_ping": (c1 - c0) * 1e6 / pings if pings else None,
            "closed_during": lg.last["closed_after_open"] - closed0,
            "open_at_end": lg.last["open"],
        }
        print(f"idle: {json.dumps(result['idle'])}", file=sys.stderr)

        # the broadcast
        if args.app != "broadcast":
            raise _Skip
        u0, s0 = cpu_us(server.pid)
        lg.send("broadcast")
        bc = None
        deadline = time.monotonic() + 180
        while bc is None and time.monotonic() < deadline:
            ev = lg.next_event(5)
            if ev and ev["event"] == "broadcast":
                bc = ev
        result["broadcast"] = bc
        u1, s1 = cpu_us(server.pid)
        result["broadcast_server_cpu_s"] = u1 + s1 - u0 - s0
        result["broadcast_server_user_s"] = u1 - u0
        result["broadcast_server_sys_s"] = s1 - s0
        k2 = kernel_snapshot()
        result["kernel_after_broadcast"] = k2
        result["server_rss_after_broadcast_kib"] = rss_kib(server.pid)
        print(f"broadcast: {json.dumps(bc)}", file=sys.stderr)
    except _Skip:
        pass
    finally:
        if lg is not None:
            try:
                lg.send("quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                lg.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                lg.proc.kill()
                lg.proc.wait(timeout=30)
        if server is not None:
            # let it see the clients go (one log line each), then Ctrl-C
            t_close = time.monotonic()
            for _ in range(240):
                if server.poll() is not None or sockstat().get("inuse", 0) < 10000:
                    break
                time.sleep(0.5)
            result["server_close_all_s"] = time.monotonic() - t_close
            stop(server, timeout=60)
        for k in watched:
            if sysctl_get(k) != original[k]:
                sysctl_set(k, original[k])
        restored = {k: sysctl_get(k) for k in watched}
        result["settings_restored"] = restored == original
        print("settings restored:", restored == original, file=sys.stderr)
        if not args.keep_log:
            log_path.unlink(missing_ok=True)
            os.rmdir(logdir)
        else:
            print(f"server log: {log_path}", file=sys.stderr)

    result["app"] = args.app
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def print_table(r: dict[str, Any]) -> None:
    n = r.get("conns_open", 0)
    kd = r.get("kernel_delta", {})
    kp = r.get("kernel_per_conn", {})
    idle = r.get("idle", {})
    bc = r.get("broadcast") or {}
    rows = [
        ("connections open", f"{n:,} of {r['conns_target']:,}"),
        ("stopped by", r.get("open_stopped_by", "?")),
        ("time to open them all", f"{r.get('open_s', 0):.1f} s "
                                  f"({r.get('open_rate_per_s') or 0:,.0f}/s)"),
        ("server CPU while opening", f"{r.get('open_cpu_s', 0):.1f} s "
                                     f"({r.get('open_cpu_s', 0) * 1e6 / max(n, 1):.0f} µs/conn)"),
        ("  machine busy while opening", f"{r.get('open_machine_busy_s', 0) / max(r.get('open_s', 1), 1e-9):.2f} "
                                         f"of {os.cpu_count()} cores (load generator "
                                         f"{r.get('open_loadgen_cpu_s', 0):.1f} s CPU)"),
        ("server RSS", f"{r.get('server_rss_before_kib', 0) / 1024:,.0f} -> "
                       f"{r.get('server_rss_after_kib', 0) / 1024:,.0f} MiB"),
        ("server RSS per connection", f"{r.get('server_rss_per_conn_kib') or 0:.2f} KiB"),
        ("kernel Slab", f"+{kd.get('slab_kib', 0) / 1048576:.2f} GiB "
                        f"({kp.get('slab_kib', 0):.2f} KiB/conn, both ends)"),
        ("kernel SUnreclaim", f"+{kd.get('sunreclaim_kib', 0) / 1048576:.2f} GiB "
                              f"({kp.get('sunreclaim_kib', 0):.2f} KiB/conn)"),
        ("sockstat TCP mem", f"{r.get('kernel_before', {}).get('tcp_mem_pages', 0):,} -> "
                             f"{r.get('kernel_after', {}).get('tcp_mem_pages', 0):,} pages"),
        ("MemAvailable drop", f"{-kd.get('mem_available_kib', 0) / 1048576:.2f} GiB "
                              f"({kp.get('mem_available_drop_kib', 0):.2f} KiB/conn, all in)"),
        ("idle with pings: server CPU", f"{idle.get('cores', 0):.3f} cores over "
                                        f"{idle.get('seconds', 0):.0f} s (machine: "
                                        f"{idle.get('machine_cores_busy', 0):.2f} cores busy)"),
        ("  pings answered/s", f"{idle.get('pings_per_s', 0):,.0f} "
                               f"({idle.get('us_per_ping') or 0:.1f} µs server CPU each; user "
                               f"{idle.get('server_user_s', 0):.2f} s, sys "
                               f"{idle.get('server_sys_s', 0):.2f} s)"),
        ("  closed while idle", f"{idle.get('closed_during', 0):,}"),
        ("broadcast: first / p50 / p99 / all", f"{bc.get('first_ms', -1):.0f} / "
                                               f"{bc.get('p50_ms', -1):.0f} / "
                                               f"{bc.get('p99_ms', -1):.0f} / "
                                               f"{bc.get('all_ms', -1):.0f} ms "
                                               f"({bc.get('received', 0):,} of "
                                               f"{bc.get('expected', 0):,})"),
        ("broadcast: server CPU", f"{r.get('broadcast_server_cpu_s', 0):.2f} s (user "
                                  f"{r.get('broadcast_server_user_s', 0):.2f}, sys "
                                  f"{r.get('broadcast_server_sys_s', 0):.2f}; "
                                  f"{r.get('broadcast_server_cpu_s', 0) * 1e6 / max(bc.get('expected', 0), 1):.1f}"
                                  " µs/delivery)"),
    ]
    if r.get("app") != "broadcast":
        rows = [row for row in rows if not row[0].startswith("broadcast")]
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{w}}  {b}")


if __name__ == "__main__":
    sys.exit(main())
