#!/usr/bin/env python3
"""How long one /metrics scrape takes with N idle connections: an in-process tether server
(the "after" worktree; what `tether echo --metrics` sets up: Router(default=echo), a
CollectorRegistry(auto_describe=False) with TetherCollector(server, loop_lag=LoopLag())),
N connections held open by the C loadgen (`loadgen idle`, 100 handshakes at a time, as
peers.py's f), then prometheus_client.generate_latest(registry) called 20 times from the
event loop (as the /metrics handler does), 50 ms apart; wall (perf_counter) and CPU
(thread_time) per call, median and range; also TetherCollector.collect() alone.

Server on CPU 1, loadgen on CPU 0. Run with PYTHONPATH=<a worktree>/src (see drive.py).
Usage: python scrape_time.py [N ...]   (default: 0 1000 10000)
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import peers  # noqa: E402  (LiveLoadgen, build_loadgen, raise_nofile)

import prometheus_client  # noqa: E402
import tether  # noqa: E402
from tether.apps.echo import echo  # noqa: E402
from tether.asyncio.router import Router  # noqa: E402
from tether.metrics import LoopLag, TetherCollector, metrics_handler  # noqa: E402

CALLS = 20


def stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ms ({min(xs):.2f}–{max(xs):.2f})"


async def timed(fn, calls: int = CALLS) -> tuple[list[float], list[float], object]:
    wall, cpu = [], []
    out = fn()  # one untimed call
    for _ in range(calls):
        await asyncio.sleep(0.05)
        c0, t0 = time.thread_time(), time.perf_counter()
        out = fn()
        t1, c1 = time.perf_counter(), time.thread_time()
        wall.append((t1 - t0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
    return wall, cpu, out


async def main(counts: list[int]) -> None:
    loadgen = peers.build_loadgen()
    lg_cpu, srv_cpu = peers.pick_cpus(False)
    if srv_cpu is not None:
        os.sched_setaffinity(0, {srv_cpu})
    router = Router(default=echo)
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    router.add_http("/metrics", metrics_handler(registry))
    server = await tether.serve(router, "127.0.0.1", 0, compression=None, ping_interval=None,
                                ping_timeout=None, backlog=1024, max_size=2_000_000)
    port = server.port_number
    loop_lag = LoopLag()
    collector = TetherCollector(server, loop_lag=loop_lag)
    registry.register(collector)
    loop_lag.start()
    loop = asyncio.get_running_loop()
    print(f"loop {type(loop).__module__}; tether {tether.__file__}; accel "
          f"{__import__('tether.accel').accel.IMPLEMENTATION}; prometheus_client "
          f"{prometheus_client.__version__ if hasattr(prometheus_client, '__version__') else '?'}")
    for n in counts:
        lg = None
        if n:
            lg = peers.LiveLoadgen(loadgen, ["idle", "-c", str(n), "--concurrency", "100",
                                             "-d", "300", "--timeout", "30"], port, lg_cpu)
            await loop.run_in_executor(None, lg.expect, "open", 180)
            deadline = time.monotonic() + 30
            while len(server.connections) - len(server.handshakes) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(server.connections)} connections")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        try:
            open_now = len(server.connections) - len(server.handshakes)
            gw, gc, body = await timed(lambda: prometheus_client.generate_latest(registry))
            cw, cc, _ = await timed(lambda: list(collector.collect()))
            line = [ln for ln in body.decode().splitlines()
                    if ln.startswith("tether_connections{")]
            print(f"N={n} (open {open_now}): generate_latest: wall {stats(gw)}, CPU "
                  f"{stats(gc)}; collect() alone: wall {stats(cw)}, CPU {stats(cc)}; body "
                  f"{len(body)} B; {line}", flush=True)
        finally:
            if lg is not None:
                res = await loop.run_in_executor(None, lg.finish, 120)
                lg.kill()
                print(f"  loadgen: {res.get('conns')} conns, errors {lg.errors[:2]}")
                deadline = time.monotonic() + 30
                while server.connections and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
    loop_lag.stop()
    await server.close()


if __name__ == "__main__":
    peers.raise_nofile()
    counts = [int(x) for x in sys.argv[1:]] or [0, 1000, 10000]
    tether.run(main(counts))
