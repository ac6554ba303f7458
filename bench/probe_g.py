#!/usr/bin/env python3
"""Scenario g in one process: CPU per connect + handshake + close, steadier than
bench/peers.py's g for comparing two versions of tether, or one server with and without a
piece of what `tether echo` does per connection (issue 16).

One uvloop loop runs the server and 10 raw client chains (as peers.py's g: 10 handshakes at
a time). Each chain connects, sends an upgrade request, reads the 101, sends a masked close
frame, reads the server's close frame and its end of the stream, closes, and starts again.
The figure is `time.process_time()` per handshake: client, server and kernel together, so
only the difference between two runs means anything. Interleave and repeat.

  --api cli          `tether echo` as shipped, in-process: the CLI's serve() options, its
                     Router, its logging (to /dev/null through the CLI's LineBuffer)
  --api coroutines   tether.serve(echo) with no heartbeat and no logging
  --api callbacks    a tether.Listener echo, no heartbeat, no logging
  --api picows       picows' WSListener echo (pip install picows), for reference
  --quiet / --no-ping / --no-router   take one piece out of --api cli

Usage:
  PYTHONPATH=src taskset -c 1 .venv/bin/python bench/probe_g.py --api cli
  for i in 1 2 3; do for q in "" --quiet; do
      PYTHONPATH=src taskset -c 1 python bench/probe_g.py --api cli $q; done; done
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

import tether

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_b  # noqa: E402  (its servers: tether's two APIs as peers.py runs them, picows)

CLOSE = bytes([0x88, 0x82]) + b"\x01\x02\x03\x04" + bytes([0x03 ^ 0x01, 0xE8 ^ 0x02])


def request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


async def start_server(args: argparse.Namespace) -> Any:
    if args.api == "cli":
        from tether import cli
        from tether.apps.echo import echo as cli_echo
        from tether.asyncio.router import Router
        from tether.logformat import configure

        if not args.quiet:
            configure(20, open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the probe)
        argv = ["echo", "--port", "0"] + (["--ping-interval", "0"] if args.no_ping else [])
        options = cli._server_options(cli._parser().parse_args(argv))
        handler: Any = cli_echo if args.no_router else Router(default=cli_echo)
        return await tether.serve(handler, "127.0.0.1", 0, **options)
    return await probe_b.start_server(args.api)  # the same servers as scenario b's probe


async def main(args: argparse.Namespace) -> float:
    loop = asyncio.get_running_loop()
    server = await start_server(args)
    port = server.sockets[0].getsockname()[1]
    upgrade = request(port)
    state = {"done": 0}
    finished: asyncio.Future[None] = loop.create_future()

    def chain() -> None:
        sock = socket.socket()
        sock.connect(("127.0.0.1", port))  # loopback: the kernel's backlog answers at once
        sock.setblocking(False)
        sock.send(upgrade)
        got = bytearray()
        stage = [0]

        def readable() -> None:
            try:
                data = sock.recv(65536)
            except OSError:  # reset: the server closed at the end of the probe
                data = b""
            if stage[0] == 0:
                got.extend(data)
                if b"\r\n\r\n" in got:
                    assert got.startswith(b"HTTP/1.1 101"), bytes(got[:80])
                    stage[0] = 1
                    sock.send(CLOSE)
                return
            if data:
                return  # the server's close frame; its end of the stream follows
            loop.remove_reader(sock.fileno())
            sock.close()
            state["done"] += 1
            if state["done"] < args.n:
                chain()
            elif not finished.done():
                finished.set_result(None)

        loop.add_reader(sock.fileno(), readable)

    for _ in range(10):
        chain()
    while state["done"] < args.n // 10:  # the first tenth warms up
        await asyncio.sleep(0.005)
    cpu0, done0 = time.process_time(), state["done"]
    await finished
    per = (time.process_time() - cpu0) * 1e6 / (state["done"] - done0)
    await probe_b.stop_server(server)
    return per


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", choices=["cli", "coroutines", "callbacks", "picows"],
                        default="cli")
    parser.add_argument("--quiet", action="store_true", help="cli: no per-connection lines")
    parser.add_argument("--no-ping", action="store_true", help="cli: no heartbeat")
    parser.add_argument("--no-router", action="store_true", help="cli: echo without Router")
    parser.add_argument("-n", type=int, default=20000, help="handshakes (20000)")
    args = parser.parse_args()
    figure = uvloop.run(main(args))
    label = args.api + "".join(f" --{k.replace('_', '-')}" for k in ("quiet", "no_ping",
                                                                    "no_router")
                               if getattr(args, k))
    print(f"{label}: {figure:.1f} µs of CPU per handshake (client, server and kernel)")
