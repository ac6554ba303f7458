"""The C accelerator's WebSocket.data_received and send_nowait (accel.fuse) against the Python
methods they stand in for.

fused_driver.py feeds the same random reads (every kind of frame, cut anywhere; a Listener that
echoes, raises, closes and sends large messages; a coroutine that echoes) to WebSockets, once
with the accelerator and once without it, each in its own process: the messages delivered, the
bytes written (write by write), the log lines, the counters and the final state must be the
same. Both runs happen in either pass of the suite: the environment variable is set per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEEDS = 300


def run(no_extensions: bool) -> dict[str, Any]:
    env = {**os.environ, "TETHER_NO_EXTENSIONS": "1" if no_extensions else "0"}
    result = subprocess.run([sys.executable, "-m", "tests.asyncio.fused_driver", str(SEEDS)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                            check=True)
    output: dict[str, Any] = json.loads(result.stdout)
    return output


def built() -> bool:
    try:
        from tether.accel import _speedups  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def runs() -> tuple[dict[str, Any], dict[str, Any]]:
    return run(no_extensions=False), run(no_extensions=True)


def test_python_run_uses_the_python_methods(runs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, python = runs
    assert python["implementation"] == "python"
    assert not python["fused"]
    assert python["python_calls"]["data_received"] > 0


@pytest.mark.skipif(not built(), reason="the C accelerator is not built here")
def test_c_run_takes_the_common_case_in_c(runs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Small messages in plain frames, a read each: no call of the Python methods at all."""
    c, _ = runs
    assert c["implementation"] == "c"
    assert c["fused"]
    assert c["python_calls"] == {"data_received": 0, "send_nowait": 0, "recv": 0,
                                 "__anext__": 0, "_receive": 0}


@pytest.mark.parametrize("api", ["with_listener", "with_coroutine"])
def test_same_outcome(runs: tuple[dict[str, Any], dict[str, Any]], api: str) -> None:
    c, python = runs
    assert len(c["results"][api]) == len(python["results"][api]) == SEEDS
    for seed, (fused, plain) in enumerate(zip(c["results"][api], python["results"][api])):
        assert fused == plain, f"seed {seed}"
    # The runs did what they are for: messages echoed, errors met, connections closed.
    outcomes = python["results"][api]
    assert sum(len(o["writes"]) for o in outcomes) > SEEDS
    assert any(o["state"] != "OPEN" for o in outcomes)
    assert any(o["state"] == "OPEN" and o["messages_received"] > 5 for o in outcomes)
    if api == "with_listener":
        assert any("on purpose" in line for o in outcomes for line in o["log_lines"])


def test_a_subclass_with_its_own_end_of_turn_gets_it_called() -> None:
    """The fused data_received writes a read's replies itself; for a class that redefines
    _end_turn or _flush it stands aside, so that those are called as the Python method calls
    them."""
    import asyncio

    from tether.asyncio.connection import WebSocket
    from tether.protocol.connection import Connection, Side

    from .fused_driver import Echo, Transport

    calls: list[str] = []

    class Mine(WebSocket):
        def _end_turn(self) -> None:
            calls.append("end of turn")
            super()._end_turn()

    async def main() -> list[str]:
        ws = Mine(Connection(Side.SERVER))
        transport = Transport(ws)
        ws.connection_made(transport)  # type: ignore[arg-type]
        ws._listener = Echo([])
        ws.data_received(bytes([0x81, 0x82, 0, 0, 0, 0]) + b"hi")
        return transport.chunks

    assert asyncio.run(main()) == ["81026869"]
    assert calls == ["end of turn"]


def test_a_waiting_handler_runs_inside_the_read() -> None:
    """With the accelerator, a read for a recv() that waits runs the handler's step for each
    message inside data_received (no Future queued, no loop turn); in Python the steps run
    after it, from the queue. The replies go out the same: once, at the read's end."""
    import asyncio
    import random

    from tether import accel

    from .fused_driver import frame, open_connection

    async def main() -> tuple[list[tuple[str, bool]], list[str]]:
        ws, transport = open_connection()
        reading = False
        seen: list[tuple[str, bool]] = []

        async def handler() -> None:
            async for message in ws:
                seen.append((str(message), reading))
                await ws.send(message)

        def deliver(data: bytes) -> None:
            nonlocal reading
            reading = True
            try:
                ws.data_received(data)
            finally:
                reading = False

        loop = asyncio.get_running_loop()
        task = loop.create_task(handler())
        await asyncio.sleep(0)
        rng = random.Random(5)
        loop.call_soon(deliver, b"".join(frame(rng, 1, f"m{i}".encode()) for i in range(3)))
        for _ in range(4):
            await asyncio.sleep(0)
        ws.connection_lost(None)
        await asyncio.gather(task, return_exceptions=True)
        return seen, transport.chunks

    seen, writes = asyncio.run(main())
    inside = accel.IMPLEMENTATION == "c"
    assert seen == [("m0", inside), ("m1", inside), ("m2", inside)]
    assert writes == ["81026d3081026d3181026d32"]


def test_system_exit_amid_a_read_ends_the_read_first() -> None:
    """KeyboardInterrupt or SystemExit from a handler's step goes up (as from the loop's
    Handle), but only after the read has ended as it would: the rest queued, the turn's
    replies written."""
    import asyncio
    import random

    from .fused_driver import frame, open_connection

    loop = asyncio.new_event_loop()
    try:
        ws, transport = open_connection_in(loop, open_connection)
        got: list[str] = []

        async def handler() -> None:
            while True:
                message = str(await ws.recv())
                got.append(message)
                ws.send_nowait("reply-" + message)
                if message == "a":
                    raise SystemExit("bye")

        task = loop.create_task(handler())
        loop.run_until_complete(asyncio.sleep(0))
        rng = random.Random(3)
        loop.call_soon(ws.data_received, b"".join(frame(rng, 1, m.encode()) for m in "abc"))
        with pytest.raises(SystemExit):
            loop.run_forever()
        loop.run_until_complete(asyncio.sleep(0))  # the application goes on (a shutdown)
        assert got == ["a"]
        assert list(ws._messages) == ["b", "c"]
        assert ws._pending is None and ws.messages_received == 3
        assert transport.chunks == [(b"\x81\x07reply-a").hex()]
        assert task.done()
        task.exception()  # (retrieved)
        ws.connection_lost(None)
    finally:
        loop.close()


def open_connection_in(loop: Any, opener: Any) -> Any:
    """``opener()`` (it needs a running loop) run in ``loop``."""

    async def opened() -> Any:
        return opener()

    return loop.run_until_complete(opened())
