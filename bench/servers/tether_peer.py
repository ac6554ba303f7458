"""tether for bench/peers.py, with either API: "tether" (coroutines) and "tether-cb" (callbacks).

Usage: python tether_peer.py MODE HOST PORT [--clients K --messages N --size S --burst B]
(see _peer_common.py), with TETHER_PEER_API=coroutines (the default) or callbacks.

  echo       coroutines: ``async for message in ws: await ws.send(message)``, as in
             ``tether echo`` (peers.py runs that command for the "tether" echo scenarios);
             callbacks: a tether.Listener whose on_message calls ws.send_nowait(message).
  broadcast  tether.broadcast() to every open connection, the same with both APIs; the
             connections are kept open by a coroutine handler or by a Listener.
  relay      every message received goes to every open connection (sender included) with
             tether.broadcast(): coroutines: ``async for message in ws: broadcast(...)``, as
             ``tether broadcast`` does (peers.py runs that command for the "tether" column);
             callbacks: a tether.Listener whose on_message calls tether.broadcast(), over
             the set of open connections kept by on_open/on_close.
"""

from __future__ import annotations

import asyncio
import os
import signal

import tether
from _peer_common import HIGH_WATER, MAX_SIZE, parse_args, payload, raise_nofile


class Echo(tether.Listener):
    def on_message(self, ws: tether.WebSocket, message: str | bytes) -> None:
        ws.send_nowait(message)


async def echo(ws: tether.WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


async def keep(ws: tether.WebSocket) -> None:
    await ws.wait_closed()


clients: set[tether.WebSocket] = set()  # relay: the open connections


class Relay(tether.Listener):
    def on_open(self, ws: tether.WebSocket) -> None:
        clients.add(ws)

    def on_message(self, ws: tether.WebSocket, message: str | bytes) -> None:
        tether.broadcast(clients, message)

    def on_close(self, ws: tether.WebSocket) -> None:
        clients.discard(ws)


async def relay(ws: tether.WebSocket) -> None:
    clients.add(ws)
    try:
        async for message in ws:
            tether.broadcast(clients, message)
    finally:
        clients.discard(ws)


async def main() -> None:
    args = parse_args()
    callbacks = os.environ.get("TETHER_PEER_API", "coroutines") == "callbacks"
    if args.mode == "echo":
        handler: object = Echo() if callbacks else echo
    elif args.mode == "relay":
        handler = Relay() if callbacks else relay
    else:
        handler = tether.Listener() if callbacks else keep
    loop = asyncio.get_running_loop()
    server = await tether.serve(handler, args.host, args.port, compression=None,  # type: ignore[arg-type]
                                ping_interval=None, ping_timeout=None, backlog=1024,
                                max_size=MAX_SIZE)
    conns = server.connections
    message = payload(args.size)

    async def run() -> None:
        while sum(1 for c in conns if c.ready_state == tether.OPEN) < args.clients:
            await asyncio.sleep(0.01)
        for i in range(1, args.messages + 1):
            tether.broadcast(conns, message)
            if i % args.burst == 0:
                await asyncio.sleep(0)
                while max((c.buffered_amount for c in list(conns)), default=0) > HIGH_WATER:
                    await asyncio.sleep(0.001)
        print(f"sent {args.messages} to {len(conns)}", flush=True)

    stop = loop.create_future()
    if args.mode == "broadcast":
        loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(run()))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    api = "callbacks" if callbacks else "coroutines"
    print(f"tether ({args.mode}, {api}) on {args.host}:{args.port}", flush=True)
    await stop
    await server.close(1001)


if __name__ == "__main__":
    raise_nofile()
    tether.run(main())  # uvloop when installed, as the CLI
