#!/usr/bin/env python3
"""Scenario b in one process: CPU per round trip of a lone 32-byte message, steadier than
bench/peers.py's b for comparing two versions of tether (issue 16).

peers.py's b runs the load generator and the server on two cores and reads the server's CPU
from /proc: on a shared VM its medians move by ±4 µs between runs, more than most changes to
the hot path. Here one uvloop loop runs the server and a raw client socket (an `add_reader`
callback that sends the next masked frame when the echo has arrived), and the figure is
`time.process_time()` over N round trips: client, server and kernel together, so only the
difference between two runs means anything. Three runs of each, interleaved, varied by about
±0.3 µs on a quiet host (session 9), by ±3 µs when the VM's host was busy: interleave and
repeat.

  --api coroutines   async for message in ws: await ws.send(message)  (as `tether echo`)
  --api callbacks    a tether.Listener whose on_message calls ws.send_nowait(message)
  --api picows       picows' WSListener echo (pip install picows), for reference

Usage (compare two trees: PYTHONPATH picks the tether to measure):
  PYTHONPATH=src taskset -c 1 .venv/bin/python bench/probe_b.py --api coroutines
  for i in 1 2 3; do for t in /tmp/old/src src; do
      PYTHONPATH=$t taskset -c 1 python bench/probe_b.py --api callbacks; done; done
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

sys.path.insert(0, str(Path(__file__).resolve().parent / "servers"))
from tether_peer import Echo, echo  # noqa: E402  (the echo handlers peers.py's servers run)

MASK = b"\x01\x02\x03\x04"
PAYLOAD = b"x" * 32
FRAME = bytes([0x81, 0x80 | len(PAYLOAD)]) + MASK + bytes(
    b ^ MASK[i % 4] for i, b in enumerate(PAYLOAD))
REPLY = 2 + len(PAYLOAD)  # the server's unmasked frame


async def start_server(api: str) -> Any:
    if api == "picows":
        from picows import WSListener, WSMsgType, ws_create_server

        class PicowsEcho(WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)
                elif frame.msg_type == WSMsgType.CLOSE:  # (probe_g.py's clients close)
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()

        return await ws_create_server(lambda request: PicowsEcho(), "127.0.0.1", 0)
    handler: Any = Echo() if api == "callbacks" else echo
    return await tether.serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                              ping_timeout=None)


async def stop_server(server: Any) -> None:
    closing = server.close()
    if closing is not None:  # tether's close() is a coroutine, picows' a plain call
        await closing


async def main(api: str, n: int) -> float:
    loop = asyncio.get_running_loop()
    server = await start_server(api)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 4096)
    done: asyncio.Future[None] = loop.create_future()
    state = {"trips": 0, "bytes": 0}

    def readable() -> None:
        state["bytes"] += len(sock.recv(65536))
        if state["bytes"] >= REPLY:
            state["bytes"] -= REPLY
            state["trips"] += 1
            if state["trips"] == n:
                done.set_result(None)
                return
            sock.send(FRAME)

    loop.add_reader(sock.fileno(), readable)
    sock.send(FRAME)
    while state["trips"] < n // 10:  # the first tenth warms up
        await asyncio.sleep(0.01)
    cpu0, trips0 = time.process_time(), state["trips"]
    await done
    per_trip = (time.process_time() - cpu0) * 1e6 / (n - trips0)
    loop.remove_reader(sock.fileno())
    sock.close()
    await stop_server(server)
    return per_trip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", choices=["coroutines", "callbacks", "picows"],
                        default="coroutines")
    parser.add_argument("-n", type=int, default=30000, help="round trips (30000)")
    args = parser.parse_args()
    figure = uvloop.run(main(args.api, args.n))
    print(f"{args.api}: {figure:.2f} µs of CPU per round trip (client, server and kernel)")
