#!/usr/bin/env python3
"""Instructions per handshake (g) and per round trip (b), counted by callgrind: a steady
measure of a server's user-space work on a machine whose timings drift (issue 16).

Each server of bench/peers.py (as peers.py starts it: `tether echo` for "tether", the
Listener echo for "tether-cb", picows' echo, ...) and any `tether` command line given with
--cli runs under `valgrind --tool=callgrind`. After a warm-up the counters are zeroed
(`callgrind_control -z`), this script drives N handshakes (g: 10 at a time: upgrade, 101,
masked close, close frame and end of stream) or N round trips of a 32-byte masked text
frame on one connection (b), and the counters are dumped (`callgrind_control -d`). The
figure is the server's instructions over N: its own code, the interpreter, the event loop
and libc, not the kernel (whose share is about the same for every server: the same system
calls, see docs/performance.md). It is repeatable to about 0.3% from run to run, where the
CPU time of g moves by 10-20% here; a server runs 50-100 times slower under callgrind, so
N is small.

It says nothing about time by itself: an instruction of the interpreter's loop and one of
the kernel's copy do not cost the same. Use it to compare versions of tether, or one option
against another, and peers.py for the CPU time.

Usage (valgrind and callgrind_control from Debian's valgrind package):
  python bench/instructions.py --python /tmp/s8venv/bin/python
  python bench/instructions.py --servers tether,picows --cli "echo --quiet" --scenarios g
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from echo import free_port  # noqa: E402
from peers import HOST, REPO_DIR, server_command, server_env  # noqa: E402

CLOSE = bytes([0x88, 0x82]) + b"\x01\x02\x03\x04" + bytes([0x03 ^ 0x01, 0xE8 ^ 0x02])
MASK = b"\x11\x22\x33\x44"
PAYLOAD = b"x" * 32
FRAME = bytes([0x81, 0x80 | 32]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(PAYLOAD))
ECHO = bytes([0x81, 32]) + PAYLOAD


def upgrade(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


async def open_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(upgrade(port))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:80]!r}")
    return reader, writer


async def handshakes(port: int, n: int) -> None:
    """g: n handshakes, 10 at a time, each closed by the client's close frame."""
    slots = asyncio.Semaphore(10)

    async def one() -> None:
        async with slots:
            reader, writer = await open_ws(port)
            writer.write(CLOSE)
            await reader.read()  # the close frame, then the end of the stream
            writer.close()

    await asyncio.gather(*[one() for _ in range(n)])


async def round_trips(port: int, n: int) -> None:
    """b: n round trips of one 32-byte text message on one connection."""
    reader, writer = await open_ws(port)
    for _ in range(n):
        writer.write(FRAME)
        echoed = await reader.readexactly(len(ECHO))
        if echoed != ECHO:
            raise RuntimeError(f"unexpected echo {echoed!r}")
    writer.write(CLOSE)
    await reader.read()
    writer.close()


DRIVERS = {"g": (handshakes, "handshake", 300), "b": (round_trips, "round trip", 2000)}


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not listen on {port} within {timeout:.0f} s")


def totals(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if match:
            return int(match.group(1))
    raise RuntimeError(f"no totals in {path}")


def measure(command: list[str], env: dict[str, str], port: int, scenario: str, n: int,
            workdir: Path, label: str) -> float:
    """The server's instructions per unit of ``scenario``, over ``n`` units."""
    drive, _, warm_up = DRIVERS[scenario]
    out = workdir / f"{re.sub(r'[^A-Za-z0-9]+', '-', label)}-{scenario}.cg"
    log = open(workdir / f"{out.stem}.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, process, 120)
        asyncio.run(drive(port, warm_up))
        subprocess.run(["callgrind_control", "-z", str(process.pid)], check=True,
                       capture_output=True)
        asyncio.run(drive(port, n))
        subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True,
                       capture_output=True)
        dump = Path(f"{out}.1")
        deadline = time.monotonic() + 60
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return totals(dump) / n
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="tether,tether-cb,picows",
                        help="peers.py's servers (tether,tether-cb,picows)")
    parser.add_argument("--cli", action="append", default=[], metavar="ARGS",
                        help='a `tether` command line to measure too, e.g. "echo --quiet"')
    parser.add_argument("--scenarios", default="g,b", help="g, b or both (g,b)")
    parser.add_argument("-n", type=int, default=0,
                        help="handshakes (g, 1000) or round trips (b, 20000)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install valgrind")
    peer_args = argparse.Namespace(bcast_clients=1000, bcast_messages=300, bcast_size=32,
                                   bcast_burst=10)
    runs: list[tuple[str, list[str], dict[str, str], int]] = []
    for name in [s for s in args.servers.split(",") if s]:
        port = free_port()
        runs.append((name, server_command(name, "echo", args.python, port, peer_args),
                     server_env(name), port))
    for line in args.cli:
        port = free_port()
        command = [args.python, "-m", "tether", *line.split(), "--host", HOST,
                   "--port", str(port)]
        runs.append((f"tether {line}", command, server_env("tether"), port))
    workdir = Path(tempfile.mkdtemp(prefix="tether-instructions-"))
    print(f"tree: {REPO_DIR}; callgrind files in {workdir}")
    for scenario in [s for s in args.scenarios.split(",") if s]:
        _, unit, _ = DRIVERS[scenario]
        n = args.n or (1000 if scenario == "g" else 20000)
        figures: dict[str, float] = {}
        for label, command, env, port in runs:
            figures[label] = measure(command, env, port, scenario, n, workdir, label)
            print(f"  {scenario} {label}: {figures[label]:,.0f} instructions per {unit}",
                  flush=True)
        reference = figures.get("picows")
        print(f"\n{scenario}: server instructions per {unit} (callgrind, N = {n})")
        for label, figure in figures.items():
            ratio = f"  {figure / reference:.2f}x picows" if reference else ""
            print(f"  {label:40} {figure:12,.0f}{ratio}")
        print()


if __name__ == "__main__":
    main()
