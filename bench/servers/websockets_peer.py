"""websockets (asyncio API) echo / broadcast / relay server for bench/peers.py.

relay: ``async for message in ws: broadcast(clients, message)`` with websockets.broadcast(),
as in websockets's broadcast guide (the sender included).

Usage: python websockets_peer.py {echo|broadcast|relay} HOST PORT [options of _peer_common.py]
"""

from __future__ import annotations

import asyncio
import signal

from _peer_common import HIGH_WATER, MAX_SIZE, parse_args, payload, raise_nofile
from websockets.asyncio.server import broadcast, serve


async def main() -> None:
    args = parse_args()
    loop = asyncio.get_running_loop()
    clients: set = set()

    async def echo(ws) -> None:  # type: ignore[no-untyped-def]
        async for message in ws:
            await ws.send(message)

    async def hold(ws) -> None:  # type: ignore[no-untyped-def]
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async def relay(ws) -> None:  # type: ignore[no-untyped-def]
        clients.add(ws)
        try:
            async for message in ws:
                broadcast(clients, message)
        finally:
            clients.discard(ws)

    message = payload(args.size)

    async def run() -> None:
        while len(clients) < args.clients:
            await asyncio.sleep(0.01)
        for i in range(1, args.messages + 1):
            broadcast(clients, message)
            if i % args.burst == 0:
                await asyncio.sleep(0)
                while max((ws.transport.get_write_buffer_size() for ws in list(clients)),
                          default=0) > HIGH_WATER:
                    await asyncio.sleep(0.001)
        print(f"sent {args.messages} to {len(clients)}", flush=True)

    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(run()))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    handler = {"echo": echo, "relay": relay}.get(args.mode, hold)
    async with serve(handler, args.host, args.port, compression=None, max_size=MAX_SIZE,
                     ping_interval=None, backlog=1024):
        print(f"websockets {args.mode} server on {args.host}:{args.port}", flush=True)
        await stop


if __name__ == "__main__":
    raise_nofile()
    asyncio.run(main())
