"""Feeds random reads to WebSockets and prints what came of them, as JSON: run once with the C
accelerator and once without (TETHER_NO_EXTENSIONS=1) by test_fused.py, which compares the two.

Usage: python -m tests.asyncio.fused_driver SEEDS
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
from typing import Any

from tether import accel
from tether.asyncio.connection import Listener, WebSocket
from tether.protocol.connection import Connection, Side

from ..protocol.conftest import frame as build_frame


class Transport:
    """What a WebSocket needs of a transport, writing into a list."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.chunks: list[str] = []
        self.closed = False
        self.eof = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data).hex())

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def frame(rng: random.Random, opcode: int, payload: bytes, fin: bool = True,
          rsv1: bool = False, masked: bool = True) -> bytes:
    """A client's frame (tests/protocol's builder), masked with a key from ``rng``."""
    return build_frame(opcode, payload, fin=fin, rsv1=rsv1,
                       mask=rng.randbytes(4) if masked else None)


SIMPLE = ["hello", "héllo wörld", "x" * 300, "日本語"]
ALL = [*SIMPLE, "raise", "close", "big", "bytes-like", "hand over", "", "y" * 5000]


def text(rng: random.Random, words: list[str]) -> bytes:
    return (rng.choice(words) + str(rng.randrange(1000))).encode()


def stream(rng: random.Random, mode: str) -> list[bytes]:
    """Frames a client might send: "mixed" (every kind), "plain" (whole messages in plain
    frames), "simple" (plain frames of small messages an echo answers in one frame) or "many"
    (a hundred or so simple ones)."""
    frames = []
    for _ in range(rng.randrange(70, 150) if mode == "many" else rng.randrange(1, 12)):
        kind = rng.randrange(12) if mode == "mixed" else 0
        if mode in ("simple", "many"):
            frames.append(frame(rng, rng.choice([1, 2]), text(rng, SIMPLE)))
        elif kind <= 4:
            frames.append(frame(rng, 1, text(rng, ALL)))
        elif kind == 5:
            frames.append(frame(rng, 2, rng.randbytes(rng.choice([0, 3, 125, 126, 4097]))))
        elif kind == 6:  # a fragmented text message, maybe with a ping amid it
            frames.append(frame(rng, 1, b"frag", fin=False))
            if rng.random() < 0.5:
                frames.append(frame(rng, 9, b"p"))
            frames.append(frame(rng, 0, b"ment"))
        elif kind == 7:
            frames.append(frame(rng, rng.choice([9, 10]), rng.randbytes(rng.randrange(5))))
        elif kind == 8:  # not UTF-8
            frames.append(frame(rng, 1, b"\xff\xfe" + rng.randbytes(3)))
        elif kind == 9:  # unmasked, or with a reserved bit: a protocol error
            frames.append(frame(rng, 1, b"bad", masked=rng.random() < 0.5, rsv1=True))
        elif kind == 10:
            frames.append(frame(rng, 8, (1000).to_bytes(2, "big") + b"bye"))
        else:  # over max_message_size
            frames.append(frame(rng, 2, bytes(70000)))
    return frames


def reads(rng: random.Random, mode: str) -> list[bytes]:
    """A stream of frames cut at random points; in "simple" mode, a read per frame; in
    "many", one read."""
    frames = stream(rng, mode)
    if mode == "simple":
        return frames
    data = b"".join(frames)
    if mode == "many":
        return [data]
    points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(4))))
    points = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


class Echo(Listener):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def on_message(self, ws: WebSocket, message: str | bytes) -> None:
        self.log.append(message if isinstance(message, str) else message.hex())
        if isinstance(message, str):
            if message.startswith("raise"):
                raise ValueError("on purpose")
            if message.startswith("close"):
                ws.close_nowait(1000, "asked")
                return
            if message.startswith("big"):
                ws.send_nowait(b"z" * 5000)
            if message.startswith("bytes-like"):  # large payloads are queued as they are
                ws.send_nowait(bytearray(5000))
                ws.send_nowait(memoryview(bytes(6000)))
            if message.startswith("hand over"):  # the rest of the read goes to the queue
                ws._listener = None
        ws.send_nowait(message)


class Records(logging.Handler):
    """The library's log lines, with the exception each carries."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        self.lines.append(f"{record.getMessage()} {error!r}")


RECORDS = Records()


def outcome(ws: WebSocket, transport: Transport, log: list[Any]) -> dict[str, Any]:
    protocol = ws.protocol
    lines = RECORDS.lines[:]
    RECORDS.lines.clear()
    return {
        "writes": transport.chunks, "log": log, "log_lines": lines, "eof": transport.eof,
        "closed": transport.closed, "reading": transport.reading,
        "state": protocol.state.name, "bytes_received": ws.bytes_received,
        "bytes_sent": ws.bytes_sent, "messages_received": ws.messages_received,
        "messages_sent": ws.messages_sent, "close_code": ws.close_code,
    }


async def settle() -> None:
    for _ in range(4):
        await asyncio.sleep(0)


def open_connection() -> tuple[WebSocket, Transport]:
    ws = WebSocket(Connection(Side.SERVER, max_message_size=65536), max_queue=4)
    transport = Transport(ws)
    ws.connection_made(transport)  # type: ignore[arg-type]
    return ws, transport


async def feed(transport: Transport, rng: random.Random, mode: str) -> None:
    """One to three streams of ``mode``, read by read, the loop settling after each. Each read
    is delivered as a transport delivers it: by the loop, outside any task (where the fused read
    runs a waiting recv()'s step at once)."""
    loop = asyncio.get_running_loop()
    for _ in range(rng.randrange(1, 4)):
        for chunk in reads(rng, mode):
            loop.call_soon(lambda chunk=chunk: transport.protocol.data_received(chunk))
            await settle()


async def with_listener(seed: int, mode: str) -> dict[str, Any]:
    rng = random.Random(seed)
    log: list[Any] = []
    ws, transport = open_connection()
    ws._listener = Echo(log)
    await feed(transport, rng, mode)
    result = outcome(ws, transport, log)
    ws.connection_lost(None)
    return result


async def with_coroutine(seed: int, mode: str) -> dict[str, Any]:
    rng = random.Random(seed)
    log: list[Any] = []
    ws, transport = open_connection()

    async def handler() -> None:
        try:
            async for message in ws:
                log.append(message if isinstance(message, str) else message.hex())
                if isinstance(message, str):
                    if message.startswith("raise"):  # the handler ends amid a read
                        raise ValueError("on purpose")
                    if message.startswith("close"):
                        ws.close_nowait(1000, "asked")
                    if message.startswith("hand over"):  # waits elsewhere: the rest queues
                        await asyncio.sleep(0)
                    if message.startswith("big"):
                        await ws.send("z" * 5000)
                if len(message) > 4096:  # bytes-like, then a small one: written together
                    await ws.send(bytearray(message.encode() if isinstance(message, str)
                                            else message))
                await ws.send(message)
        except Exception as exc:  # noqa: BLE001 - recorded for the comparison
            log.append(type(exc).__name__)

    task = asyncio.get_running_loop().create_task(handler())
    await settle()
    await feed(transport, rng, mode)
    result = outcome(ws, transport, log)
    ws.connection_lost(None)
    await task
    return result


def main() -> None:
    seeds = int(sys.argv[1])
    logger = logging.getLogger("tether")
    logger.addHandler(RECORDS)
    logger.propagate = False
    calls = {"data_received": 0, "send_nowait": 0, "recv": 0, "__anext__": 0, "_receive": 0}

    def profile(frame: Any, event: str, arg: Any) -> None:
        name = frame.f_code.co_name
        if event == "call" and name in calls and frame.f_code.co_filename.endswith(
                os.path.join("asyncio", "connection.py")):
            calls[name] += 1

    async def run() -> dict[str, Any]:
        results: dict[str, Any] = {}
        for api in (with_listener, with_coroutine):
            modes = ["mixed", "plain", "simple", "mixed", "plain", "many"]
            results[api.__name__] = [await api(seed, modes[seed % 6]) for seed in range(seeds)]
            # The common case: small messages in plain frames, each read whole frames.
            sys.setprofile(profile)
            try:
                for seed in range(10):
                    await api(10_000 + seed, "simple")
            finally:
                sys.setprofile(None)
        return results

    results = asyncio.run(run())
    fused = type(WebSocket.__dict__["data_received"]).__name__ != "function"
    print(json.dumps({"implementation": accel.IMPLEMENTATION, "fused": fused,
                      "python_calls": calls, "results": results}))


if __name__ == "__main__":
    main()
