"""bench/servers/tether_peer.py's broadcast server (coroutine API) with what
`tether broadcast --metrics` adds (cli._Metrics, --metrics without --metrics-port):
the handler wrapped in Router(default=...) with /metrics routed on the same port
(tether.metrics.metrics_handler), a TetherCollector(server, loop_lag=LoopLag()) in a
CollectorRegistry(auto_describe=False), and the LoopLag timer (0.5 s) started.

Usage: python tether_peer_metrics.py broadcast HOST PORT [--clients K ...]
(run with PYTHONPATH=<worktree>/src:<worktree>/bench/servers)
"""

from __future__ import annotations

import asyncio
import signal

import tether
from tether.asyncio.router import Router
from tether.metrics import LoopLag, TetherCollector, metrics_handler, require_prometheus
from _peer_common import HIGH_WATER, MAX_SIZE, parse_args, payload, raise_nofile


async def keep(ws: tether.WebSocket) -> None:
    await ws.wait_closed()


async def main() -> None:
    args = parse_args()
    assert args.mode == "broadcast"
    prom = require_prometheus()
    registry = prom.CollectorRegistry(auto_describe=False)
    loop_lag = LoopLag()
    router = Router(default=keep)
    router.add_http("/metrics", metrics_handler(registry))
    loop = asyncio.get_running_loop()
    server = await tether.serve(router, args.host, args.port, compression=None,
                                ping_interval=None, ping_timeout=None, backlog=1024,
                                max_size=MAX_SIZE)
    registry.register(TetherCollector(server, loop_lag=loop_lag))
    loop_lag.start()
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
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(run()))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"tether (broadcast, coroutines, metrics) on {args.host}:{args.port}", flush=True)
    await stop
    loop_lag.stop()
    await server.close(1001)


if __name__ == "__main__":
    raise_nofile()
    tether.run(main())
