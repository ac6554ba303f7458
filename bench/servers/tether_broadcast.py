"""tether broadcast server for bench/peers.py (scenario e): tether.serve + tether.broadcast.

Usage: python tether_broadcast.py broadcast HOST PORT --clients K --messages N --size S --burst B
(see _peer_common.py). The echo scenarios use `python -m tether echo` instead.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import tether
from _peer_common import HIGH_WATER, parse_args, payload, raise_nofile


async def main() -> None:
    args = parse_args()
    if args.mode != "broadcast":
        sys.exit("tether_broadcast.py only does 'broadcast' (echo: python -m tether echo)")
    loop = asyncio.get_running_loop()

    async def handler(ws):  # type: ignore[no-untyped-def]
        await ws.wait_closed()

    server = await tether.serve(handler, args.host, args.port, compression=None,
                                ping_interval=None, ping_timeout=None, backlog=1024,
                                max_size=1_000_000)
    conns = server.connections
    message = payload(args.size)

    async def run() -> None:
        while sum(1 for c in conns if c.handler_task) < args.clients:
            await asyncio.sleep(0.01)
        for i in range(1, args.messages + 1):
            tether.broadcast(conns, message)
            if i % args.burst == 0:
                await asyncio.sleep(0)
                while max((c.buffered_amount for c in list(conns)), default=0) > HIGH_WATER:
                    await asyncio.sleep(0.001)
        print(f"sent {args.messages} to {len(conns)}", flush=True)

    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(run()))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"tether broadcast server on {args.host}:{args.port}", flush=True)
    await stop


if __name__ == "__main__":
    raise_nofile()
    tether.run(main())  # uvloop when installed, as the CLI
