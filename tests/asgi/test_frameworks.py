"""Real frameworks from PyPI (FastAPI, Starlette, Django Channels) under a real uvicorn, with
tether as its WebSocket engine (``ws=UvicornProtocol``), and tether's client on the other end.

What each group covers:

* FastAPI: path and query parameters, a token dependency that refuses with an HTTP answer
  (the ``websocket.http.response`` extension) or a close before accept (403), accept with a
  subprotocol and headers, close codes and reasons both ways (ASGI spec 2.5), text and bytes
  both ways, the scope (root_path, raw_path, client, server, headers, lifespan state).
* Starlette: a ``WebSocketEndpoint`` with ``encoding = "text"``.
* Django Channels: an ``AsyncWebsocketConsumer`` behind ``URLRouter``/``ProtocolTypeRouter``,
  with the in-memory channel layer (no database server: Django is configured in-process with
  no database at all).
* uvicorn's settings through FastAPI: ``ws_max_size``, backpressure both ways (``send``
  waits for a client that does not read, reading pauses past ``ws_max_queue``), the heartbeat,
  ``ws_per_message_deflate``, graceful shutdown (1012).
* Bad input on the wire: invalid UTF-8 (1007), an unmasked client frame (1002), and another
  connection on the same server unaffected.
* How an app ends: messages sent just before a route returns or raises still go out (then
  the TCP connection ends, as with uvicorn's own engines); ``send()`` to a client that left
  raises uvicorn's ``ClientDisconnected``, which ends the app quietly; a graceful shutdown
  answers a pending handshake with 500 and the app's late accept learns the client is gone.
* The documented spellings: ``ws="tether.asgi:UvicornProtocol"`` and the uvicorn command line;
  and that each pass runs on its loop (uvloop, then asyncio) and accelerator.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import (
    Depends,
    FastAPI,
    HTTPException,
    WebSocket,
    WebSocketDisconnect,
    WebSocketException,
)
from fastapi.responses import PlainTextResponse
from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import StreamingResponse
from starlette.routing import WebSocketRoute

import tether
from tether.asgi import UvicornProtocol

from .conftest import (
    UNIT,
    asgi_echo,
    client_frame,
    raw_websocket,
    read_frames,
    rss,
    run,
    serving,
    serving_server,
)

MiB = 2**20
TOKEN = "s3cret"


def url(port: int, path: str) -> str:
    return f"ws://127.0.0.1:{port}{path}"


class Denied(Exception):
    """Raised by the token dependency after it sent its own denial response."""


def fastapi_app(seen: asyncio.Queue[Any], lifespan: Any = None) -> FastAPI:
    """The FastAPI app of most tests; routes put what they saw in ``seen``."""
    app = FastAPI(lifespan=lifespan)

    async def require_token(websocket: WebSocket, token: str | None = None) -> str:
        if token is None:
            # FastAPI's idiom: its handler answers with JSON, through the denial extension.
            raise HTTPException(status_code=401, detail="missing token")
        if token == "banned":
            raise WebSocketException(code=1008, reason="banned")  # a close before accept
        if token != TOKEN:
            await websocket.send_denial_response(PlainTextResponse(
                "invalid token", status_code=401, headers={"WWW-Authenticate": "Bearer"}))
            raise Denied
        return token

    @app.exception_handler(Denied)
    async def denied(websocket: WebSocket, exc: Denied) -> None:
        return None  # the dependency has answered already

    @app.websocket("/ws/{room}")
    async def room(websocket: WebSocket, room: str, q: str = "none",
                   token: str = Depends(require_token)) -> None:
        offered = websocket.scope["subprotocols"]
        subprotocol = next((p for p in ("chat.v2", "chat.v1") if p in offered), None)
        await websocket.accept(subprotocol=subprotocol, headers=[(b"x-custom", b"1")])
        try:
            while True:
                text = await websocket.receive_text()
                if text == "close":
                    await websocket.close(4001, "bye")
                    await seen.put(("closed",))
                    return
                if text == "bytes":  # the next message is binary: sent back reversed
                    data = await websocket.receive_bytes()
                    await websocket.send_bytes(data[::-1])
                    continue
                await websocket.send_text(f"{room}/{q}/{text}")
        except WebSocketDisconnect as exc:
            await seen.put(("disconnect", exc.code, exc.reason))

    @app.websocket("/scope/{name}")
    async def scope(websocket: WebSocket, name: str) -> None:
        await websocket.accept()
        keys = ("type", "asgi", "http_version", "scheme", "path", "raw_path", "root_path",
                "query_string", "headers", "client", "server", "subprotocols", "extensions")
        seen.put_nowait({**{key: websocket.scope.get(key) for key in keys},
                         "name": name, "state": dict(websocket.scope.get("state") or {})})
        if lifespan is not None:
            await websocket.send_text(f"x={websocket.state.x}")
        await websocket.close()

    @app.websocket("/teapot")
    async def teapot(websocket: WebSocket) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield b"short "
            yield b"and stout"

        # No Content-Length: the body goes out in chunks as the app sends it.
        await websocket.send_denial_response(StreamingResponse(body(), status_code=418))

    return app


async def next_seen(seen: asyncio.Queue[Any]) -> Any:
    return await asyncio.wait_for(seen.get(), 50 * UNIT)


async def until(condition: Any, units: float = 50) -> None:
    """Wait (bounded) until ``condition()`` is true."""
    deadline = time.monotonic() + units * UNIT
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(UNIT / 10)


async def closed_by_server(ws: Any) -> tether.ConnectionClosed:
    """Wait for the server's close (no message may come first); return the exception."""
    with pytest.raises(tether.ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 50 * UNIT)
    return info.value


# -- FastAPI -----------------------------------------------------------------------------------


class TestFastAPI:
    def test_echo_with_path_and_query_parameters(self) -> None:
        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            async with serving(fastapi_app(seen)) as port:
                async with tether.connect(url(port, f"/ws/lobby?q=hi&token={TOKEN}")) as ws:
                    await ws.send("one")
                    assert await ws.recv() == "lobby/hi/one"
                    await ws.send("two")
                    assert await ws.recv() == "lobby/hi/two"
                assert await next_seen(seen) == ("disconnect", 1000, "")

        run(main())

    def test_text_and_bytes_both_ways(self) -> None:
        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            async with serving(fastapi_app(seen)) as port:
                async with tether.connect(url(port, f"/ws/r?token={TOKEN}")) as ws:
                    payload = bytes(range(256)) * 300  # 76,800 bytes: a 64-bit length
                    await ws.send("bytes")
                    await ws.send(payload)
                    echoed = await ws.recv()
                    assert type(echoed) is bytes and echoed == payload[::-1]
                    await ws.send("héllo ✓")
                    assert await ws.recv() == "r/none/héllo ✓"

        run(main())

    @pytest.mark.parametrize(
        "query, status, body, header",
        [
            ("", 401, {"detail": "missing token"}, None),
            ("?token=wrong", 401, "invalid token", ("WWW-Authenticate", "Bearer")),
        ],
        ids=["missing-httpexception", "invalid-send_denial_response"],
    )
    def test_dependency_refuses_with_401_and_a_body(
            self, query: str, status: int, body: Any, header: tuple[str, str] | None) -> None:
        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            async with serving(fastapi_app(seen)) as port:
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url(port, f"/ws/r{query}"), open_timeout=50 * UNIT)
                response = info.value.response
                assert response.status == status
                if isinstance(body, dict):
                    assert json.loads(response.body) == body
                else:
                    assert response.body == body.encode()
                if header is not None:
                    assert response.headers.get(header[0]) == header[1]
                assert "Sec-WebSocket-Accept" not in response.headers
                assert seen.empty()  # the route never ran

        run(main())

    def test_websocket_exception_before_accept_is_403(self) -> None:
        async def main() -> None:
            async with serving(fastapi_app(asyncio.Queue())) as port:
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url(port, "/ws/r?token=banned"))
                assert info.value.response.status == 403

        run(main())

    def test_streamed_denial_response(self) -> None:
        async def main() -> None:
            async with serving(fastapi_app(asyncio.Queue())) as port:
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url(port, "/teapot"))
                assert info.value.response.status == 418
                assert info.value.response.body == b"short and stout"

        run(main())

    def test_disconnect_has_the_client_close_code_and_reason(self) -> None:
        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            async with serving(fastapi_app(seen)) as port:
                async with tether.connect(url(port, f"/ws/r?token={TOKEN}")) as ws:
                    await ws.send("ping")
                    assert await ws.recv() == "r/none/ping"
                    await ws.close(4002, "client leaving")
                # ASGI spec 2.5: websocket.disconnect carries the reason.
                assert await next_seen(seen) == ("disconnect", 4002, "client leaving")

        run(main())

    def test_accept_with_subprotocol_and_headers(self) -> None:
        async def main() -> None:
            async with serving(fastapi_app(asyncio.Queue())) as port:
                async with tether.connect(url(port, f"/ws/r?token={TOKEN}"),
                                          subprotocols=["chat.v1", "chat.v2"]) as ws:
                    assert ws.subprotocol == "chat.v2"
                    assert ws.response.headers.get("Sec-WebSocket-Protocol") == "chat.v2"
                    assert ws.response.headers.get("x-custom") == "1"
                    # uvicorn's default headers, as its own engines send them.
                    assert ws.response.headers.get("server") == "uvicorn"
                    assert ws.response.headers.get("date", "").endswith(" GMT")
                async with tether.connect(url(port, f"/ws/r?token={TOKEN}")) as ws:
                    assert ws.subprotocol is None
                    assert "Sec-WebSocket-Protocol" not in ws.response.headers
                    assert ws.response.headers.get("x-custom") == "1"

        run(main())

    def test_close_with_code_and_reason(self) -> None:
        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            async with serving(fastapi_app(seen)) as port:
                async with tether.connect(url(port, f"/ws/r?token={TOKEN}")) as ws:
                    await ws.send("close")
                    await closed_by_server(ws)
                    assert (ws.close_code, ws.close_reason) == (4001, "bye")
                assert await next_seen(seen) == ("closed",)

        run(main())

    def test_messages_sent_before_the_route_returns_arrive(self) -> None:
        """A route that sends and returns without closing: uvicorn's engines deliver what was
        sent, then drop the TCP connection (1006 for the client)."""

        async def main() -> None:
            app = FastAPI()

            @app.websocket("/")
            async def route(websocket: WebSocket) -> None:
                await websocket.accept()
                await websocket.send_text("last")
                await websocket.send_text("words")

            async with serving(app) as port:
                async with tether.connect(url(port, "/")) as ws:
                    got = []
                    with pytest.raises(tether.ConnectionClosed):
                        while True:
                            got.append(await asyncio.wait_for(ws.recv(), 50 * UNIT))
                    assert got == ["last", "words"]
                    assert ws.close_code == 1006

        run(main())

    def test_scope(self) -> None:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
            yield {"x": 42}

        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            app = fastapi_app(seen, lifespan=lifespan)
            async with serving(app, lifespan="on", root_path="/api") as port:
                async with tether.connect(url(port, "/scope/a%20b?x=1&y=%C3%A9"),
                                          headers=[("X-Trace", "abc")]) as ws:
                    assert await ws.recv() == "x=42"  # websocket.state, from the lifespan
                    await closed_by_server(ws)
                    local = ws.local_address
            scope = await next_seen(seen)
            assert scope["type"] == "websocket"
            assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
            assert scope["http_version"] == "1.1"
            assert scope["scheme"] == "ws"
            assert scope["root_path"] == "/api"
            assert scope["path"] == "/api/scope/a b"  # as uvicorn's engines: root_path + path
            assert scope["raw_path"] == b"/api/scope/a%20b"
            assert scope["name"] == "a b"  # routed below root_path
            assert scope["query_string"] == b"x=1&y=%C3%A9"
            assert (b"x-trace", b"abc") in scope["headers"]
            assert (b"host", f"127.0.0.1:{port}".encode()) in scope["headers"]
            assert all(name == name.lower() for name, _ in scope["headers"])
            assert scope["client"] == ("127.0.0.1", local[1])
            assert scope["server"] == ("127.0.0.1", port)
            assert scope["subprotocols"] == []
            assert "websocket.http.response" in scope["extensions"]
            assert scope["state"] == {"x": 42}

        run(main())

    def test_send_after_the_client_left_ends_the_app_quietly(self) -> None:
        """An app that sends to a client that is gone gets uvicorn's ClientDisconnected (an
        OSError); left uncaught, the engine takes it as the normal end of the app, as
        uvicorn's own engines do: nothing logged, the task ends without an exception."""

        async def main() -> None:
            tasks: list[asyncio.Task[Any]] = []
            errors: list[BaseException] = []

            async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
                tasks.append(asyncio.current_task())  # type: ignore[arg-type]
                await receive()
                await send({"type": "websocket.accept"})
                assert (await receive())["type"] == "websocket.disconnect"
                try:
                    await send({"type": "websocket.send", "text": "anyone there?"})
                except BaseException as exc:
                    errors.append(exc)
                    raise

            async with serving(app) as port:
                async with tether.connect(url(port, "/")):
                    pass
                await until(lambda: bool(tasks) and tasks[0].done())
                assert len(errors) == 1 and isinstance(errors[0], OSError), errors
                assert tasks[0].exception() is None, repr(tasks[0].exception())

        run(main())

    def test_exception_before_accept_is_500(self, caplog: pytest.LogCaptureFixture) -> None:
        async def main() -> None:
            app = FastAPI()

            @app.websocket("/")
            async def route(websocket: WebSocket) -> None:
                raise ValueError("boom")

            async with serving(app) as port:
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url(port, "/"))
                assert info.value.response.status == 500
                assert info.value.response.body == b"Internal Server Error"

        run(main())
        assert "Exception in ASGI application" in caplog.text

    def test_shutdown_during_the_handshake(self, caplog: pytest.LogCaptureFixture) -> None:
        """A graceful shutdown answers a handshake still in the app's hands with 500; the app
        that accepts afterwards learns that the client is gone (uvicorn's ClientDisconnected,
        an OSError, as from uvicorn's own engines), not that it broke the ASGI protocol."""

        async def main() -> None:
            waiting, gate = asyncio.Event(), asyncio.Event()
            outcome: asyncio.Queue[Any] = asyncio.Queue()

            async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
                await receive()
                waiting.set()
                await gate.wait()  # e.g. a slow token check
                try:
                    await send({"type": "websocket.accept"})
                except BaseException as exc:
                    await outcome.put(exc)
                    raise
                await outcome.put(None)

            async with serving_server(app) as (server, port):
                connecting = asyncio.ensure_future(tether.connect(url(port, "/")))
                await asyncio.wait_for(waiting.wait(), 50 * UNIT)
                server.should_exit = True
                with pytest.raises(tether.InvalidStatus) as info:
                    await asyncio.wait_for(connecting, 50 * UNIT)
                assert info.value.response.status == 500
                gate.set()
                error = await next_seen(outcome)
                assert isinstance(error, OSError), repr(error)

        run(main())
        assert "Exception in ASGI application" not in caplog.text


# -- Starlette ---------------------------------------------------------------------------------


def starlette_app(codes: asyncio.Queue[int]) -> Starlette:
    class Shout(WebSocketEndpoint):
        encoding = "text"

        async def on_connect(self, websocket: Any) -> None:
            await websocket.accept()

        async def on_receive(self, websocket: Any, data: str) -> None:
            await websocket.send_text(data.upper())

        async def on_disconnect(self, websocket: Any, close_code: int) -> None:
            await codes.put(close_code)

    return Starlette(routes=[WebSocketRoute("/shout", Shout)])


class TestStarlette:
    def test_endpoint_echo_and_close_code(self) -> None:
        async def main() -> None:
            codes: asyncio.Queue[int] = asyncio.Queue()
            async with serving(starlette_app(codes)) as port:
                async with tether.connect(url(port, "/shout")) as ws:
                    await ws.send("hey")
                    assert await ws.recv() == "HEY"
                    await ws.close(4005)
                assert await asyncio.wait_for(codes.get(), 50 * UNIT) == 4005

        run(main())

    def test_bytes_to_a_text_endpoint_closes_1003(self) -> None:
        """Starlette closes with 1003, then raises (uvicorn logs the error and drops the TCP
        connection): the close frame must reach the client first, as with uvicorn's engines."""

        async def main() -> None:
            codes: asyncio.Queue[int] = asyncio.Queue()
            async with serving(starlette_app(codes)) as port:
                async with tether.connect(url(port, "/shout")) as ws:
                    await ws.send(b"not text")
                    await closed_by_server(ws)
                    assert ws.close_code == 1003
                assert await asyncio.wait_for(codes.get(), 50 * UNIT) == 1011

        run(main())


# -- Django Channels -----------------------------------------------------------------------------

CHANNELS_DISCONNECTS: list[int] = []
_channels_app: Any = None


def channels_application() -> Any:
    """A ProtocolTypeRouter over URLRouter: Django configured here, in this process, with no
    database and the in-memory channel layer (built once: Django's settings are global)."""
    global _channels_app
    if _channels_app is not None:
        return _channels_app
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tether-tests",
            ALLOWED_HOSTS=["127.0.0.1"],
            INSTALLED_APPS=[],
            DATABASES={},
            CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        )
        django.setup()
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator
    from django.urls import path

    class RoomConsumer(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            self.room = self.scope["url_route"]["kwargs"]["room"]
            await self.channel_layer.group_add(self.room, self.channel_name)
            await self.accept()

        async def receive(self, text_data: str | None = None,
                          bytes_data: bytes | None = None) -> None:
            if bytes_data is not None:
                await self.send(bytes_data=bytes_data)
            elif text_data == "close":
                await self.close(code=4003, reason="done")
            elif text_data is not None and text_data.startswith("all:"):
                await self.channel_layer.group_send(
                    self.room, {"type": "room.message", "text": text_data[4:]})
            else:
                await self.send(text_data=text_data)

        async def room_message(self, event: dict[str, Any]) -> None:
            await self.send(text_data=f"{self.room}:{event['text']}")

        async def disconnect(self, code: int) -> None:
            await self.channel_layer.group_discard(self.room, self.channel_name)
            CHANNELS_DISCONNECTS.append(code)

    _channels_app = ProtocolTypeRouter({
        "websocket": AllowedHostsOriginValidator(URLRouter([
            path("ws/room/<str:room>/", RoomConsumer.as_asgi()),
        ])),
    })
    return _channels_app


class TestDjangoChannels:
    def test_consumer_echo_group_and_close_code(self) -> None:
        async def main() -> None:
            CHANNELS_DISCONNECTS.clear()
            async with serving(channels_application()) as port:
                origin = f"http://127.0.0.1:{port}"
                room = url(port, "/ws/room/blue/")
                async with tether.connect(room, origin=origin) as a, \
                        tether.connect(room, origin=origin) as b:
                    await a.send("hello")
                    assert await a.recv() == "hello"
                    await a.send(b"\x00\xff")
                    assert await a.recv() == b"\x00\xff"
                    await b.send("all:hi")  # through the channel layer, to both
                    assert await a.recv() == "blue:hi"
                    assert await b.recv() == "blue:hi"
                    await a.send("close")
                    await closed_by_server(a)
                    assert (a.close_code, a.close_reason) == (4003, "done")
                    await b.close(4010)
                await until(lambda: len(CHANNELS_DISCONNECTS) == 2)
                assert sorted(CHANNELS_DISCONNECTS) == [4003, 4010]

        run(main())

    def test_origin_validator_refuses_before_accept(self) -> None:
        async def main() -> None:
            async with serving(channels_application()) as port:
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url(port, "/ws/room/blue/"), origin="http://evil.test")
                assert info.value.response.status == 403

        run(main())


# -- uvicorn's settings, through FastAPI -------------------------------------------------------


async def stalled(counter: Any, units: int = 5) -> int:
    """Wait until ``counter()`` has not changed for ``units`` units (bounded); return it."""
    last, still = -1, 0
    deadline = time.monotonic() + 200 * UNIT
    while still < units:
        assert time.monotonic() < deadline, "still moving"
        await asyncio.sleep(UNIT)
        value = counter()
        still = still + 1 if value == last else 0
        last = value
    return last


class TestLimitsAndFlowControl:
    @pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
    def test_message_over_ws_max_size_closes_1009_before_the_app_sees_it(
            self, deflate: bool) -> None:
        """Compressed, the message is a few bytes on the wire: the limit applies to what it
        inflates to (a decompression bomb is cut off as it inflates)."""

        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            app = FastAPI()

            @app.websocket("/")
            async def route(websocket: WebSocket) -> None:
                await websocket.accept()
                while True:
                    message = await websocket.receive()
                    await seen.put(message)
                    if message["type"] == "websocket.disconnect":
                        return

            async with serving(app, ws_max_size=1024, ws_per_message_deflate=deflate) as port:
                async with tether.connect(url(port, "/"),
                                          compression="deflate" if deflate else None) as ws:
                    assert ("permessage-deflate" in ws.extensions) is deflate
                    await ws.send(b"x" * 1024)  # at the limit: delivered
                    await ws.send(b"y" * (1025 if not deflate else 1_000_000))
                    await closed_by_server(ws)
                    assert ws.close_code == 1009
            assert await next_seen(seen) == {"type": "websocket.receive", "bytes": b"x" * 1024}
            message = await next_seen(seen)
            assert message["type"] == "websocket.disconnect" and message["code"] == 1009

        run(main())

    def test_send_waits_for_a_client_that_does_not_read(self) -> None:
        chunk = os.urandom(MiB)  # incompressible, and allocated before the baseline
        count = 50

        async def main() -> None:
            sent = 0
            app = FastAPI()

            @app.websocket("/")
            async def route(websocket: WebSocket) -> None:
                nonlocal sent
                await websocket.accept()
                for _ in range(count):
                    await websocket.send_bytes(chunk)
                    sent += 1
                await websocket.send_text("done")
                await websocket.receive()

            async with serving(app, ws_per_message_deflate=False) as port:
                baseline = rss()
                async with tether.connect(url(port, "/"), compression=None, max_size=2 * MiB,
                                          max_queue=1) as ws:
                    # Keep the kernel's share small (loopback autotuning allows 32 MiB).
                    sock = ws.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
                    blocked_at = await stalled(lambda: sent)
                    growth = rss() - baseline
                    assert blocked_at < count // 2, f"send() did not wait: {blocked_at} MiB out"
                    assert growth < 10 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
                    received = 0
                    for _ in range(count):  # now read: the route goes on to the end
                        message = await asyncio.wait_for(ws.recv(), 50 * UNIT)
                        received += len(message)
                    assert received == count * MiB
                    assert await asyncio.wait_for(ws.recv(), 50 * UNIT) == "done"
                    assert sent == count

        run(main())

    def test_reading_pauses_when_the_app_does_not_read(self) -> None:
        chunk = os.urandom(64 * 1024)
        count = 800  # 50 MiB

        async def main() -> None:
            sent = received = 0
            gate = asyncio.Event()
            app = FastAPI()

            @app.websocket("/")
            async def route(websocket: WebSocket) -> None:
                nonlocal received
                await websocket.accept()
                await gate.wait()
                while received < count * len(chunk):
                    received += len(await websocket.receive_bytes())
                await websocket.send_text("got it all")
                await websocket.receive()  # the client's close

            async with serving(app, ws_per_message_deflate=False, ws_max_queue=4) as port:
                baseline = rss()
                async with tether.connect(url(port, "/"), compression=None) as ws:
                    async def flood() -> None:
                        nonlocal sent
                        for _ in range(count):
                            await ws.send(chunk)
                            sent += 1

                    flooding = asyncio.ensure_future(flood())
                    try:
                        blocked_at = await stalled(lambda: sent)
                        growth = rss() - baseline
                        assert blocked_at < count, "the server read everything unasked"
                        assert growth < 10 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
                        gate.set()  # the app reads now: reading resumes, the rest arrives
                        await asyncio.wait_for(flooding, 100 * UNIT)
                        assert await asyncio.wait_for(ws.recv(), 50 * UNIT) == "got it all"
                    finally:
                        flooding.cancel()
            assert received == count * len(chunk)

        run(main())

    def test_heartbeat_drops_a_client_that_never_answers(self) -> None:
        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            app = FastAPI()

            @app.websocket("/")
            async def route(websocket: WebSocket) -> None:
                loop = asyncio.get_running_loop()
                await websocket.accept()
                accepted = loop.time()
                message = await websocket.receive()
                await seen.put((message, loop.time() - accepted))

            interval = 2 * UNIT
            async with serving(app, ws_ping_interval=interval, ws_ping_timeout=interval) as port:
                # Completes the handshake, then neither reads nor sends.
                reader, writer = await raw_websocket(port, "/")
                try:
                    message, elapsed = await next_seen(seen)
                    assert message["type"] == "websocket.disconnect"
                    assert message["code"] == 1011
                    # A ping after one interval, dropped one timeout later.
                    assert 2 * interval * 0.9 <= elapsed < 4 * interval + 5 * UNIT
                    data = await asyncio.wait_for(reader.read(), 20 * UNIT)  # to EOF: dropped
                finally:
                    writer.close()
            frames = read_frames(data)
            assert [opcode for opcode, _ in frames][:1] == [0x9]  # the unanswered ping
            assert frames[-1][0] == 0x8 and frames[-1][1][:2] == (1011).to_bytes(2, "big")

        run(main())

    @pytest.mark.parametrize("deflate", [True, False])
    def test_per_message_deflate_setting(self, deflate: bool) -> None:
        async def main() -> None:
            async with serving(asgi_echo, ws_per_message_deflate=deflate) as port:
                async with tether.connect(url(port, "/")) as ws:  # offers permessage-deflate
                    assert ("permessage-deflate" in ws.extensions) is deflate
                    text = "compressible " * 1000
                    await ws.send(text)
                    assert await ws.recv() == text

        run(main())

    def test_graceful_shutdown_closes_1012(self) -> None:
        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            async with serving_server(fastapi_app(seen)) as (server, port):
                async with tether.connect(url(port, f"/ws/r?token={TOKEN}")) as ws:
                    await ws.send("before")
                    assert await ws.recv() == "r/none/before"
                    server.should_exit = True
                    await closed_by_server(ws)
                    assert ws.close_code == 1012
                assert await next_seen(seen) == ("disconnect", 1012, "")

        run(main())


# -- bad input on the wire ---------------------------------------------------------------------


async def read_close(reader: asyncio.StreamReader) -> tuple[int, list[int]]:
    """Read frames up to the server's close frame; return its code and the opcodes seen."""
    data = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 50 * UNIT)
        assert chunk, f"EOF before a close frame: {data!r}"
        data += chunk
        frames = read_frames(data)
        if frames and frames[-1][0] == 0x8:
            return int.from_bytes(frames[-1][1][:2], "big"), [op for op, _ in frames]


class TestBadInput:
    @pytest.mark.parametrize(
        "frame, code",
        [
            (client_frame(0x1, b"caf\xc3"), 1007),  # a truncated UTF-8 sequence
            (client_frame(0x1, b"\xff\xfe"), 1007),
            (client_frame(0x1, b"hi", masked=False), 1002),  # RFC 6455 §5.1: MUST be masked
        ],
        ids=["utf8-truncated", "utf8-invalid", "unmasked"],
    )
    def test_bad_frame_fails_the_connection_others_go_on(self, frame: bytes, code: int) -> None:
        async def main() -> None:
            seen: asyncio.Queue[Any] = asyncio.Queue()
            app = FastAPI()

            @app.websocket("/")
            async def route(websocket: WebSocket) -> None:
                await websocket.accept()
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        await seen.put(message)
                        return
                    await websocket.send(message | {"type": "websocket.send"})

            async with serving(app) as port:
                async with tether.connect(url(port, "/")) as good:
                    reader, writer = await raw_websocket(port, "/")
                    try:
                        writer.write(client_frame(0x1, b"fine"))
                        echo = await asyncio.wait_for(reader.readexactly(6), 50 * UNIT)
                        assert read_frames(echo) == [(0x1, b"fine")]
                        writer.write(frame)
                        got, opcodes = await read_close(reader)
                        assert (got, opcodes) == (code, [0x8])
                    finally:
                        writer.close()
                    message = await next_seen(seen)
                    assert message["code"] == code
                    await good.send("still here")
                    assert await good.recv() == "still here"

        run(main())


    @pytest.mark.parametrize(
        "last, code",
        [
            (bytes([0x80 | 0x20 | 0x1, 0x80 | 2]) + bytes(4) + b"hi", 1002),  # RSV2 set
            (client_frame(0x8, (1000).to_bytes(2, "big")), 1000),  # the client's close
        ],
        ids=["bad-frame", "close-frame"],
    )
    def test_a_message_just_before_a_failure_or_a_close_is_answered(
            self, last: bytes, code: int) -> None:
        """Autobahn 3.2, 5.15, ...: a message, then a bad frame (or a close frame) in the same
        read. The app gets the message and may still answer it: the close frame that fails
        (or answers) the connection goes out when the app asks for the next message, as with
        ``tether.serve`` (RFC 6455 §5.5.1 lets the reply wait "as soon as practical")."""

        async def main() -> None:
            async with serving(asgi_echo) as port:
                reader, writer = await raw_websocket(port, "/")
                try:
                    writer.write(client_frame(0x1, b"Hello") + last)
                    got, opcodes = await read_close(reader)
                    assert (got, opcodes) == (code, [0x1, 0x8])  # the echo, then the close
                finally:
                    writer.close()

        run(main())


# -- the documented spellings ------------------------------------------------------------------


class TestSpellings:
    def test_ws_setting_as_import_string(self) -> None:
        async def main() -> None:
            async with serving_server(asgi_echo, ws="tether.asgi:UvicornProtocol") as (
                    server, port):
                async with tether.connect(url(port, "/")) as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
                    engines = {type(c) for c in server.server_state.connections}
                    assert engines == {UvicornProtocol}

        run(main())

    def test_runs_on_the_loop_and_accelerator_of_the_pass(self) -> None:
        """The first pass serves on uvloop (where it is installed) with the C accelerator, the
        second on the standard loop in pure Python: the server is in this process, so its
        engine runs on the same loop as the test."""
        from tether.accel import IMPLEMENTATION

        async def main() -> str:
            loops: list[str] = []

            async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
                loops.append(type(asyncio.get_running_loop()).__module__)
                await asgi_echo(scope, receive, send)

            async with serving(app) as port, tether.connect(url(port, "/")) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            return loops[0]

        module = run(main())
        if os.environ.get("TETHER_LOOP") == "asyncio":
            assert module.startswith("asyncio")
        else:
            assert module.startswith("uvloop")
        if os.environ.get("TETHER_NO_EXTENSIONS") == "1":
            assert IMPLEMENTATION == "python"

    def test_uvicorn_command_line(self, tmp_path: Path) -> None:
        """``uvicorn module:app --ws tether.asgi:UvicornProtocol``, in a process of its own."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        root = Path(__file__).resolve().parents[2]
        loop = "asyncio" if os.environ.get("TETHER_LOOP") == "asyncio" else "auto"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(root), str(root / "src"), os.environ.get("PYTHONPATH")) if p)}
        log = tmp_path / "uvicorn.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "tests.asgi.conftest:asgi_echo",
                 "--ws", "tether.asgi:UvicornProtocol", "--host", "127.0.0.1",
                 "--port", str(port), "--lifespan", "off", "--loop", loop],
                cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT)

            async def main() -> None:
                deadline = time.monotonic() + 150 * UNIT
                while True:
                    assert process.poll() is None, log.read_text()
                    try:
                        ws = await tether.connect(url(port, "/"))
                        break
                    except OSError:
                        assert time.monotonic() < deadline, log.read_text()
                        await asyncio.sleep(UNIT)
                try:
                    await ws.send("over the command line")
                    assert await ws.recv() == "over the command line"
                finally:
                    await ws.close()

            try:
                run(main(), timeout=200 * UNIT)
            finally:
                process.terminate()
                process.wait(timeout=100 * UNIT)
        # uvicorn re-raises the SIGTERM it handled once it has shut down.
        assert process.returncode in (0, -signal.SIGTERM), log.read_text()
        assert "Finished server process" in log.read_text(), log.read_text()
        assert "Exception" not in log.read_text(), log.read_text()
