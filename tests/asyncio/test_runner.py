"""tether.run(): uvloop when installed, the standard loop on request."""

from __future__ import annotations

import asyncio

import pytest

import tether
from tether.asyncio.runner import loop_factory


async def loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_auto_is_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")  # a default dependency on CPython/Linux: present in CI
    assert tether.run(loop_module(), loop="auto").startswith("uvloop")


def test_asyncio_on_request() -> None:
    assert tether.run(loop_module(), loop="asyncio").startswith("asyncio")


def test_environment_chooses_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_LOOP", "asyncio")
    assert not loop_factory().__module__.startswith("uvloop")
    assert tether.run(loop_module()).startswith("asyncio")


def test_unknown_loop_is_refused_and_the_coroutine_closed() -> None:
    coro = loop_module()
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        tether.run(coro, loop="trio")
    assert coro.cr_frame is None  # closed: no "never awaited" warning


def test_an_echo_round_trip_on_each_loop() -> None:
    async def main() -> str:
        async def echo(ws: tether.WebSocket) -> None:
            async for message in ws:
                await ws.send(message)

        async with tether.serve(echo, "127.0.0.1", 0) as server:
            async with tether.connect(f"ws://127.0.0.1:{server.port_number}") as ws:
                await ws.send("ping")
                return str(await ws.recv())

    for loop in ("auto", "asyncio"):
        assert tether.run(main(), loop=loop) == "ping"
