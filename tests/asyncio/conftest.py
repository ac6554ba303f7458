"""Helpers for the asyncio tests: real sockets on loopback, timeouts in units."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import tether

# Every timeout is a multiple of this, scaled for slow machines.
UNIT = 0.1 * float(os.environ.get("TETHER_TESTS_TIMEOUT_FACTOR", "1"))

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 100 * UNIT) -> T:
    """Run a test coroutine with a hard bound, so a hang fails instead of blocking CI."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(predicate: Callable[[], object], timeout: float = 50 * UNIT,
                what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(UNIT / 10)


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def echo(ws: tether.WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


@asynccontextmanager
async def serving(
    handler: Callable[[Any], Awaitable[None]] = echo, **options: Any
) -> AsyncIterator[tuple[tether.Server, str]]:
    """A server on a free loopback port; yields (server, ws://... URL)."""
    async with tether.serve(handler, "127.0.0.1", 0, **options) as server:
        yield server, f"ws://127.0.0.1:{server.port_number}"


async def silent_server() -> tuple[asyncio.Server, int]:
    """A TCP server on a free loopback port that reads whatever comes and never answers (a
    peer that accepted and went silent); returns it and its port. Close it when done."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
