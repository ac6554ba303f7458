"""The admin page's socket and routes, in-process (the page itself: test_admin_browser.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import tether
from tether.apps.admin import Admin
from tether.hub import Hub, MemoryBackend

from ..asyncio.conftest import UNIT, echo, run, until

TOKEN = "admin-secret-token"
AUTH = [("Authorization", f"Bearer {TOKEN}")]


@asynccontextmanager
async def admin_server(**options: Any) -> AsyncIterator[tuple[tether.Server, Admin, Hub, str]]:
    hub = Hub(MemoryBackend())
    router = tether.Router(default=echo)

    @router.websocket("/ws")
    async def chat(ws: tether.WebSocket) -> None:
        await hub.serve(ws, ws.request.query_params.get("name", ["anon"])[0])

    admin = Admin([TOKEN], hub=hub, interval=UNIT, **options)
    # The app's own routes take another token: the admin route does not accept it, nor
    # does it need it.
    app_auth = tether.TokenAuth(["app-token"])
    async with tether.serve(router, "127.0.0.1", 0, authenticate=app_auth) as server:
        admin.mount(router, "/admin", host="127.0.0.1", port=server.port_number)
        admin.attach(server)
        try:
            yield server, admin, hub, f"ws://127.0.0.1:{server.port_number}"
        finally:
            await admin.close()
            await hub.close()


async def next_of(ws: tether.WebSocket, kind: str) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 50 * UNIT))
        if message["type"] == kind:
            return message


class TestAccess:
    def test_tokens_and_origins(self) -> None:
        async def main() -> None:
            async with admin_server() as (server, _, _, url):
                refused = [
                    ({}, 401),
                    ({"headers": [("Authorization", "Bearer app-token")]}, 401),
                    ({"headers": [("Authorization", "Bearer wrong")]}, 401),
                    ({"headers": AUTH, "origin": "http://evil.example"}, 403),
                ]
                for options, status in refused:
                    with pytest.raises(tether.InvalidStatus) as info:
                        await tether.connect(url + "/admin/ws", **options)
                    assert info.value.response.status == status
                # The page's own origin, with the token as a subprotocol, as the page does.
                async with tether.connect(
                        url + "/admin/ws", origin=f"http://127.0.0.1:{server.port_number}",
                        subprotocols=[f"bearer.{TOKEN}"]) as ws:
                    hello = await next_of(ws, "hello")
                    assert hello["readonly"] is False and hello["hub"] is True
                # And the app's routes still take the app's token, not the admin's.
                with pytest.raises(tether.InvalidStatus):
                    await tether.connect(url + "/ws", headers=AUTH)

        run(main())

    def test_page_answers_401_without_the_token(self) -> None:
        async def main() -> None:
            async with admin_server() as (server, _, _, _):
                port = server.port_number

                def get(path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
                    import urllib.error
                    import urllib.request

                    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                                     headers=headers)
                    try:
                        with urllib.request.urlopen(request, timeout=5) as response:
                            return response.status, response.read(), response.headers[
                                "Content-Security-Policy"]
                    except urllib.error.HTTPError as error:
                        return error.code, error.read(), error.headers[
                            "Content-Security-Policy"]

                loop = asyncio.get_running_loop()
                status, body, csp = await loop.run_in_executor(None, get, "/admin", {})
                assert status == 401
                assert b'data-base="/admin"' in body and TOKEN.encode() not in body
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp
                status, _, _ = await loop.run_in_executor(
                    None, get, "/admin/", {"Authorization": f"Bearer {TOKEN}"})
                assert status == 200
                status, body, _ = await loop.run_in_executor(None, get, "/admin/admin.js", {})
                assert status == 200 and b"bearer." in body

        run(main())


class TestSamples:
    def test_numbers_move(self) -> None:
        async def main() -> None:
            async with admin_server() as (server, _, _, url):
                async with tether.connect(url + "/admin/ws", headers=AUTH) as admin:
                    await next_of(admin, "hello")
                    app = [("Authorization", "Bearer app-token")]
                    async with tether.connect(url + "/ws?name=carol", headers=app) as carol:
                        await carol.send('{"type": "subscribe", "topic": "room"}')
                        for i in range(5):
                            await carol.send(json.dumps({"type": "publish", "topic": "room",
                                                         "data": i, "id": str(i)}))
                        stats = await next_of(admin, "stats")
                        while stats["totals"]["messages_in"] < 6 or not stats.get("topics"):
                            stats = await next_of(admin, "stats")
                        assert stats["connections"] == 2  # carol and the admin page
                        assert stats["topics"] == [{"topic": "room", "subscribers": 1,
                                                    "members": ["carol"],
                                                    "publish_rate": stats["topics"][0][
                                                        "publish_rate"]}]
                        routes = {c["route"]: c for c in stats["slowest"]}
                        assert routes["/admin/ws"]["admin"] is True
                        assert routes["/ws"]["in"] == 6 and routes["/ws"]["user"] is None
                        assert len(stats["point"]) == 6
                    with pytest.raises(tether.InvalidStatus):
                        await tether.connect(url + "/ws")  # a refusal shows up
                    stats = await next_of(admin, "stats")
                    while "401" not in stats["refusals"] or not stats["closes"]:
                        stats = await next_of(admin, "stats")
                    assert stats["closes"] == {"1000": 1}
                    # A page that opens later gets the history for its charts.
                    async with tether.connect(url + "/admin/ws", headers=AUTH) as late:
                        hello = await next_of(late, "hello")
                        assert len(hello["history"]) >= 2
                        assert hello["stats"]["connections"] >= 1

        run(main())


class TestActions:
    def test_disconnect_and_kick(self) -> None:
        async def main() -> None:
            async with admin_server() as (server, _, hub, url):
                app = [("Authorization", "Bearer app-token")]
                async with tether.connect(url + "/admin/ws", headers=AUTH) as admin, \
                        tether.connect(url + "/ws?name=dave", headers=app) as dave:
                    await dave.send('{"type": "subscribe", "topic": "room"}')
                    await until(lambda: hub.topics().get("room") == 1, what="subscribed")
                    stats = await next_of(admin, "stats")
                    while not stats["topics"]:
                        stats = await next_of(admin, "stats")
                    await admin.send(json.dumps({"type": "kick", "topic": "room",
                                                 "member": "dave", "ref": 7}))
                    result = await next_of(admin, "result")
                    assert result == {"type": "result", "ref": 7, "ok": True,
                                      "done": "dave removed from room (1 connection)"}
                    notice = await next_of(dave, "unsubscribed")
                    assert notice == {"type": "unsubscribed", "topic": "room",
                                      "reason": "kicked"}
                    assert "room" not in hub.topics()
                    target = next(c["id"] for c in stats["slowest"] if c["route"] == "/ws")
                    await admin.send(json.dumps({"type": "disconnect", "id": target,
                                                 "code": 4003, "reason": "go away", "ref": 8}))
                    assert (await next_of(admin, "result"))["ok"] is True
                    with pytest.raises(tether.ConnectionClosed):
                        while True:
                            await dave.recv()
                    assert (dave.close_code, dave.close_reason) == (4003, "go away")

        run(main())

    @pytest.mark.parametrize("request_, error", [
        ({"type": "disconnect", "id": 99999, "code": 1000}, "no open connection 99999"),
        ({"type": "disconnect", "id": 1, "code": 1005}, "1005 is not a close code that can be"
         " sent"),
        ({"type": "disconnect", "id": 1, "code": "1000"}, "'1000' is not a close code"),
        ({"type": "disconnect", "id": 1, "code": 1000, "reason": "é" * 62},
         "the reason must be text of at most 123 bytes"),
        ({"type": "kick", "topic": "room"}, "kick needs a topic and a member"),
        ({"type": "kick", "topic": "room", "member": "nobody"}, "'nobody' is not in 'room' on"
         " this server"),
        ({"type": "reboot"}, "unknown action 'reboot'"),
        ([1, 2], "not a JSON object"),
    ])
    def test_refused_with_a_reason(self, request_: Any, error: str) -> None:
        async def main() -> None:
            async with admin_server() as (_, _, _, url):
                async with tether.connect(url + "/admin/ws", headers=AUTH) as admin:
                    await next_of(admin, "hello")
                    await admin.send(json.dumps(request_))
                    result = await next_of(admin, "result")
                    assert result["ok"] is False
                    assert result["error"].startswith(error)
                    await admin.send("{not json")
                    assert (await next_of(admin, "result"))["error"] == "not JSON"
                    await admin.send(b"\x00")
                    assert (await next_of(admin, "result"))["error"].startswith("send JSON")
                    await admin.send(json.dumps({"type": "kick", "x": "a" * 5000}))
                    assert (await next_of(admin, "result"))["error"].startswith("send JSON")
                    # Still open and serving after every refusal.
                    assert (await next_of(admin, "stats"))["type"] == "stats"

        run(main())

    def test_readonly_shows_and_refuses(self) -> None:
        async def main() -> None:
            async with admin_server(readonly=True) as (_, _, _, url):
                async with tether.connect(url + "/admin/ws", headers=AUTH) as admin:
                    assert (await next_of(admin, "hello"))["readonly"] is True
                    stats = await next_of(admin, "stats")
                    mine = stats["slowest"][0]["id"]
                    await admin.send(json.dumps({"type": "disconnect", "id": mine,
                                                 "code": 1000}))
                    result = await next_of(admin, "result")
                    assert result["error"] == "read-only: actions are turned off"
                    assert admin.ready_state is tether.State.OPEN

        run(main())
