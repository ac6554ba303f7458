#!/usr/bin/env python3
"""What the `tether` command's options cost: one of bench/peers.py's echo scenarios (g, the
handshake, by default) against several command lines of the same server, measured as peers.py
measures (its load generator on CPU 0, the server on CPU 1, the server's CPU from /proc),
rounds interleaved with the order rotating, medians and ranges. picows can run alongside as
the reference.

Each variant is the arguments after `python -m tether` (host, port and --no-compression are
added). Session 10 used it to split the coroutine CLI's g (docs/performance.md):

  python bench/cli_options.py --python /tmp/s8venv/bin/python --rounds 7 --picows \\
      "echo" "echo --ping-interval 0" "echo --quiet" "echo --quiet --ping-interval 0"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from echo import HOST, build_loadgen, free_port, rotation
from peers import ECHO_ARGS, SERVERS_DIR, Server, scenario_echo, server_env, warm_up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help='command lines, e.g. "echo --quiet"')
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter that runs the servers (tether from this tree)")
    parser.add_argument("--scenario", default="g", choices=sorted(ECHO_ARGS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (3)")
    parser.add_argument("--picows", action="store_true", help="measure picows alongside")
    args = parser.parse_args()
    args.duration_g = args.duration
    loadgen = build_loadgen()
    names = list(args.variants) + (["picows"] if args.picows else [])
    figures: dict[str, list[float]] = {name: [] for name in names}
    field = "server_cpu_us_per_handshake" if args.scenario == "g" else "server_cpu_us_per_msg"
    logs = Path(tempfile.mkdtemp(prefix="tether-cli-options-"))
    for rnd in range(args.rounds):
        for name in rotation(names, rnd):
            port = free_port()
            if name == "picows":
                cmd = [args.python, str(SERVERS_DIR / "picows_peer.py"), "echo", HOST,
                       str(port)]
            else:
                cmd = [args.python, "-m", "tether", *name.split(), "--host", HOST, "--port",
                       str(port), "--no-compression", "--max-size", "2000000"]
            server = Server(name.replace(" ", "_"), "echo", cmd, server_env("tether"), 1, logs)
            try:
                server.wait_ready(port)
                warm_up(port, loadgen, 0, 0.5)
                result = scenario_echo(args.scenario, server, port, loadgen, 0, args)
            finally:
                server.stop()
            figures[name].append(result[field])
            print(f"  [{rnd + 1}] {name}: {result[field]:.2f}", file=sys.stderr, flush=True)
    unit = "µs per handshake" if args.scenario == "g" else "µs per message"
    print(f"\n{args.scenario}: server CPU {unit}, medians of {args.rounds} (range); "
          f"logs in {logs}")
    for name, values in figures.items():
        print(f"  {name:40} {statistics.median(values):8.2f}  "
              f"({min(values):.2f}–{max(values):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
