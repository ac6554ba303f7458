"""Browser fixtures: Debian's Chromium driven by Playwright, and `tether chat` in a subprocess.

Playwright never downloads a browser here: it launches /usr/bin/chromium (scripts/test
installs Debian's package when it is missing and we are root).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FACTOR = float(os.environ.get("TETHER_TESTS_TIMEOUT_FACTOR", "1"))  # as UNIT's
TIMEOUT_MS = int(10_000 * FACTOR)  # default for every Playwright wait
START_TIMEOUT = 15.0 * FACTOR  # seconds for the chat server to answer
STOP_TIMEOUT = 10.0 * FACTOR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChatServer:
    """`python -m tether chat` on host:port (a loopback address or name) with its history in
    data_dir, and more command-line options in `options`; stop() and start() again keep
    both, as a restart does."""

    def __init__(self, port: int, data_dir: Path, log_path: Path,
                 options: Sequence[str] = (), host: str = "127.0.0.1") -> None:
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.options = list(options)
        self.host = host
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tether", "chat", "--host", self.host,
                "--port", str(self.port), "--data", str(self.data_dir), *self.options]

    def start(self) -> None:
        assert self.process is None, "already running"
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tether chat exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"tether chat did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (clean shutdown: 1001 to every client), then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.geteuid() != 0:
            pytest.skip(f"{CHROMIUM} is missing and we are not root to install it "
                        "(apt-get install chromium)")
        pytest.fail(f"{CHROMIUM} is missing: run scripts/test, which installs Debian's "
                    "chromium, or apt-get install -y chromium")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        # Playwright gives every launch a fresh, empty user-data-dir of its own.
        browser = playwright.chromium.launch(executable_path=str(chromium),
                                             args=CHROMIUM_FLAGS, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[ChatServer]:
    server = ChatServer(free_port(), tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Pages:
    """Opens chat pages, one browser context (own localStorage) per user, and collects
    what must never happen: uncaught exceptions and alert() dialogs."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        self.frames_sent: dict[Page, list[str]] = {}  # every WebSocket frame a page sent

    def new_page(self, width: int = 800, height: int = 600) -> Page:
        context = self.browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        sent: list[str] = []
        self.frames_sent[page] = sent
        page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(
            payload if isinstance(payload, str) else payload.decode())))

        def on_dialog(dialog: Dialog) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        return page

    def open_chat(self, server: ChatServer, name: str, room: str = "general",
                  width: int = 800, height: int = 600, *, path: str = "/",
                  token: str | None = None, shown_as: str | None = None) -> Page:
        """A page at `path` of the chat, signed in as `name` (with `token` typed in the name
        dialog), online in `room`, listed as `shown_as` (default: `name`)."""
        page = self.new_page(width, height)
        page.goto(f"{server.url}{path}#{room}")
        page.get_by_test_id("name-input").fill(name)
        if token is not None:
            page.get_by_test_id("token-input").fill(token)
        page.get_by_test_id("name-submit").click()
        expect(page.get_by_test_id("state")).to_have_attribute("data-state", "online")
        expect(page.get_by_test_id("room-title")).to_have_text(room)
        member = shown_as or name
        expect(page.locator(f"[data-testid=member][data-name='{member}']")).to_have_count(1)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    pages = Pages(browser)
    try:
        yield pages
    finally:
        pages.close()
    assert pages.page_errors == [], pages.page_errors
    assert pages.dialogs == [], pages.dialogs
