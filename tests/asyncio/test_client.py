"""The asyncio client on loopback: errors a caller can act on, interop with websockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

import tether

from .conftest import UNIT, run


class TestErrors:
    def test_invalid_uri(self) -> None:
        async def main() -> None:
            for uri in ["http://x/", "ws://", "ws://host/#frag", "ws://host:99999/"]:
                with pytest.raises(tether.InvalidURI):
                    await tether.connect(uri)

        run(main())

    def test_connection_refused(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # free, nobody listening once closed

        async def main() -> None:
            with pytest.raises(OSError):
                await tether.connect(f"ws://127.0.0.1:{port}")

        run(main())

    def test_non_101_status_and_body_available(self) -> None:
        async def http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nnot for u\n")
            await writer.drain()
            writer.close()

        async def main() -> None:
            server = await asyncio.start_server(http_server, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(tether.InvalidStatus) as info:
                await tether.connect(f"ws://127.0.0.1:{port}")
            assert info.value.response.status == 403
            assert info.value.response.body == b"not for u\n"
            assert "403" in str(info.value)
            server.close()

        run(main())

    def test_open_timeout(self) -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(1000)

        async def main() -> None:
            server = await asyncio.start_server(silent, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(TimeoutError) as info:
                await tether.connect(f"ws://bob:pa55word@127.0.0.1:{port}/x?token=SUPERSECRET",
                                     open_timeout=3 * UNIT)
            # Where, without the secrets: no query, no user:password.
            assert str(info.value) == f"timed out opening ws://127.0.0.1:{port}/x"
            server.close()

        run(main())

    def test_open_timeout_closes_the_socket(self) -> None:
        """A server that accepts and never answers the upgrade: after the timeout, the client
        has closed its socket (the server reads EOF), not left it open."""
        seen_eof: list[bool] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # the upgrade request, never answered
            try:
                seen_eof.append(await asyncio.wait_for(reader.read(), 30 * UNIT) == b"")
            except (asyncio.TimeoutError, ConnectionError):
                seen_eof.append(False)
            writer.close()

        async def main() -> None:
            server = await asyncio.start_server(silent, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(TimeoutError):
                await tether.connect(f"ws://127.0.0.1:{port}/", open_timeout=3 * UNIT)
            for _ in range(100):
                if seen_eof:
                    break
                await asyncio.sleep(UNIT / 5)
            assert seen_eof == [True]
            server.close()

        run(main())

    def test_invalid_uri_messages_hold_no_secrets(self) -> None:
        from tether.exceptions import InvalidURI
        from tether.protocol.client import parse_uri

        for uri in ["http://u:pw@host/?token=SECRET", "ws://u:pw@:80/?token=SECRET",
                    "ws://host/path?token=SECRET#frag", "ws://host:99999/?token=SECRET"]:
            with pytest.raises(InvalidURI) as info:
                parse_uri(uri)
            assert "SECRET" not in str(info.value) and "pw" not in str(info.value), uri


class TestInterop:
    """tether's client against the websockets library's server."""

    @pytest.mark.parametrize("compression", ["deflate", None])
    def test_websockets_server(self, compression: str | None) -> None:
        websockets_server = pytest.importorskip("websockets.asyncio.server")

        async def echo(ws: object) -> None:
            async for message in ws:  # type: ignore[attr-defined]
                await ws.send(message)  # type: ignore[attr-defined]

        async def main() -> None:
            async with websockets_server.serve(
                echo, "127.0.0.1", 0, compression=compression, subprotocols=["p1"]
            ) as server:
                port = server.sockets[0].getsockname()[1]
                async with tether.connect(
                    f"ws://127.0.0.1:{port}", compression=compression, subprotocols=["p1"]
                ) as ws:
                    assert ws.subprotocol == "p1"
                    assert ws.extensions.startswith("permessage-deflate") == bool(compression)
                    for message in ["hello", b"\x00" * 100_000, "é" * 70_000]:
                        await ws.send(message)
                        assert await ws.recv() == message
                    assert await ws.ping() < 50 * UNIT
                assert ws.close_code == 1000

        run(main())
