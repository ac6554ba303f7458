"""Echo server built on the `websockets` library (asyncio API), for bench/echo.py.

Usage: python bench/servers/websockets_echo.py [HOST] [PORT]

Echoes every message back with the same type (text/binary).  Compression is
disabled and max_size allows messages of a few MiB, matching the tether echo
server's `--no-compression --max-size 2000000` configuration.
"""

import asyncio
import signal
import sys

from websockets.asyncio.server import serve

MAX_SIZE = 2_000_000


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(
        echo,
        host,
        port,
        compression=None,
        max_size=MAX_SIZE,
        ping_interval=None,
    ):
        print(f"websockets echo server listening on {host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    asyncio.run(main(host, port))
