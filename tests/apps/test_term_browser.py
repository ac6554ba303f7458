"""The web terminal in a real browser: `tether term` in a subprocess running bash on a PTY,
pages in headless Chromium (xterm.js), keystrokes typed into xterm.js's textarea.

Every wait is bounded and waits for a condition: the text of the terminal's buffer
(window.tetherTerm.lines(), scrollback included) or the page's state.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import pytest
from playwright.sync_api import Page, expect

from .conftest import FACTOR, Pages, free_port
from .term_fixtures import PROMPT, TcpProxy, TermServerFactory, descendants
from .term_fixtures import term_servers  # noqa: F401  (a fixture)

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "term.png"
TEST_TIME_LIMIT = int(60 * FACTOR)  # seconds: a hard bound on each test, all included
WAIT_MS = int(10_000 * FACTOR)  # for a command's output and the prompt after it
RECONNECT_MS = int(20_000 * FACTOR)  # the page's backoff doubles from 250 ms (capped at 10 s)
PROMPT_LINE = PROMPT.rstrip()  # the bare prompt line, trailing blank aside


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """Fail a test that runs past TEST_TIME_LIMIT, whatever it is waiting for."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the test ran past {TEST_TIME_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIME_LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- helpers -------------------------------------------------------------------------------------

def lines(page: Page) -> list[str]:
    shown: list[str] = page.evaluate("() => window.tetherTerm.lines()")
    return shown


def term_value(page: Page, expression: str) -> Any:
    """`expression` evaluated with `t` bound to window.tetherTerm."""
    return page.evaluate(f"() => {{ const t = window.tetherTerm; return {expression}; }}")


def wait_until(page: Page, expression: str, arg: object = None, timeout: float = WAIT_MS,
               polling: float | Literal["raf"] = "raf") -> None:
    """Wait until `expression` (with `t` = window.tetherTerm, `arg` as `arg`) is truthy."""
    page.wait_for_function(
        f"(arg) => {{ const t = window.tetherTerm; return !!t && !!({expression}); }}",
        arg=arg, timeout=timeout, polling=polling)


def wait_state(page: Page, state: str, timeout: float = WAIT_MS) -> None:
    wait_until(page, "t.state === arg", state, timeout=timeout)


def last_line_is(prompt: str = PROMPT_LINE) -> str:
    return ("(() => { const l = t.lines(); return l.length > 0 && "
            f"l[l.length - 1].trimEnd() === {prompt!r}; }})()")


def wait_prompt(page: Page, timeout: float = WAIT_MS, prompt: str = PROMPT_LINE) -> None:
    """Wait until the last non-empty line is the bare prompt."""
    wait_until(page, last_line_is(prompt), timeout=timeout)


def wait_line(page: Page, text: str, timeout: float = WAIT_MS) -> None:
    wait_until(page, "t.lines().includes(arg)", text, timeout=timeout)


def focus(page: Page) -> None:
    page.locator(".xterm-helper-textarea").focus()


def type_line(page: Page, text: str) -> None:
    focus(page)
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def prompt_count(page: Page, prompt: str = PROMPT_LINE) -> int:
    return int(term_value(page, f"t.lines().filter((l) => l.startsWith({prompt!r})).length"))


def run(page: Page, command: str, timeout: float = WAIT_MS, prompt: str = PROMPT_LINE) -> None:
    """Type `command` and Enter, and wait until it has finished: a new prompt line, bare,
    is the last line."""
    before = prompt_count(page, prompt)
    type_line(page, command)
    wait_until(page, f"t.lines().filter((l) => l.startsWith({prompt!r})).length > arg"
                     f" && {last_line_is(prompt)}", before, timeout=timeout)


def open_term(pages: Pages, url: str, *, width: int = 800, height: int = 600,
              state: str = "online", prompt: str | None = PROMPT_LINE) -> Page:
    """A page at `url`, attached (`state`), the shell's prompt shown."""
    page = pages.new_page(width, height)
    page.goto(url)
    wait_state(page, state)
    if prompt is not None:
        wait_prompt(page, prompt=prompt)
    return page


def record_states(page: Page) -> None:
    """From now on, window.__states lists every state the status element goes through."""
    page.evaluate("""() => {
      const status = document.querySelector("[data-testid=status]");
      window.__states = [status.dataset.state];
      new MutationObserver((records) => {
        records.forEach((record, i) => window.__states.push(
          i + 1 < records.length ? records[i + 1].oldValue : status.dataset.state));
      }).observe(status, { attributes: true, attributeFilter: ["data-state"],
                           attributeOldValue: true });
    }""")


def upgrade_status(port: int, extra_headers: str) -> str:
    """The status line the server answers a handcrafted WebSocket upgrade of /ws with."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra_headers}\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


# -- tests ---------------------------------------------------------------------------------------

def test_echo(term_servers: TermServerFactory, pages: Pages) -> None:
    server = term_servers()
    page = open_term(pages, server.page_url())
    assert term_value(page, "t.role") == "writer"
    assert term_value(page, "location.hash") == ""  # the token left the address bar
    run(page, "echo hello")
    shown = lines(page)
    assert "hello" in shown
    assert shown[-3:] == [PROMPT + "echo hello", "hello", PROMPT], shown


def test_resize_reaches_the_pty(term_servers: TermServerFactory, pages: Pages) -> None:
    server = term_servers()
    page = open_term(pages, server.page_url(), width=800, height=600)

    def pty_size(marker: str) -> tuple[int, int]:
        run(page, f"echo {marker}=$(stty size)")
        found = [line for line in lines(page) if re.fullmatch(rf"{marker}=\d+ \d+", line)]
        assert len(found) == 1, lines(page)
        rows, cols = found[0].split("=")[1].split()
        return int(rows), int(cols)

    before = pty_size("S1")
    assert before == (term_value(page, "t.term.rows"), term_value(page, "t.term.cols"))
    page.set_viewport_size({"width": 1100, "height": 380})
    wait_until(page, "t.term.rows !== arg[0] && t.term.cols !== arg[1]", list(before))
    after = pty_size("S2")
    assert after == (term_value(page, "t.term.rows"), term_value(page, "t.term.cols"))
    assert after[0] < before[0] and after[1] > before[1], (before, after)


def test_ctrl_c_interrupts_sleep(term_servers: TermServerFactory, pages: Pages) -> None:
    server = term_servers()
    page = open_term(pages, server.page_url())
    type_line(page, "sleep 137")

    def sleeping() -> list[int]:
        return [pid for pid, argv in descendants(server.pid) if argv == ["sleep", "137"]]

    deadline = time.monotonic() + WAIT_MS / 1000
    while not sleeping():
        assert time.monotonic() < deadline, "sleep 137 never started"
        time.sleep(0.05)
    # The shell's echo of the command reaches the page after the process may have started
    # (CI once read the screen before it, and saw the previous prompt as the last line).
    wait_line(page, PROMPT + "sleep 137")
    assert not term_value(page, last_line_is())  # still running: no prompt yet
    started = time.monotonic()
    page.keyboard.press("Control+C")
    wait_prompt(page, timeout=5_000)
    assert time.monotonic() - started < 5
    assert sleeping() == []
    run(page, "echo status=$?")
    assert "status=130" in lines(page)


def test_full_screen_program(term_servers: TermServerFactory, pages: Pages) -> None:
    server = term_servers()
    page = open_term(pages, server.page_url())
    run(page, "echo before-the-editor")
    if shutil.which("vim"):
        type_line(page, "vim -u NONE")
        wait_until(page, "t.term.buffer.active.type === 'alternate'")
        # vim's empty lines, "~" (and the blanks vim writes after it)
        wait_until(page, "t.lines().filter((l) => l.trimEnd() === '~').length >= 5")
        focus(page)
        page.keyboard.type(":q")
        page.keyboard.press("Enter")
    else:
        (server.home / "file.txt").write_text("".join(f"less-line-{i}\n" for i in range(200)))
        type_line(page, "less file.txt")
        wait_until(page, "t.term.buffer.active.type === 'alternate'")
        wait_line(page, "less-line-0")
        focus(page)
        page.keyboard.press("q")
    wait_until(page, "t.term.buffer.active.type === 'normal'")
    wait_prompt(page)
    shown = lines(page)
    assert "before-the-editor" in shown
    # the editor's screen went away with the alternate buffer
    assert not [line for line in shown if line.rstrip() in ("~", "less-line-0")], shown
    run(page, "echo status=$?")
    assert "status=0" in lines(page)


def test_utf8_and_emoji(term_servers: TermServerFactory, pages: Pages) -> None:
    server = term_servers()
    page = pages.new_page()
    frames: list[bytes] = []  # the binary frames the page received: the PTY's reads
    page.on("websocket", lambda ws: ws.on(
        "framereceived", lambda payload: frames.append(payload)
        if isinstance(payload, bytes) else None))
    page.goto(server.page_url())
    wait_state(page, "online")
    wait_prompt(page)

    run(page, r"printf 'caf\xc3\xa9 \xf0\x9f\x98\x80 ok\n'")
    assert "café 😀 ok" in lines(page)
    # The emoji takes two cells (Unicode 11 widths): "ok" starts at column 8.
    row = term_value(page, """(() => {
      const b = t.term.buffer.active;
      for (let i = b.length - 1; i >= 0; i--) {
        const line = b.getLine(i);
        if (line.translateToString(true) === 'café 😀 ok') {
          return [line.getCell(5).getWidth(), line.getCell(8).getChars()];
        }
      }
      return null;
    })()""")
    assert row == [2, "o"], row

    run(page, "echo 'typed: naïve 😀'")  # typed non-ASCII goes up as UTF-8
    assert "typed: naïve 😀" in lines(page)

    # One UTF-8 character split across two reads of the PTY.
    run(page, '"$PY" -c "import sys,time; sys.stdout.buffer.write(b\'A\\xc3\');'
              ' sys.stdout.flush(); time.sleep(1); sys.stdout.buffer.write(b\'\\xa9B\\n\')"')
    assert "AéB" in lines(page)
    assert any(frame.endswith(b"A\xc3") for frame in frames), frames[-6:]  # it was split
    assert not any("\ufffd" in line for line in lines(page))


def test_network_cut_mid_stream_loses_nothing(term_servers: TermServerFactory,
                                             pages: Pages) -> None:
    port = free_port()
    proxy = TcpProxy(port)
    try:
        server = term_servers(port=port, options=["--allow-origin", proxy.url])
        page = open_term(pages, server.page_url(base=proxy.url))
        session = term_value(page, "t.session")
        record_states(page)
        type_line(page, '"$PY" -c "import time; [(print(\'line-%d\' % i, flush=True),'
                        ' time.sleep(0.002)) for i in range(1, 3001)]"')
        wait_line(page, "line-300")
        assert proxy.cut() >= 1
        at_cut = lines(page)
        assert "line-3000" not in at_cut  # the cut is mid-stream
        wait_state(page, "reconnecting")
        time.sleep(2)  # the network stays down for a while (new connections are refused)
        assert proxy.refused >= 1, "the page never tried to reconnect while cut"
        proxy.restore()
        wait_state(page, "online", timeout=RECONNECT_MS)
        wait_line(page, "line-3000", timeout=RECONNECT_MS)
        wait_prompt(page)
        shown = lines(page)
        numbered = [line for line in shown if re.fullmatch(r"line-\d+", line)]
        assert numbered == [f"line-{i}" for i in range(1, 3001)], (
            len(numbered), [line for line in numbered if numbered.count(line) > 1][:5])
        assert not any(line.startswith("[output") for line in shown)  # no gap, no reset
        assert term_value(page, "t.session") == session
        states = term_value(page, "window.__states")
        assert isinstance(states, list)
        assert "reconnecting" in states and states[-1] == "online", states
        assert states.index("reconnecting") < len(states) - 1
        log = server.log()  # the page resumed from its offset: no gap, no replay from 0
        assert log.count("event=term-attach") >= 2 and "gap=yes" not in log, log
        assert "event=term-gap" not in log, log
    finally:
        proxy.close()


def test_reload_resumes_the_same_shell(term_servers: TermServerFactory, pages: Pages) -> None:
    server = term_servers()
    page = open_term(pages, server.page_url())
    run(page, "echo pid=$$")
    before = [line for line in lines(page) if re.fullmatch(r"pid=\d+", line)]
    assert len(before) == 1
    session = term_value(page, "t.session")

    page.reload()
    wait_state(page, "online")
    wait_line(page, before[0])  # the earlier output is replayed
    wait_prompt(page)
    assert PROMPT + "echo pid=$$" in lines(page)
    assert term_value(page, "t.session") == session
    run(page, "echo again=$$")
    assert before[0].replace("pid=", "again=") in lines(page)
    assert lines(page).count(before[0]) == 1  # replayed once, not twice


def test_shared_session_writer_and_viewer(term_servers: TermServerFactory,
                                          pages: Pages) -> None:
    server = term_servers(token="W", options=["--share", "--viewer-token", "V"])
    writer = open_term(pages, server.page_url("W"))
    viewer = pages.new_page()
    viewer.goto(server.page_url("V"))
    wait_until(viewer, "t.state === 'viewer' || t.state === 'online'")
    assert term_value(writer, "t.role") == "writer"
    role = term_value(viewer, "t.role")
    assert role == "viewer", f"the page with the --viewer-token attached as a {role}"
    assert term_value(viewer, "t.state") == "viewer"
    wait_prompt(viewer)
    assert term_value(viewer, "t.session") == term_value(writer, "t.session")

    run(writer, "echo shared-1")
    wait_line(viewer, "shared-1")

    type_line(viewer, "echo from-viewer")
    # A viewer's own socket sending keystrokes anyway: the server drops them and says so.
    reply = viewer.evaluate("""(port) => new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, ["tether.term.v1", "bearer.V"]);
      ws.binaryType = "arraybuffer";
      const timer = setTimeout(() => reject(new Error("no answer")), 8000);
      ws.onopen = () => ws.send(JSON.stringify({ type: "attach", session: null, since: null,
                                                 cols: 80, rows: 24 }));
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        const message = JSON.parse(event.data);
        if (message.type === "attached") {
          ws.send(new TextEncoder().encode("echo from-raw-viewer\\r"));
        } else if (message.type === "error") {
          clearTimeout(timer);
          ws.close();
          resolve(message.message);
        }
      };
      ws.onclose = (event) => reject(new Error("closed " + event.code));
    })""", server.port)
    assert "read-only" in reply
    run(writer, "echo after-the-viewer")
    wait_line(viewer, "after-the-viewer")
    for page in (writer, viewer):
        assert not any("from-viewer" in line or "from-raw-viewer" in line
                       for line in lines(page)), lines(page)
    assert term_value(viewer, "t.state") == "viewer"
    expect(viewer.get_by_test_id("status")).to_have_text("view only")


def test_token_and_origin_on_the_upgrade(term_servers: TermServerFactory) -> None:
    server = term_servers(token="T")
    protocol = "Sec-WebSocket-Protocol: tether.term.v1\r\n"
    with_token = "Sec-WebSocket-Protocol: tether.term.v1, bearer.T\r\n"
    own = f"Origin: {server.url}\r\n"
    evil = "Origin: http://evil.example\r\n"

    assert upgrade_status(server.port, protocol + own).split()[1] == "401"
    assert upgrade_status(server.port, protocol).split()[1] == "401"
    assert upgrade_status(server.port, "Sec-WebSocket-Protocol: tether.term.v1, bearer.X\r\n"
                          + own).split()[1] == "401"
    assert upgrade_status(server.port, with_token + evil).split()[1] == "403"
    assert upgrade_status(server.port, "Sec-WebSocket-Protocol: tether.term.v1\r\n"
                          "Authorization: Bearer T\r\n" + evil).split()[1] == "403"
    log = server.log()
    assert "event=open" not in log and "event=term-start" not in log, log
    # The same request from the server's own origin is let in: it was the origin.
    assert upgrade_status(server.port, with_token + own).split()[1] == "101"


def test_exit_shows_the_end_and_restart_starts_anew(term_servers: TermServerFactory,
                                                    pages: Pages) -> None:
    server = term_servers()
    page = open_term(pages, server.page_url())
    session = term_value(page, "t.session")
    ended = page.get_by_test_id("ended")
    expect(ended).to_be_hidden()
    type_line(page, "exit")
    expect(ended).to_be_visible()
    expect(page.get_by_test_id("ended-text")).to_contain_text("exit status 0")
    assert term_value(page, "t.ended && t.ended.status") == 0
    assert term_value(page, "t.state") == "closed"

    page.get_by_test_id("restart").click()
    expect(ended).to_be_hidden()
    wait_state(page, "online")
    wait_prompt(page)
    renewed = term_value(page, "t.session")
    assert renewed and renewed != session
    assert term_value(page, "t.ended") is None
    run(page, "echo alive")
    assert "alive" in lines(page)


def test_token_form(term_servers: TermServerFactory, pages: Pages) -> None:
    server = term_servers(token="secret-token")
    page = pages.new_page()
    page.goto(server.url + "/")
    form = page.get_by_test_id("token-form")
    expect(form).to_be_visible()
    assert term_value(page, "t.state") in ("closed", "connecting")
    page.get_by_test_id("token-input").fill("secret-token")
    page.get_by_test_id("token-submit").click()
    wait_state(page, "online")
    expect(form).to_be_hidden()
    wait_prompt(page)
    run(page, "echo in")
    assert "in" in lines(page)


def test_ctrl_c_stops_yes(term_servers: TermServerFactory, pages: Pages) -> None:
    server = term_servers()
    page = open_term(pages, server.page_url())
    type_line(page, "yes")
    wait_until(page, "t.processed > 200000 && t.lines().slice(-3).every((l) => l === 'y')",
               polling=100)
    page.wait_for_timeout(1000)  # let it flood for a while
    focus(page)
    started = time.monotonic()
    page.keyboard.press("Control+C")
    wait_prompt(page, timeout=5_000)
    assert time.monotonic() - started < 5
    # The output stops: everything received is drawn and nothing more arrives.
    wait_until(page, "t.processed === t.received")
    drawn = term_value(page, "t.processed")
    page.wait_for_timeout(700)
    assert term_value(page, "t.processed") == drawn
    assert term_value(page, "t.received") == drawn
    assert lines(page)[-1] == PROMPT
    run(page, "echo after-yes")
    assert "after-yes" in lines(page)
    assert not [argv for _, argv in descendants(server.pid) if argv[:1] == ["yes"]]


SCREENSHOT_PROMPT = "you@tether:~$ "


def test_screenshot_for_the_docs(term_servers: TermServerFactory, pages: Pages,
                                 tmp_path: Path) -> None:
    """docs/term.png: a shell with colours, a directory listing and some UTF-8."""
    home = tmp_path / "demo"
    for name in ("docs", "src", "tests"):
        (home / name).mkdir(parents=True)
    (home / "README.md").write_text("tether\n")
    (home / "build.sh").write_text("#!/bin/sh\n")
    (home / "build.sh").chmod(0o755)
    (home / "notes.txt").write_text("\n")
    (home / "readme").symlink_to("README.md")
    ps1 = r"\[\e[1;32m\]you@tether\[\e[0m\]:\[\e[1;34m\]~\[\e[0m\]$ "
    server = term_servers(prompt=ps1, options=["--cwd", str(home)])
    prompt = SCREENSHOT_PROMPT.rstrip()
    page = open_term(pages, server.page_url(), width=900, height=500, prompt=prompt)
    run(page, "ls --color=always -F", prompt=prompt)
    run(page, r"for c in 31 32 33 34 35 36; do printf '\e[1;%sm colour %s ' $c $c; done; printf '\e[0m\n'",
        prompt=prompt)
    run(page, "for r in 0 1 2 3 4 5; do for c in $(seq 0 35); do "
              "printf '\\e[48;5;%dm  ' $((16 + r * 36 + c)); done; printf '\\e[0m\\n'; done",
              prompt=prompt)
    run(page, "echo 'héllo wörld 😀 ✓'", prompt=prompt)
    assert "héllo wörld 😀 ✓" in lines(page)
    page.evaluate("() => { window.tetherTerm.term.blur(); }")  # no blinking cursor
    page.wait_for_timeout(200)  # the renderer draws on the next animation frames
    png = page.screenshot(type="png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if not SCREENSHOT.exists() or SCREENSHOT.read_bytes() != png:
        SCREENSHOT.write_bytes(png)
