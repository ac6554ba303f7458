"""tether's callback API (tether.Listener) for bench/peers.py: the "tether-cb" server.

Usage: python tether_callbacks.py MODE HOST PORT [--clients K --messages N --size S --burst B]
(see _peer_common.py). Echo: on_message sends the message back with send_nowait(), no
coroutine per connection or message. Broadcast: tether.broadcast() to the open connections,
as tether_broadcast.py does for the coroutine API.
"""

from __future__ import annotations

import asyncio
import signal

import tether
from _peer_common import HIGH_WATER, MAX_SIZE, parse_args, payload, raise_nofile


class Echo(tether.Listener):
    def on_message(self, ws: tether.WebSocket, message: str | bytes) -> None:
        ws.send_nowait(message)


class Keep(tether.Listener):
    """Broadcast mode: the clients only read; the server keeps its connections open."""


async def main() -> None:
    args = parse_args()
    loop = asyncio.get_running_loop()
    listener = Echo() if args.mode == "echo" else Keep()
    server = await tether.serve(listener, args.host, args.port, compression=None,
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
    print(f"tether ({args.mode}, callbacks) on {args.host}:{args.port}", flush=True)
    await stop
    await server.close(1001)


if __name__ == "__main__":
    raise_nofile()
    tether.run(main())
