"""`tether broadcast --token` in a real browser: the built-in page authenticates with a token
from its own address, and explains a refusal without one."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from .conftest import START_TIMEOUT, STOP_TIMEOUT, free_port

TOKEN = "b-r0adcast_T0ken"


@pytest.fixture
def broadcast_url(tmp_path: Path) -> Iterator[str]:
    """`tether broadcast --token TOKEN` on a free port; its page's URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tether", "broadcast", "--port", str(port), "--token", TOKEN],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(url + "/", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(STOP_TIMEOUT)
    assert TOKEN not in log_path.read_text()  # the server never logs it


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[str], Page]]:
    """Opens a URL in a new browser context (its own sessionStorage), closed afterwards."""
    contexts: list[BrowserContext] = []

    def open_page(url: str) -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.mark.parametrize("where", ["fragment", "query"])
def test_page_authenticates_with_the_token_in_its_address(
    open_page: Callable[[str], Page], broadcast_url: str, where: str
) -> None:
    address = f"{broadcast_url}/#token={TOKEN}" if where == "fragment" else (
        f"{broadcast_url}/?token={TOKEN}")
    alice = open_page(address)
    expect(alice.locator("#state")).to_have_text("open")
    assert TOKEN not in alice.url  # out of the address bar at once
    bob = open_page(f"{broadcast_url}/#token={TOKEN}")
    expect(bob.locator("#state")).to_have_text("open")
    alice.locator("#text").fill("hello with a token")
    alice.locator("#text").press("Enter")
    for page in (alice, bob):
        expect(page.locator("#log li")).to_have_text(["hello with a token"])
    alice.reload()  # kept for the tab: a reload connects again
    expect(alice.locator("#state")).to_have_text("open")
    assert TOKEN not in alice.url


def test_page_without_a_token_says_how_to_pass_one(
    open_page: Callable[[str], Page], broadcast_url: str
) -> None:
    page = open_page(broadcast_url + "/")
    expect(page.locator("#state")).to_have_text("closed")
    expect(page.locator("#log li").last).to_contain_text("/#token=TOKEN")
