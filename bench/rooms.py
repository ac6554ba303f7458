#!/usr/bin/env python3
"""Rooms (issue 16, performance round three): tether's hub against what users would pick
instead for rooms, python-socketio (AsyncServer on uvicorn) and Socket.IO 4.8 on Node, in the
same run. R rooms (--rooms, default 1) of M members (--members, default 1,000); in each room
one member publishes messages with a 64-byte text body (--size) as fast as the window allows,
every member (the publisher included) receives each of them.

Figures, per server, over --duration s (10) after --warmup s (2) of the same traffic:

  deliveries/s       messages received by all the members together, counted by the client
  server CPU         utime + stime from /proc/PID/stat of the server's processes (the tree
                     found once it listens), per delivery (µs) and in cores
  client CPU         the load client's own (getrusage), in cores and per delivery: a client at
                     ~1 core while the server is below is the bottleneck (flagged in the notes)
  bytes/delivery     what one delivery is on the wire, WebSocket frame header included
  messages/s         publishes per second (deliveries/s / M when the window is full)
  others             the CPU the rest of the machine used meanwhile (/proc/stat busy time minus
                     the server's and the client's), in cores: this machine is shared

Servers (each a fresh process per round; the order rotates every round; pinned to the second
CPU, the load client to the first):

  tether           python -m tether chat --data - --host 127.0.0.1 --port P (the chat's hub:
                   rooms, presence, history in memory; its CLI defaults: uvloop when installed),
                   from --python (default .venv/bin/python) with --tether-src first on
                   PYTHONPATH (default: the working tree's src/; --tether-rev REV runs REV's
                   src/, extracted with `git archive`, as bench/presence_storm.py does).
                   Members: ws://127.0.0.1:P/ws?name=m<room>_<i>, Origin http://127.0.0.1:P,
                   {"type":"subscribe","topic":"room<r>"}; the publisher sends
                   {"type":"publish","topic":"room<r>","data":"xxx…"} (the hub's protocol,
                   docs/hub-protocol.md) and gets an `ack` per publish besides its `message`.
  socketio-node    bench/servers/socketio_storm.js: socket.io 4.8 (bench/.socketio, pinned by
                   its package-lock.json; `npm ci` there when node_modules is missing). Members
                   emit "join" (socket.join(room), acked); the publisher emits
                   "publish" (room, "xxx…"), which the server sends on with
                   io.to(room).emit("message", data): '42["message","xxx…"]' to every member.
  python-socketio  bench/servers/socketio_storm_app.py under uvicorn with its defaults (uvloop,
                   httptools, its default websockets engine), in a venv of its own
                   (--socketio-python): enter_room on "join"; "publish" does
                   await sio.emit("message", data, to=room).

The load client (bench/rooms_client.c, built into bench/.build/ with gcc -O2) is one C
process, epoll, one thread, for all three: its own RFC 6455 client (no extension offered,
masked frames, pings answered) and the Engine.IO 4 / Socket.IO 4 text packets that
socket.io-client sends over a WebSocket ("40", '420["join","room0"]', "3" for pings). It
counts messages in the byte stream without assembling them (a message's first 24 bytes give
its kind). Members join 100 at a time (--concurrency); the publisher of a room is its member
0 (so, as for every member, its own message counts as a delivery), the same for every server.
Window: a publisher keeps at most --window (32) messages that the room's average member has
not received yet (sent - deliveries in the room / M), topping up after every batch of reads,
all of a top-up's publishes in one write. So every server gets the same offered load: as
much as it can take, a bounded backlog, no member left behind far enough for tether's slow-
subscriber limit (1 MiB unsent) to close it. A run fails when any member is closed, gets an
error, or the joins take longer than --join-timeout (120 s).

Setup:

  (cd bench/.socketio && npm ci)          # done by the script when node_modules is missing
  python3 -m venv /tmp/s9sio && /tmp/s9sio/bin/pip install python-socketio 'uvicorn[standard]'

Usage:

  .venv/bin/python bench/rooms.py                          # 3 servers x 3 rounds, ~2 min
  .venv/bin/python bench/rooms.py --tether-rev HEAD --json rooms.json
  .venv/bin/python bench/rooms.py --servers tether --rounds 1 --duration 5
  .venv/bin/python bench/rooms.py --rooms 4 --members 1000 --window 16

Options: --rounds 3 --servers tether,socketio-node,python-socketio --rooms 1 --members 1000
--size 64 --window 32 --duration 10 --warmup 2 --concurrency 100 --join-timeout 120 --python
--socketio-python --tether-src --tether-rev --json FILE --no-pin --rebuild. Server logs go to
a new folder under $TMPDIR. Only the processes started here are stopped, by PID. Exit status 1
if a run failed or a server could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from asgi import process_tree  # noqa: E402  (bench/asgi.py: pid + descendants)
from echo import HOST, free_port, pick_cpus, rotation  # noqa: E402  (bench/echo.py's helpers)
from peers import child_setup, raise_nofile  # noqa: E402
from presence_storm import (  # noqa: E402  (issue 17's join storm: servers, helpers)
    Client,
    Server,
    add_server_args,
    ensure_node_modules,
    header,
    json_meta,
    machine_busy_s,
    runnable_servers,
    server_spec,
    set_tether_source,
    versions,
)

ALL_SERVERS = ["tether", "socketio-node", "python-socketio"]
SIO_PYTHONS = [Path("/tmp/s9sio/bin/python"), Path("/tmp/s7storm/venv/bin/python")]
CLIENT_SRC = BENCH_DIR / "rooms_client.c"
CLIENT_BIN = BENCH_DIR / ".build" / "rooms_client"

# (row label, key in a run's result, format)
ROWS = [
    ("deliveries/s", "deliveries_per_s", "{:,.0f}"),
    ("server CPU per delivery (µs)", "server_us_per_delivery", "{:.2f}"),
    ("server CPU (cores)", "server_cores", "{:.2f}"),
    ("client CPU (cores)", "client_cores", "{:.2f}"),
    ("client CPU per delivery (µs)", "client_us_per_delivery", "{:.2f}"),
    ("bytes per delivery (wire)", "bytes_per_delivery", "{:.0f}"),
    ("messages/s (publishes)", "messages_per_s", "{:,.0f}"),
    ("joins: all members joined in (s)", "join_s", "{:.2f}"),
    ("other processes' CPU meanwhile (cores)", "others_cores", "{:.2f}"),
]
GOALS = {"python-socketio": 0.1, "socketio-node": 0.33}  # tether µs/delivery at most x theirs


def build_client(force: bool = False) -> Path:
    if (not force and CLIENT_BIN.exists()
            and CLIENT_BIN.stat().st_mtime >= CLIENT_SRC.stat().st_mtime):
        return CLIENT_BIN
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise SystemExit("rooms.py: no C compiler (gcc) for bench/rooms_client.c")
    CLIENT_BIN.parent.mkdir(exist_ok=True)
    tmp = CLIENT_BIN.with_suffix(".tmp")
    r = subprocess.run([cc, "-O2", "-o", str(tmp), str(CLIENT_SRC)], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"rooms.py: compiling {CLIENT_SRC.name} failed:\n{r.stderr}")
    os.replace(tmp, CLIENT_BIN)
    return CLIENT_BIN


class RoomsClient(Client):
    """The C load client; presence_storm.Client's line protocol (expect, go, result, kill)."""

    def __init__(self, cmd: list[str], cpu: int | None):  # noqa: D107 (no super().__init__)
        import queue
        import threading

        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=child_setup(cpu))
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.other: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()


def one_run(name: str, args: argparse.Namespace, cpus: tuple[Any, Any], log_dir: Path,
            client_bin: Path) -> dict[str, Any]:
    lg_cpu, srv_cpu = cpus
    port = free_port()
    cmd, env, cwd = server_spec(name, port, args)
    srv = Server(name, cmd, env, cwd, srv_cpu, log_dir)
    client: RoomsClient | None = None
    try:
        srv.wait_ready(port)
        time.sleep(0.3)
        pids = process_tree(srv.proc.pid)
        ccmd = [str(client_bin), "--kind", "tether" if name == "tether" else "socketio",
                "--host", HOST, "--port", str(port), "--rooms", str(args.rooms),
                "--members", str(args.members), "--size", str(args.size),
                "--window", str(args.window), "--concurrency", str(args.concurrency),
                "--warmup", str(args.warmup), "--duration", str(args.duration),
                "--join-timeout", str(args.join_timeout),
                "--server-pids", ",".join(map(str, pids))]
        client = RoomsClient(ccmd, lg_cpu)
        client.expect({"joined"}, timeout=args.join_timeout + 30)
        time.sleep(0.5)  # the last presence frames (tether) settle
        client.go()
        client.expect({"mark0"}, timeout=args.warmup + 60)
        c0 = srv.cpu()
        client.expect({"mark1"}, timeout=args.duration + 60)
        c1 = srv.cpu()
        res = client.result(timeout=30)
        client.kill()
        alive = srv.proc.poll() is None
        d = max(1, res["deliveries"])
        wall = res["wall_s"]
        res.update(
            server=name, outcome="ok", server_alive=alive, server_cpu_driver_s=c1 - c0,
            deliveries_per_s=res["deliveries"] / wall,
            messages_per_s=res["publishes"] / wall,
            server_us_per_delivery=res["server_cpu_s"] * 1e6 / d,
            server_cores=res["server_cpu_s"] / wall,
            client_cores=res["client_cpu_s"] / wall,
            client_us_per_delivery=res["client_cpu_s"] * 1e6 / d,
            bytes_per_delivery=res["delivery_bytes"] / d,
            server_peak_rss_kib=srv.peak_rss_kib())
        if res["machine_busy_s"] >= 0:
            others = res["machine_busy_s"] - res["server_cpu_s"] - res["client_cpu_s"]
            res["others_cores"] = max(0.0, others) / wall
        if not alive:
            res.update(outcome="failed", error=f"server exited: {srv.log_tail(4)}")
        elif res["deliveries"] == 0:
            res.update(outcome="failed", error="no delivery in the measured window")
        return res
    except RuntimeError as e:
        err = str(e)
        if srv.proc.poll() is not None:
            err += f" (server exited: {srv.log_tail(4)})"
        return {"server": name, "outcome": "failed", "error": err}
    finally:
        if client is not None:
            client.kill()
        srv.stop()


def cell(runs: list[dict[str, Any]], key: str, fmt: str) -> tuple[str, float | None]:
    vals = [r[key] for r in runs if r.get("outcome") == "ok" and r.get(key) is not None]
    failed = sum(1 for r in runs if r.get("outcome") != "ok")
    if not vals:
        return ("failed" if failed else "–"), None
    med = statistics.median(vals)
    text = fmt.format(med)
    if len(vals) > 1:
        text += f" ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
    if failed:
        text += f" [{failed} failed]"
    return text, med


def ratios(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """tether's server µs/delivery over each other server's: of the medians, and per round."""
    out: dict[str, dict[str, Any]] = {}
    t_runs = {r["round"]: r for r in results.get("tether", []) if r.get("outcome") == "ok"}
    for other, goal in GOALS.items():
        o_runs = {r["round"]: r for r in results.get(other, []) if r.get("outcome") == "ok"}
        if not t_runs or not o_runs:
            continue
        per_round = [t_runs[k]["server_us_per_delivery"] / o_runs[k]["server_us_per_delivery"]
                     for k in sorted(t_runs.keys() & o_runs.keys())]
        med_t = statistics.median(r["server_us_per_delivery"] for r in t_runs.values())
        med_o = statistics.median(r["server_us_per_delivery"] for r in o_runs.values())
        out[other] = {"ratio_of_medians": med_t / med_o, "per_round": per_round, "goal": goal,
                      "met": med_t / med_o <= goal}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds, servers interleaved (3)")
    p.add_argument("--servers", default=",".join(ALL_SERVERS),
                   help=f"comma-separated among {','.join(ALL_SERVERS)}")
    p.add_argument("--rooms", type=int, default=1, help="rooms, one publisher each (1)")
    p.add_argument("--members", type=int, default=1000, help="members per room (1000)")
    p.add_argument("--size", type=int, default=64, help="characters of text per message (64)")
    p.add_argument("--window", type=int, default=32,
                   help="messages per room the average member has not received yet, at most "
                        "(32)")
    p.add_argument("--duration", type=float, default=10, help="measured seconds per run (10)")
    p.add_argument("--warmup", type=float, default=2,
                   help="seconds of publishing before the measurement (2)")
    p.add_argument("--concurrency", type=int, default=100, help="joins in flight (100)")
    p.add_argument("--join-timeout", type=float, default=120,
                   help="seconds for every member to join (120)")
    add_server_args(p, str(next((py for py in SIO_PYTHONS if py.exists()), SIO_PYTHONS[0])),
                    "/tmp/s9sio/bin/python, else /tmp/s7storm/venv/bin/python")
    p.add_argument("--json", metavar="FILE", help="also write every run and the medians")
    p.add_argument("--no-pin", action="store_true", help="don't pin to CPUs")
    p.add_argument("--rebuild", action="store_true", help="recompile the load client")
    args = p.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in ALL_SERVERS:
            p.error(f"unknown server {s!r}")
    if args.rooms < 1 or args.members < 2 or args.window < 1 or args.duration <= 0:
        p.error("--rooms >= 1, --members >= 2, --window >= 1, --duration > 0")

    raise_nofile()
    client_bin = build_client(args.rebuild)
    tmp = Path(tempfile.mkdtemp(prefix="tether-rooms-"))
    set_tether_source(args, tmp)
    if any(s != "tether" for s in servers):
        reason = ensure_node_modules()
        if reason:
            print(f"error: {reason} (the Socket.IO server needs it)", file=sys.stderr)
            return 1
    runnable, skipped = runnable_servers(servers, args)
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in runnable}
    vers = versions(args)
    cpus = pick_cpus(args.no_pin)
    pin = (f"load client on CPU {cpus[0]}, servers on CPU {cpus[1]}"
           if cpus[0] is not None else "no CPU pinning")
    print(f"servers: {', '.join(runnable) or 'none'}; {args.rooms} room(s) x {args.members} "
          f"members; {args.rounds} rounds; {pin}; tether source: {args.tether_src_note}",
          file=sys.stderr)

    log_dir = tmp / "logs"
    log_dir.mkdir()
    started = time.monotonic()
    busy0 = machine_busy_s()
    interrupted = False
    failures = 0
    try:
        for rnd in range(args.rounds):
            order = rotation(runnable, rnd)
            print(f"round {rnd + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr)
            for name in order:
                try:
                    r = one_run(name, args, cpus, log_dir, client_bin)
                except (OSError, ValueError) as e:
                    r = {"server": name, "outcome": "failed", "error": str(e)}
                r["round"] = rnd
                results[name].append(r)
                if r["outcome"] != "ok":
                    failures += 1
                    print(f"  [{rnd + 1}] {name:<16} FAILED: {r.get('error')}", file=sys.stderr)
                    continue
                print(f"  [{rnd + 1}] {name:<16} {r['deliveries_per_s']:>11,.0f} deliveries/s, "
                      f"server {r['server_us_per_delivery']:.2f} µs/delivery "
                      f"({r['server_cores']:.2f} cores), client {r['client_cores']:.2f} cores, "
                      f"{r['bytes_per_delivery']:.0f} B/delivery, others "
                      f"{r.get('others_cores', float('nan')):.2f} cores", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; reporting what was measured", file=sys.stderr)
    total = time.monotonic() - started
    busy1 = machine_busy_s()

    medians: dict[str, dict[str, float]] = {s: {} for s in runnable}
    lines = [f"| {args.rooms} room(s) x {args.members:,} members | "
             + " | ".join(header(s, vers).replace(" chat", " hub (chat)") for s in servers)
             + " |", "|---|" + "---:|" * len(servers)]
    for label, key, fmt in ROWS:
        row = [label]
        for s in servers:
            if s not in results:
                row.append("skipped")
                continue
            text, med = cell(results[s], key, fmt)
            if med is not None:
                medians[s][key] = med
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    rat = ratios(results)
    cmd = "python bench/rooms.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print()
    print(f"## Rooms: {args.rooms} x {args.members:,} members, {args.size}-character messages, "
          f"window {args.window} ({args.rounds} rounds of {args.duration:g} s, medians "
          f"(min–max); {pin}; {total:.0f} s)")
    print()
    print("\n".join(lines))
    print()
    notes = [f"- command: `{cmd.strip()}`",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v)]
    if busy0 is not None and busy1 is not None and total > 0:
        notes.append(f"- machine busy during the whole run: {(busy1 - busy0) / total:.2f} cores "
                     f"of {os.cpu_count()} (this benchmark's server and client included)")
    for other, r in rat.items():
        pr = r["per_round"]
        notes.append(f"- tether server CPU per delivery / {other}'s: x{r['ratio_of_medians']:.3f} "
                     f"(per round {min(pr):.3f}–{max(pr):.3f}); goal at most x{r['goal']}: "
                     f"{'met' if r['met'] else 'NOT met'}")
    for s in runnable:
        for r in results[s]:
            if r.get("outcome") == "ok" and r["client_cores"] > 0.9 and r["server_cores"] < 0.9:
                notes.append(f"- {s}, round {r['round'] + 1}: the client used "
                             f"{r['client_cores']:.2f} cores and the server "
                             f"{r['server_cores']:.2f}: the client may be the bottleneck")
            if r.get("outcome") == "ok" and r.get("others_cores", 0) > 0.3:
                notes.append(f"- {s}, round {r['round'] + 1}: other processes used "
                             f"{r['others_cores']:.2f} cores meanwhile")
        fails = [r for r in results[s] if r.get("outcome") != "ok"]
        if fails:
            notes.append(f"- {s}: {len(fails)} failed: {str(fails[0].get('error'))[:300]}")
    for s, why in skipped.items():
        notes.append(f"- {s}: skipped ({why})")
    print("\n".join(notes))
    print(f"\n(server logs in {log_dir})", file=sys.stderr)
    if args.json:
        busy = ((busy1 - busy0) / total if busy0 is not None and busy1 is not None
                and total > 0 else None)
        doc = {"meta": json_meta(cmd, cpus, vers, args, total, interrupted,
                                 machine_busy_cores=busy),
               "skipped": skipped, "runs": results, "medians": medians, "ratios": rat}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    return 1 if failures or interrupted or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
