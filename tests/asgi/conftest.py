"""Helpers for tether under uvicorn: a real ``uvicorn.Server`` in this process, on a free
loopback port, with ``ws=UvicornProtocol``.

``uvicorn.Server.serve()`` runs on the loop that awaits it (its ``loop`` setting only matters
to ``Server.run()``, which makes a loop of its own): the loop of ``run()`` here, which
tests/conftest.py makes uvloop or the standard asyncio loop from ``TETHER_LOOP``. So the server,
the engine and the test's clients share one loop, of the kind the pass is testing.

Timeouts are multiples of ``UNIT`` (tests/asyncio/conftest.py), as in the rest of the suite.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from tether.asgi import UvicornProtocol

from ..asyncio.conftest import UNIT, run
from ..asyncio.test_server import upgrade

__all__ = ["UNIT", "run", "serving", "serving_server", "asgi_echo", "raw_websocket",
           "client_frame", "read_frames", "rss"]

HOST = "127.0.0.1"


class _Tasks(set):  # type: ignore[type-arg]
    """uvicorn's ``server_state.tasks`` (the running ASGI tasks), remembering every task it
    was given so that the helper can see how each one ended."""

    def __init__(self) -> None:
        super().__init__()
        self.every: list[asyncio.Task[Any]] = []

    def add(self, task: asyncio.Task[Any]) -> None:
        self.every.append(task)
        super().add(task)


@asynccontextmanager
async def serving_server(app: Any, **options: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """Serve ``app`` with uvicorn and tether as its WebSocket engine; yield (server, port).

    ``options`` go to ``uvicorn.Config`` and override the defaults below (``ws`` included,
    e.g. the string form ``"tether.asgi:UvicornProtocol"``). On the way out the server shuts
    down as on SIGTERM (``should_exit``), and the serve task must end within its bound: a
    connection that never closes fails the test rather than hanging it.

    The engine's ``run_asgi`` task handles whatever the app raises (it logs it, as uvicorn's
    own engines do): a task that ends with an exception anyway is an engine bug, and fails
    the test. (Every task's outcome is retrieved here, so none is logged later by the garbage
    collector as "never retrieved", in the middle of another test.)
    """
    settings: dict[str, Any] = dict(
        host=HOST,
        port=0,
        ws=UvicornProtocol,
        lifespan="off",
        log_level="warning",
        # No dictConfig of uvicorn's: its records propagate to the root logger (caplog).
        log_config=None,
        loop="none",  # serve() runs on the caller's loop whatever this says
        timeout_graceful_shutdown=30 * UNIT,
    )
    settings.update(options)
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    server.server_state.tasks = tasks = _Tasks()
    task = asyncio.ensure_future(server.serve())
    try:
        await asyncio.wait_for(_started(server, task), 50 * UNIT)
        port = int(server.servers[0].sockets[0].getsockname()[1])
        yield server, port
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 60 * UNIT)
        except asyncio.TimeoutError:
            server.force_exit = True
            await asyncio.wait_for(task, 20 * UNIT)
            raise AssertionError("uvicorn did not shut down within 60 units") from None
        finally:
            escaped = [t.exception() for t in tasks.every if t.done() and not t.cancelled()]
    escaped = [exc for exc in escaped if exc is not None]
    if escaped:
        raise AssertionError(f"{len(escaped)} ASGI task(s) of the engine ended with an "
                             f"exception: {escaped!r}") from escaped[0]


async def _started(server: uvicorn.Server, task: asyncio.Future[None]) -> None:
    while not server.started:
        if task.done():  # failed to start: raise what it raised (SystemExit included)
            task.result()
            raise RuntimeError("uvicorn's serve() returned before it started")
        await asyncio.sleep(UNIT / 10)


@asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[int]:
    """:func:`serving_server`, yielding the port alone."""
    async with serving_server(app, **options) as (_, port):
        yield port


async def asgi_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: accepts, echoes text as text and bytes as bytes until disconnect."""
    if scope["type"] != "websocket":
        return
    message = await receive()
    assert message["type"] == "websocket.connect", message
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


# -- raw bytes on the wire -------------------------------------------------------------------


async def raw_websocket(port: int, path: str = "/") -> tuple[asyncio.StreamReader,
                                                              asyncio.StreamWriter]:
    """A client of raw bytes: completes the opening handshake (asserting 101), then does
    nothing the test does not do."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(upgrade(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 50 * UNIT)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """One frame as a client writes it (RFC 6455 §5.2), masked unless told otherwise."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole frame a server sent (unmasked; RFC 6455 §5.1)."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            length, offset = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, offset = int.from_bytes(data[2:10], "big"), 10
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset:offset + length]))
        data = data[offset + length:]
    return frames


def rss() -> int:
    """This process's resident set size, in bytes (Linux: VmRSS in /proc/self/status)."""
    with open("/proc/self/status") as status:
        match = re.search(r"^VmRSS:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024
