"""The admin page in Chromium: `tether chat --admin-token` in a subprocess, as an operator
opens it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import ChatServer, Pages, free_port
from .test_chat_browser import time_limit  # noqa: F401  (the same hard bound per test)

TOKEN = "admin-7f3a9c1d"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "admin.png"


@pytest.fixture
def admin_chat(tmp_path: Path) -> Iterator[ChatServer]:
    server = ChatServer(free_port(), tmp_path / "data", tmp_path / "server.log",
                        options=["--admin-token", TOKEN])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_admin(pages: Pages, server: ChatServer, token: str | None = TOKEN) -> Page:
    page = pages.new_page(1200, 900)
    page.goto(f"{server.url}/admin" + (f"#token={token}" if token else ""))
    return page


def test_numbers_move_kick_and_disconnect(admin_chat: ChatServer, pages: Pages) -> None:
    admin = open_admin(pages, admin_chat)
    expect(admin.locator("#status")).to_have_text("live")
    assert "#token" not in admin.url  # taken out of the address at once
    assert TOKEN not in admin.content()
    expect(admin.locator("#connections")).to_have_text("1")  # the admin page itself

    alice = pages.open_chat(admin_chat, "alice")
    alice.get_by_test_id("message-input").fill("hello from alice")
    alice.get_by_test_id("send-button").click()
    expect(admin.locator("#connections")).to_have_text("2")
    expect(admin.locator("#topics tbody tr")).to_have_count(1)
    expect(admin.locator("#topics tbody td").first).to_have_text("general")
    expect(admin.locator("#topics .member")).to_have_text(re.compile("alice"))
    # Her subscribe and her publish (strict CSP: no wait_for_function, which evals).
    expect(admin.locator("#total-in")).to_have_text(re.compile(r"^([2-9]|\d{2,})$"))
    # The charts draw a line per series.
    expect(admin.locator("#chart-messages polyline")).to_have_count(2)
    admin.screenshot(path=str(SCREENSHOT))

    admin.locator("#topics .member button").click()
    expect(admin.locator("#result")).to_have_text("alice removed from general (1 connection)")
    expect(alice.get_by_test_id("notice")).to_have_text(
        "An administrator removed you from this room. Select it again to rejoin.")
    expect(admin.locator("#topics tbody tr")).to_have_count(0)

    admin.fill("#close-code", "4001")
    admin.fill("#close-reason", "closed by the test")
    row = admin.locator("#slowest tbody tr", has_not_text="this page")
    row.locator("button").click()
    expect(admin.locator("#result")).to_have_text(re.compile(r"^closing 127\.0\.0\.1:\d+ with 4001$"))
    expect(admin.locator("#closes tbody tr", has_text="4001")).to_have_count(1)


def test_without_a_token_it_asks_and_refuses_a_wrong_one(admin_chat: ChatServer,
                                                          pages: Pages) -> None:
    page = open_admin(pages, admin_chat, token=None)
    response = page.request.get(f"{admin_chat.url}/admin")
    assert response.status == 401
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    page.fill("#token", "not-the-token")
    page.click("#login button")
    expect(page.locator("#login-message")).to_have_text("That token was refused.")
    page.fill("#token", TOKEN)
    page.click("#login button")
    expect(page.locator("#status")).to_have_text("live")
    expect(page.locator("#main")).to_be_visible()
    assert TOKEN not in page.content()


def test_readonly_hides_the_actions(tmp_path: Path, pages: Pages) -> None:
    server = ChatServer(free_port(), tmp_path / "data", tmp_path / "server.log",
                        options=["--admin-token", TOKEN, "--admin-readonly"])
    server.start()
    try:
        pages.open_chat(server, "bob")
        admin = open_admin(pages, server)
        expect(admin.locator("#mode")).to_be_visible()
        expect(admin.locator("#topics .member")).to_have_text(re.compile("bob"))
        expect(admin.locator("#slowest tbody tr")).to_have_count(2)
        expect(admin.locator("#slowest button").first).to_be_hidden()
        expect(admin.locator("#topics .member button")).to_be_hidden()
        expect(admin.locator("#close-code")).to_be_hidden()
    finally:
        server.stop()
