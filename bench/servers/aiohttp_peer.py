"""aiohttp (web.WebSocketResponse) echo / broadcast / relay server for bench/peers.py.

relay: each message received is sent to every open connection (the sender included) by
awaiting send_str / send_bytes on each in turn, as aiohttp's chat examples do (aiohttp has
no broadcast helper; the await only waits when a connection's buffer is past its limit).

Usage: python aiohttp_peer.py {echo|broadcast|relay} HOST PORT [options of _peer_common.py]
Compression off, no heartbeat, no access log.
"""

from __future__ import annotations

import asyncio
import signal

from _peer_common import HIGH_WATER, MAX_SIZE, parse_args, payload, raise_nofile
from aiohttp import WSMsgType, web


async def main() -> None:
    args = parse_args()
    loop = asyncio.get_running_loop()
    clients: set = set()

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def hold(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE)
        await ws.prepare(request)
        clients.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            clients.discard(ws)
        return ws

    async def relay(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE)
        await ws.prepare(request)
        clients.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    for other in list(clients):
                        await other.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    for other in list(clients):
                        await other.send_bytes(msg.data)
        finally:
            clients.discard(ws)
        return ws

    message = payload(args.size)

    def buffered(ws: web.WebSocketResponse) -> int:
        transport = ws._req.transport if ws._req is not None else None  # noqa: SLF001
        return transport.get_write_buffer_size() if transport is not None else 0

    async def run() -> None:
        while len(clients) < args.clients:
            await asyncio.sleep(0.01)
        for i in range(1, args.messages + 1):
            for ws in list(clients):
                await ws.send_str(message)
            if i % args.burst == 0:
                await asyncio.sleep(0)
                while max((buffered(ws) for ws in list(clients)), default=0) > HIGH_WATER:
                    await asyncio.sleep(0.001)
        print(f"sent {args.messages} to {len(clients)}", flush=True)

    app = web.Application()
    app.router.add_get("/", {"echo": echo, "relay": relay}.get(args.mode, hold))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(run()))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"aiohttp {args.mode} server on {args.host}:{args.port}", flush=True)
    try:
        await stop
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    raise_nofile()
    asyncio.run(main())
