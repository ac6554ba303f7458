"""The client through an HTTP CONNECT proxy, and TLS options (wss://, with trustme's CA)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import tether
from tether.asyncio.client import is_retryable
from tether.asyncio.proxy import (
    ProxyURI,
    connect_request,
    parse_connect_response,
    parse_proxy_uri,
)
from tether.exceptions import HandshakeError, ProxyError

from .conftest import UNIT, echo, run, serving, silent_server


class ConnectProxy:
    """A tiny HTTP proxy that only does CONNECT: checks Proxy-Authorization when given
    credentials, connects to the target and pipes both ways (half-closes included).

    Args:
        credentials: "user:password" the client must send, or None for an open proxy.
        answer: a raw answer to send instead of opening the tunnel (to test refusals).
    """

    def __init__(self, credentials: str | None = None, answer: bytes | None = None) -> None:
        self.credentials = credentials
        self.answer = answer
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.tunnels = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            self.requests.append((lines[0], headers))
            if self.answer is not None:
                writer.write(self.answer)
                return
            method, target, _ = lines[0].split(" ")
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            if self.credentials is not None:
                expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
                if headers.get("proxy-authorization") != expected:
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\n'
                        b"Content-Length: 13\r\n\r\nwho are you?\n"
                    )
                    return
            host, _, port = target.rpartition(":")
            try:
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels += 1
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            up_writer.close()
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Listen on loopback; yield the proxy's host:port."""
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        try:
            yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()
            await server.wait_closed()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


# -- TLS material: a CA and a certificate for 127.0.0.1 and localhost ----------------------


@pytest.fixture(scope="module")
def ca() -> Any:
    trustme = pytest.importorskip("trustme")  # a test dependency
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def serving_tls(context: ssl.SSLContext) -> AsyncIterator[str]:
    async with serving(echo, ssl=context) as (server, _):
        yield f"wss://127.0.0.1:{server.port_number}"


async def roundtrip(ws: tether.WebSocket) -> None:
    for message in ["hello", b"\x00\xff" * 40_000]:
        await ws.send(message)
        assert await ws.recv() == message


class TestProxyURI:
    def test_parse(self) -> None:
        assert parse_proxy_uri("http://proxy.example") == ProxyURI("proxy.example", 80)
        assert parse_proxy_uri("http://u%40x:p%3Aw@[::1]:3128/") == ProxyURI(
            "::1", 3128, "u@x", "p:w"
        )

    @pytest.mark.parametrize(
        "uri",
        ["https://p:3128", "socks5://p:1080", "p:3128", "http://", "http://p:99999",
         "http://p:3128/path", "http://p:3128?q"],
    )
    def test_invalid(self, uri: str) -> None:
        with pytest.raises(tether.InvalidURI, match="proxy"):
            parse_proxy_uri(uri)

    def test_connect_request(self) -> None:
        assert connect_request(ProxyURI("p", 1), "example.com", 443) == (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        )
        assert connect_request(ProxyURI("p", 1, "al", "pw"), "::1", 80) == (
            b"CONNECT [::1]:80 HTTP/1.1\r\nHost: [::1]:80\r\n"
            b"Proxy-Authorization: Basic YWw6cHc=\r\n\r\n"
        )

    def test_parse_response(self) -> None:
        response = parse_connect_response(b"HTTP/1.0 200 Connection established\r\nVia: x\r\n\r\n")
        assert (response.status, response.reason, response.headers.get("via")) == (
            200, "Connection established", "x"
        )
        for head in [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", b"HTTP/1.1 200 OK\r\n x: y\r\n\r\n"]:
            with pytest.raises(ProxyError) as info:
                parse_connect_response(head)
            assert info.value.response is None


class TestProxy:
    def test_ws_through_proxy_with_credentials(self) -> None:
        proxy = ConnectProxy(credentials="us@er:p:ss")

        async def main() -> None:
            async with serving() as (server, uri), proxy.running() as address:
                url = f"http://us%40er:p%3Ass@{address}"
                async with tether.connect(uri, proxy=url) as ws:
                    await roundtrip(ws)
                assert ws.close_code == 1000

        run(main())
        [(line, headers)] = proxy.requests
        port = line.split(":")[1].split(" ")[0]
        assert line == f"CONNECT 127.0.0.1:{port} HTTP/1.1"
        assert headers["host"] == f"127.0.0.1:{port}"
        assert proxy.tunnels == 1

    def test_open_proxy_sends_no_credentials(self) -> None:
        proxy = ConnectProxy()

        async def main() -> None:
            async with serving() as (_, uri), proxy.running() as address:
                async with tether.connect(uri, proxy=f"http://{address}") as ws:
                    await roundtrip(ws)

        run(main())
        [(_, headers)] = proxy.requests
        assert "proxy-authorization" not in headers

    @pytest.mark.parametrize(
        ("userinfo", "hint"),
        [("us%40er:wrong@", "bad credentials"), ("", "the proxy URL has no credentials")],
    )
    def test_bad_credentials(self, userinfo: str, hint: str) -> None:
        proxy = ConnectProxy(credentials="us@er:p:ss")

        async def main() -> None:
            async with serving() as (_, uri), proxy.running() as address:
                with pytest.raises(ProxyError) as info:
                    await tether.connect(uri, proxy=f"http://{userinfo}{address}")
                error = info.value
                assert isinstance(error, HandshakeError)
                assert error.response is not None and error.response.status == 407
                assert error.response.headers.get("Proxy-Authenticate") == 'Basic realm="test"'
                assert "407 Proxy Authentication Required" in str(error)
                assert hint in str(error)
                assert "wrong" not in str(error)  # no password in messages

        run(main())

    @pytest.mark.parametrize(
        ("answer", "status", "retried"),
        [
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 403, False),
            (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", 503, True),
            (b"HTTP/1.1 200 OK\r\n\r\nsurprise", None, True),
            (b"\x00\x01garbage\r\n\r\n", None, True),
            (b"", None, True),  # closed without answering
            (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000, None, True),  # header block too big
        ],
    )
    def test_proxy_refusing(self, answer: bytes, status: int | None, retried: bool) -> None:
        proxy = ConnectProxy(answer=answer)

        async def main() -> None:
            async with serving() as (_, uri), proxy.running() as address:
                with pytest.raises(ProxyError) as info:
                    await tether.connect(uri, proxy=f"http://{address}")
                if status is None:
                    if answer.startswith(b"HTTP/1.1 200 OK\r\n\r\n"):
                        assert "sent data after its 200" in str(info.value)
                else:
                    assert info.value.response is not None
                    assert info.value.response.status == status
                    assert info.value.status_hint == status
                    assert f"HTTP {status}" in str(info.value)
                assert is_retryable(info.value) == retried

        run(main())

    def test_target_unreachable_is_502_and_retried(self) -> None:
        proxy = ConnectProxy()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        calls: list[tuple[int, float, Exception]] = []

        async def main() -> None:
            async with proxy.running() as address:

                def on_reconnect(attempt: int, delay: float, cause: Exception) -> None:
                    calls.append((attempt, delay, cause))
                    if attempt == 2:
                        raise RuntimeError("stop")

                with pytest.raises(RuntimeError):
                    async for _ in tether.connect(
                        f"ws://127.0.0.1:{port}", proxy=f"http://{address}",
                        on_reconnect=on_reconnect, backoff_initial=UNIT, backoff_max=UNIT,
                    ):
                        pytest.fail("nobody listens behind the proxy")

        run(main())
        assert [attempt for attempt, _, _ in calls] == [1, 2]
        for _, _, cause in calls:
            assert isinstance(cause, ProxyError) and cause.response is not None
            assert cause.response.status == 502

    def test_407_not_retried(self) -> None:
        proxy = ConnectProxy(credentials="a:b")

        async def main() -> None:
            async with serving() as (_, uri), proxy.running() as address:
                with pytest.raises(ProxyError):
                    async for _ in tether.connect(
                        uri, proxy=f"http://{address}", backoff_initial=UNIT
                    ):
                        pytest.fail("no credentials")

        run(main())
        assert len(proxy.requests) == 1

    def test_proxy_unreachable(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]

        async def main() -> None:
            async with serving() as (_, uri):
                with pytest.raises(ConnectionRefusedError):
                    await tether.connect(uri, proxy=f"http://127.0.0.1:{port}")

        run(main())

    def test_proxy_silent_times_out(self) -> None:
        async def main() -> None:
            server, port = await silent_server()
            with pytest.raises(TimeoutError):
                await tether.connect(
                    "ws://127.0.0.1:1/", proxy=f"http://127.0.0.1:{port}", open_timeout=2 * UNIT
                )
            server.close()
            await server.wait_closed()

        run(main())


class TestTLS:
    def test_wss_direct(self, server_context: ssl.SSLContext,
                        client_context: ssl.SSLContext) -> None:
        async def main() -> None:
            async with serving_tls(server_context) as uri:
                async with tether.connect(uri, ssl=client_context) as ws:
                    await roundtrip(ws)
                # server_hostname picks the name the certificate is checked against
                uri = uri.replace("127.0.0.1", "localhost")
                async with tether.connect(uri, ssl=client_context) as ws:
                    await roundtrip(ws)

        run(main())

    def test_wss_through_proxy(self, server_context: ssl.SSLContext,
                               client_context: ssl.SSLContext) -> None:
        proxy = ConnectProxy(credentials="u:p")

        async def main() -> None:
            async with serving_tls(server_context) as uri, proxy.running() as address:
                async with tether.connect(uri, ssl=client_context,
                                          proxy=f"http://u:p@{address}") as ws:
                    await roundtrip(ws)
                assert ws.close_code == 1000

        run(main())
        assert proxy.tunnels == 1

    def test_insecure_context(self, server_context: ssl.SSLContext) -> None:
        """What `tether connect --insecure` builds: no hostname check, no verification."""
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        proxy = ConnectProxy()

        async def main() -> None:
            async with serving_tls(server_context) as uri, proxy.running() as address:
                async with tether.connect(uri, ssl=insecure) as ws:
                    await roundtrip(ws)
                async with tether.connect(uri, ssl=insecure, proxy=f"http://{address}") as ws:
                    await roundtrip(ws)

        run(main())

    def test_unknown_ca_fails_and_is_not_retried(self, server_context: ssl.SSLContext) -> None:
        calls: list[Any] = []

        async def main() -> None:
            async with serving_tls(server_context) as uri:
                with pytest.raises(ssl.SSLCertVerificationError):
                    await tether.connect(uri)  # the system's trust store: not our CA
                with pytest.raises(ssl.SSLCertVerificationError):
                    async for _ in tether.connect(
                        uri, on_reconnect=lambda *args: calls.append(args), backoff_initial=UNIT
                    ):
                        pytest.fail("untrusted certificate")

        run(main())
        assert calls == []

    def test_hostname_mismatch_not_retried(self, ca: Any, client_context: ssl.SSLContext) -> None:
        other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("other.example").configure_cert(other)

        async def main() -> None:
            async with serving_tls(other) as uri:
                with pytest.raises(ssl.SSLCertVerificationError):
                    async for _ in tether.connect(uri, ssl=client_context, backoff_initial=UNIT):
                        pytest.fail("wrong name")

        run(main())

    def test_tls_options_on_ws_uri_refused(self, client_context: ssl.SSLContext) -> None:
        async def main() -> None:
            with pytest.raises(tether.InvalidURI, match="wss://"):
                await tether.connect("ws://127.0.0.1:1/", ssl=client_context)

        run(main())

