"""The chat page on a server that needs a token, opened without it (issue 14, finding 6): the
page says so and asks for the token, refuses a wrong one with a clear message, and connects
with the right one. Headless Chromium, as in test_chat_browser.py.

A browser never learns why a WebSocket did not open (a 401 looks like a server that is down),
so the page asks the server's ``/auth-check`` (the server's own ``authenticate``, given to
``make_router``) and, where there is none, guesses from connections that fail while the server
answers HTTP. Two servers, one test: ``tether chat --token`` (the command line), and an
application that serves ``make_router(hub, authenticate=auth)`` itself, which has
``/auth-check``.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import ChatServer, Pages, free_port
from .test_chat_browser import (  # noqa: F401  (time_limit: autouse, applies here too)
    RECONNECT_TIMEOUT_MS,
    TOKEN,
    expect_members,
    expect_state,
    send,
    time_limit,
)

WRONG = "not-the-t0ken"

# The chat as an application serves it with make_router(..., authenticate=auth): the same
# TokenAuth for the handshake and for /auth-check. Stops on SIGTERM like `tether chat`.
APPLICATION = """
import asyncio, logging, signal, sys
from pathlib import Path
import tether
from tether.apps.chat.server import make_router, open_chat_backend
from tether.auth import OriginPolicy, TokenAuth
from tether.hub import Hub

async def main(port: int, data: str, token: str) -> None:
    auth = TokenAuth([token])
    hub = Hub(open_chat_backend(Path(data)))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with tether.serve(make_router(hub, authenticate=auth), "127.0.0.1", port,
                            authenticate=auth,
                            allowed_origins=OriginPolicy.same_origin("127.0.0.1", port)):
        await stop.wait()
    await hub.close()

logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""


class ApplicationServer(ChatServer):
    """The chat served by APPLICATION: options are [TOKEN]."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", APPLICATION, str(self.port), str(self.data_dir),
                *self.options]


@pytest.fixture(params=["tether-chat", "application"])
def locked_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatServer]:
    """A chat server that needs TOKEN: `tether chat --token TOKEN`, or APPLICATION."""
    kind = ChatServer if request.param == "tether-chat" else ApplicationServer
    options = ["--token", TOKEN] if request.param == "tether-chat" else [TOKEN]
    server = kind(free_port(), tmp_path / "data", tmp_path / "server.log", options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def has_auth_check(server: ChatServer) -> bool:
    """Whether the server answers /auth-check (401 without a token) rather than 404."""
    try:
        urllib.request.urlopen(server.url + "/auth-check", timeout=5)
    except urllib.error.HTTPError as error:
        return error.code == 401
    return False


def submit_token(page: Page, token: str) -> None:
    page.get_by_test_id("token-prompt-input").fill(token)
    page.get_by_test_id("token-prompt-submit").click()


def test_page_without_the_token_asks_for_it(locked_server: ChatServer, pages: Pages) -> None:
    page = pages.new_page()
    socket_urls: list[str] = []
    checks: list[str | None] = []  # the Authorization header of each /auth-check request
    page.on("websocket", lambda ws: socket_urls.append(ws.url))
    page.on("request", lambda request: checks.append(request.headers.get("authorization"))
            if request.url.endswith("/auth-check") else None)
    page.goto(f"{locked_server.url}/#general")  # no #token=
    page.get_by_test_id("name-input").fill("alice")
    page.get_by_test_id("name-submit").click()

    # Not "reconnecting…" forever: the page says a token is needed, and asks for it.
    prompt = page.get_by_test_id("token-prompt")
    expect(prompt).to_be_visible()
    expect(page.get_by_test_id("token-prompt-text")).to_contain_text("access token")
    expect_state(page, "token-needed")
    expect(page.get_by_test_id("state")).to_have_text("token needed")
    expect(page.get_by_test_id("token-prompt-input")).to_be_focused()
    expect(page.get_by_test_id("member")).to_have_count(0)

    # A wrong token: refused, and said so clearly.
    submit_token(page, WRONG)
    expect(page.get_by_test_id("token-prompt-text")).to_contain_text(
        "Token refused", timeout=RECONNECT_TIMEOUT_MS)
    expect_state(page, "token-refused")
    expect(prompt).to_be_visible()

    # The right one: online, the prompt gone, chatting.
    submit_token(page, TOKEN)
    expect_state(page, "online")
    expect(prompt).to_be_hidden()
    expect_members(page, "alice")
    send(page, "in at last")
    expect(page.locator("[data-testid=message][data-seq='1'] .text")).to_have_text("in at last")

    # The token is never shown (the field is a password field, emptied once it worked) ...
    assert TOKEN not in page.inner_text("body") and WRONG not in page.inner_text("body")
    expect(page.get_by_test_id("token-prompt-input")).to_have_value("")
    # ... and remembered, like a token from the URL: a reload goes straight back online.
    page.reload()
    expect_state(page, "online")
    expect(prompt).to_be_hidden()
    expect(page.get_by_test_id("message")).to_have_count(1)

    if has_auth_check(locked_server):
        # Asked in a header, never in a URL; a refused token was never tried on the socket.
        assert checks[0] is None and f"Bearer {WRONG}" in checks, checks
        assert not any(WRONG in url for url in socket_urls), socket_urls
    log = locked_server.log()
    assert "status=401" in log
    assert TOKEN not in log and WRONG not in log, "a token reached the server's log"


def test_server_down_is_not_a_token_problem(chat_server: ChatServer, pages: Pages) -> None:
    """A server without a token that stops: "reconnecting…", never the token prompt."""
    page = pages.open_chat(chat_server, "alice")
    chat_server.stop()
    expect_state(page, "reconnecting")
    page.wait_for_timeout(3000)  # several failed attempts (backoff from 0.5 s)
    expect_state(page, "reconnecting")
    expect(page.get_by_test_id("token-prompt")).to_be_hidden()
    chat_server.start()
    expect_state(page, "online", timeout=RECONNECT_TIMEOUT_MS)
    expect(page.get_by_test_id("token-prompt")).to_be_hidden()
