"""`tether chat`'s same-origin default as the command line sets it up (OriginPolicy.same_origin,
tested on its own in tests/test_auth.py): an IPv6 loopback bind, a host name bind (the Host
header decides), --allow-origin adding to the default; and the startup log's page URL.
Everything listens on loopback."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import ChatServer, Pages, free_port


def upgrade_status(server: ChatServer, origin: str, host: str | None = None) -> int:
    """The status the chat answers to a WebSocket upgrade with this Origin and Host."""
    host = host or server.url.partition("://")[2]
    request = (
        f"GET /ws?name=probe HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    )
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(request.encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


@pytest.fixture
def start_chat(tmp_path: Path) -> Iterator[Callable[..., ChatServer]]:
    """Starts `tether chat` servers (stopped at the end): start_chat(host=…, options=[…])."""
    servers: list[ChatServer] = []

    def start(host: str = "127.0.0.1", options: list[str] | None = None) -> ChatServer:
        n = len(servers)
        server = ChatServer(free_port(), tmp_path / f"data{n}", tmp_path / f"server{n}.log",
                            options or [], host=host)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def test_ipv6_loopback(start_chat: Callable[..., ChatServer], pages: Pages) -> None:
    server = start_chat(host="::1")
    assert server.url.startswith("http://[::1]:")
    alice = pages.open_chat(server, "alice")  # the page at http://[::1]:P/ opens its socket
    expect(alice.get_by_test_id("state")).to_have_attribute("data-state", "online")
    assert upgrade_status(server, server.url) == 101
    assert upgrade_status(server, f"http://localhost:{server.port}") == 101
    assert upgrade_status(server, f"http://127.0.0.1:{server.port + 1}") == 403
    assert upgrade_status(server, "http://evil.example") == 403
    assert f"page=http://[::1]:{server.port}/" in server.log_path.read_text()


def test_allow_origin_adds_to_the_default(
    start_chat: Callable[..., ChatServer], pages: Pages
) -> None:
    server = start_chat(options=["--allow-origin", "https://app.example.com",
                                 "--allow-origin", "https://*.example.org"])
    pages.open_chat(server, "alice")  # its own page still works
    assert upgrade_status(server, server.url) == 101
    assert upgrade_status(server, f"http://localhost:{server.port}") == 101
    assert upgrade_status(server, "https://app.example.com") == 101
    assert upgrade_status(server, "https://chat.example.org") == 101
    assert upgrade_status(server, "https://evil.example") == 403


def test_named_bind_accepts_the_host_it_was_asked_for(
    start_chat: Callable[..., ChatServer], pages: Pages
) -> None:
    """--host NAME (here this machine's name, which must resolve to loopback): the page at
    http://NAME:P/ works, and so does any Origin equal to the Host header, as it is for a
    browser that reached the server under another name or address; other origins do not."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        addresses = set()
    if not addresses or not all(str(a).startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"the host name {name!r} does not resolve to loopback only: {addresses}")
    server = start_chat(host=name)
    alice = pages.open_chat(server, "alice")
    assert alice.url.startswith(f"http://{name}:{server.port}/")
    port = server.port
    assert upgrade_status(server, f"http://{name}:{port}") == 101
    assert upgrade_status(server, f"http://127.0.0.1:{port}", f"127.0.0.1:{port}") == 101
    assert upgrade_status(server, f"http://chat.lan:{port}", f"chat.lan:{port}") == 101
    assert upgrade_status(server, f"http://evil.example:{port}", f"{name}:{port}") == 403
    assert upgrade_status(server, f"http://{name}:{port + 1}", f"{name}:{port}") == 403
    assert upgrade_status(server, "null", f"{name}:{port}") == 403


def test_startup_log_shows_the_page_to_open(start_chat: Callable[..., ChatServer]) -> None:
    server = start_chat()
    log = server.log_path.read_text()
    assert f"url=ws://127.0.0.1:{server.port} page=http://127.0.0.1:{server.port}/" in log
