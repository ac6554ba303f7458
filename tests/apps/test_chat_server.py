"""The chat server's Python side: names, the backend it opens, its routes (WebSocket, page,
tether.js, static files) and a smoke test of the hub behind /ws."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.apps.chat.server import (
    STATIC_DIR,
    make_router,
    member_name,
    open_chat_backend,
    page_url,
)
from tether.hub import Hub, MemoryBackend
from tether.hub.sqlite import SQLiteBackend

from ..asyncio.conftest import UNIT, run
from .conftest import ChatServer, free_port
from ..asyncio.test_server import raw_request


def get(path: str, method: str = "GET", *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


@pytest.fixture
def static(tmp_path: Path) -> Path:
    directory = tmp_path / "static"
    directory.mkdir()
    (directory / "index.html").write_text("<!doctype html><title>chat</title>")
    (directory / "tether.js").write_text("export class TetherClient {}\n")
    (directory / "style.css").write_text("body { margin: 0 }\n")
    return directory


class TestMemberName:
    @pytest.mark.parametrize("raw, name", [
        ("alice", "alice"),
        ("  bob  ", "bob"),
        ("", "anonymous"),
        ("   ", "anonymous"),
        (None, "anonymous"),
        ("a" * 40, "a" * 32),
        ("x" * 31 + " y", "x" * 31),
        ("ev\x00il\n\r\t\x1b[31m", "evil[31m"),
        ("\u202eright-to-left\u200b", "right-to-left"),
        ("line\u2028break", "linebreak"),
        ("\ud800lone", "lone"),
        ("Zoë 🙂", "Zoë 🙂"),
        (42, "42"),
    ])
    def test_sanitised(self, raw: Any, name: str) -> None:
        assert member_name(raw) == name


@pytest.mark.parametrize(("host", "port", "tls", "url"), [
    ("127.0.0.1", 8765, False, "http://127.0.0.1:8765/"),
    ("::1", 8765, False, "http://[::1]:8765/"),
    ("0.0.0.0", 80, False, "http://127.0.0.1:80/"),
    ("::", 9000, True, "https://[::1]:9000/"),
    ("192.168.1.5", 8765, False, "http://192.168.1.5:8765/"),
    ("fe80::1", 8765, False, "http://[fe80::1]:8765/"),
])
def test_page_url(host: str, port: int, tls: bool, url: str) -> None:
    assert page_url(host, port, tls=tls) == url


class TestOpenChatBackend:
    def test_memory_without_a_folder(self) -> None:
        assert isinstance(open_chat_backend(None), MemoryBackend)

    def test_sqlite_in_the_folder(self, tmp_path: Path) -> None:
        folder = tmp_path / "a" / "b"
        backend = open_chat_backend(folder)
        assert isinstance(backend, SQLiteBackend)
        assert backend.path == folder / "chat.sqlite3" and backend.path.exists()
        asyncio.run(backend.close())

    def test_one_server_per_folder(self, tmp_path: Path) -> None:
        """A second `tether chat` on the same --data refuses to start, saying why."""
        first = ChatServer(free_port(), tmp_path / "data", tmp_path / "first.log")
        first.start()
        try:
            assert first.process is not None
            second = subprocess.run(
                [sys.executable, "-m", "tether", "chat", "--port", str(free_port()),
                 "--data", str(tmp_path / "data")],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert second.returncode == 1
            assert f"is in use by another server (pid {first.process.pid})" in second.stderr
            assert "tether chat: cannot open the history in" in second.stderr
        finally:
            first.stop()
        again = open_chat_backend(tmp_path / "data")  # free once the first has stopped
        run(again.close())

    def test_unusable_file_is_an_os_error(self, tmp_path: Path) -> None:
        (tmp_path / "chat.sqlite3").write_bytes(b"not a database" * 200)
        with pytest.raises(OSError, match="chat.sqlite3"):
            open_chat_backend(tmp_path)
        (tmp_path / "file").write_text("")
        with pytest.raises(OSError):
            open_chat_backend(tmp_path / "file")  # a file where the folder should be


class TestRoutes:
    def test_page_script_and_static_files(self, static: Path) -> None:
        async def main() -> None:
            async with tether.serve(make_router(Hub(), static), "127.0.0.1", 0) as server:
                port = server.port_number
                status, headers, body = await raw_request(port, get("/"))
                assert (status, body) == (200, b"<!doctype html><title>chat</title>")
                assert headers["content-type"] == "text/html; charset=utf-8"
                assert "default-src 'self'" in headers["content-security-policy"]
                assert headers["x-content-type-options"] == "nosniff"
                status, headers, body = await raw_request(port, get("/tether.js"))
                assert (status, body) == (200, b"export class TetherClient {}\n")
                assert headers["content-type"] == "text/javascript; charset=utf-8"
                status, headers, body = await raw_request(port, get("/style.css"))
                assert status == 200 and headers["content-type"].startswith("text/css")
                status, _, body = await raw_request(port, get("/tether.js", "HEAD"))
                assert (status, body) == (200, b"")
                assert (await raw_request(port, get("/nothing.js")))[0] == 404
                assert (await raw_request(port, get("/../secret")))[0] == 404
                assert (await raw_request(port, get("/", "POST")))[0] == 405
                status, headers, _ = await raw_request(port, get("/ws"))
                assert status == 426 and headers["upgrade"] == "websocket"

        run(main())

    def test_missing_files_answer_404(self, tmp_path: Path) -> None:
        async def main() -> None:
            for folder in (tmp_path / "absent", tmp_path):
                router = make_router(Hub(), folder)
                async with tether.serve(router, "127.0.0.1", 0) as server:
                    for path in ("/", "/tether.js", "/app.js"):
                        status, _, _ = await raw_request(server.port_number, get(path))
                        assert status == 404

        run(main())

    def test_default_static_folder(self) -> None:
        """The package's own page: served when its files are there (another change adds
        them), 404 otherwise."""

        async def main() -> None:
            async with tether.serve(make_router(Hub()), "127.0.0.1", 0) as server:
                for path, name in (("/", "index.html"), ("/tether.js", "tether.js")):
                    status, _, body = await raw_request(server.port_number, get(path))
                    if (STATIC_DIR / name).is_file():
                        assert (status, body) == (200, (STATIC_DIR / name).read_bytes())
                    else:
                        assert status == 404

        run(main())


class TestAuthCheck:
    """``GET /auth-check``: what the page asks when its socket closed without opening. The
    server's own ``authenticate`` answers, so it says exactly what the handshake would."""

    def test_answers_with_the_servers_authenticate(self, static: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
        tokens = tmp_path / "tokens"
        tokens.write_text("t-named dave\n")
        from_file = tether.TokenAuth.from_file(tokens)
        bare = tether.TokenAuth(["s3cret"])
        calls: list[str] = []

        def authenticate(request: Any) -> Any:
            calls.append(request.path)
            return from_file(request) or bare(request)

        async def main() -> None:
            hub = Hub()
            router = make_router(hub, static, authenticate=authenticate)
            async with tether.serve(router, "127.0.0.1", 0, authenticate=authenticate) as server:
                port = server.port_number
                for token in ("s3cret", "t-named"):
                    status, headers, body = await raw_request(port, get(
                        "/auth-check", "GET", f"Authorization: Bearer {token}"))
                    assert (status, body) == (204, b""), token
                    assert headers["cache-control"] == "no-store"
                for headers_sent in ([], ["Authorization: Bearer s3cre"],
                                     ["Authorization: Bearer s3cret-and-more"],
                                     ["Authorization: Basic s3cret"]):
                    status, headers, body = await raw_request(port, get(
                        "/auth-check", "GET", *headers_sent))
                    assert status == 401, headers_sent
                    assert headers["www-authenticate"] == "Bearer"
                    assert headers["cache-control"] == "no-store"
                    assert b"s3cre" not in body
                # What the handshake answers to the same tokens.
                ws_url = f"ws://127.0.0.1:{port}/ws"
                async with tether.connect(ws_url, headers={"Authorization": "Bearer s3cret"}):
                    pass
                with pytest.raises(tether.InvalidStatus) as refused:
                    await tether.connect(ws_url, headers={"Authorization": "Bearer s3cre"})
                assert refused.value.response.status == 401
                # GET and HEAD only: a cross-site fetch() with an Authorization header needs a
                # preflight (OPTIONS), which fails here, so it is never sent.
                for method in ("OPTIONS", "POST"):
                    status, headers, _ = await raw_request(port, get("/auth-check", method))
                    assert status == 405 and headers["allow"] == "GET, HEAD"
                    assert "access-control-allow-origin" not in headers
                status, _, body = await raw_request(port, get(
                    "/auth-check", "HEAD", "Authorization: Bearer s3cret"))
                assert (status, body) == (204, b"")
            await hub.close()

        with caplog.at_level("DEBUG"):
            run(main())
        assert calls.count("/auth-check") == 7 and calls.count("/ws") == 2
        assert "path=/auth-check status=401" in caplog.text
        assert "s3cre" not in caplog.text and "t-named" not in caplog.text

    def test_async_authenticate(self, static: Path) -> None:
        async def authenticate(request: Any) -> Any:
            await asyncio.sleep(0)
            return "ok" if request.headers.get("Authorization") == "Bearer good" else None

        async def main() -> None:
            hub = Hub()
            router = make_router(hub, static, authenticate=authenticate)
            async with tether.serve(router, "127.0.0.1", 0, authenticate=authenticate) as server:
                port = server.port_number
                good = get("/auth-check", "GET", "Authorization: Bearer good")
                assert (await raw_request(port, good))[0] == 204
                assert (await raw_request(port, get("/auth-check")))[0] == 401
            await hub.close()

        run(main())

    def test_absent_without_authenticate(self, static: Path) -> None:
        """A router that was not given the server's authenticate cannot tell: no route (the
        page then guesses from the failed connections)."""

        async def main() -> None:
            hub = Hub()
            async with tether.serve(make_router(hub, static), "127.0.0.1", 0) as server:
                assert (await raw_request(server.port_number, get("/auth-check")))[0] == 404
            await hub.close()

        run(main())


async def frames(ws: tether.WebSocket, count: int) -> list[dict[str, Any]]:
    return [json.loads(await asyncio.wait_for(ws.recv(), 20 * UNIT)) for _ in range(count)]


class TestChatSocket:
    def test_smoke(self, static: Path) -> None:
        """Connect, join a room, publish, see it, close 1000."""

        async def main() -> None:
            hub = Hub()
            async with tether.serve(make_router(hub, static), "127.0.0.1", 0) as server:
                url = f"ws://127.0.0.1:{server.port_number}/ws?name=%20Alice%0A"
                async with tether.connect(url) as ws:
                    [welcome] = await frames(ws, 1)
                    assert welcome["type"] == "direct" and welcome["sender"] is None
                    assert welcome["data"] == {"chat": "welcome", "name": "Alice",
                                               "max_frame": 65536}
                    await ws.send(json.dumps({"type": "subscribe", "topic": "general"}))
                    subscribed, presence = await frames(ws, 2)
                    assert subscribed["type"] == "subscribed"
                    assert presence["members"] == ["Alice"]
                    await ws.send(json.dumps({"type": "publish", "topic": "general",
                                              "data": {"text": "hi"}, "id": "1"}))
                    message, ack = sorted(await frames(ws, 2), key=lambda f: f["type"] == "ack")
                    assert (message["sender"], message["data"]) == ("Alice", {"text": "hi"})
                    assert ack == {"type": "ack", "id": "1", "topic": "general", "seq": 1}
                assert ws.close_code == 1000
            await hub.close()

        run(main())

    def test_name_from_authentication(self, static: Path) -> None:
        async def main() -> None:
            hub = Hub()
            auth = tether.TokenAuth({"s3cret": "carol"})
            router = make_router(hub, static)
            async with tether.serve(router, "127.0.0.1", 0, authenticate=auth) as server:
                base = f"ws://127.0.0.1:{server.port_number}/ws"
                with pytest.raises(tether.InvalidStatus):
                    await tether.connect(base + "?name=mallory")
                async with tether.connect(base + "?token=s3cret&name=mallory") as ws:
                    [welcome] = await frames(ws, 1)
                    assert welcome["data"] == {"chat": "welcome", "name": "carol",
                                               "max_frame": 65536}
                    await ws.send(json.dumps({"type": "subscribe", "topic": "t"}))
                    _, presence = await frames(ws, 2)
                    assert presence["members"] == ["carol"]
            await hub.close()

        run(main())

    def test_picked_name_with_a_token_without_one(self, static: Path, tmp_path: Path) -> None:
        """`--token` and token-file lines without NAME: the token lets the user in, and the
        name is the one picked on the page (?name=)."""
        tokens = tmp_path / "tokens"
        tokens.write_text("t-named dave\nt-bare\n")
        from_file = tether.TokenAuth.from_file(tokens)
        bare = tether.TokenAuth(["s3cret"])

        async def main() -> None:
            hub = Hub()
            router = make_router(hub, static)
            async with tether.serve(router, "127.0.0.1", 0,
                                    authenticate=lambda r: from_file(r) or bare(r)) as server:
                base = f"ws://127.0.0.1:{server.port_number}/ws?name=alice"
                for token, name in [("s3cret", "alice"), ("t-bare", "alice"),
                                    ("t-named", "dave")]:
                    async with tether.connect(base, subprotocols=[f"bearer.{token}"]) as ws:
                        assert ws.subprotocol is None  # offered, never selected
                        [welcome] = await frames(ws, 1)
                        assert welcome["data"]["name"] == name, token
                        await ws.send(json.dumps({"type": "subscribe", "topic": "t"}))
                        _, presence = await frames(ws, 2)
                        assert presence["members"] == [name]
            await hub.close()

        run(main())

    def test_anonymous_without_a_name(self, static: Path) -> None:
        async def main() -> None:
            hub = Hub()
            async with tether.serve(make_router(hub, static), "127.0.0.1", 0) as server:
                async with tether.connect(f"ws://127.0.0.1:{server.port_number}/ws") as ws:
                    await ws.send(json.dumps({"type": "subscribe", "topic": "t"}))
                    _, _, presence = await frames(ws, 3)
                    assert presence["members"] == ["anonymous"]
            await hub.close()

        run(main())
