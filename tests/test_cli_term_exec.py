"""``tether term`` and ``tether exec`` as a user runs them: real processes on loopback.
The terminal's made-up token and where it appears, who may connect (token, Origin), the
warning for a bind beyond loopback, a clean SIGTERM that reaps every shell; exec's smoke
test; and the usage errors that exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tether

from .asyncio.conftest import running
from .test_cli import TETHER, UNIT, free_port

BASH = "bash --norc --noprofile -i"
SHELL_ENV = {**os.environ, "PS1": "$ "}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(100 * UNIT)


def ended(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` is gone, polled for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(UNIT / 10)
    return not running(pid)


@contextmanager
def tether_server(tmp_path: Path, command: str, *args: str, host: str = "127.0.0.1",
                  after: tuple[str, ...] = ()) -> Iterator[Server]:
    """``python -m tether COMMAND --port P ARGS... AFTER...`` with its log in a file;
    yields once it has logged event=listen. Stopped (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    log_path = tmp_path / f"{command}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            TETHER + [command, "--host", host, "--port", str(port), *args, *after],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=SHELL_ENV)
    server = Server(proc, port, log_path)
    try:
        deadline = time.monotonic() + 100 * UNIT
        while "event=listen" not in server.log():
            if proc.poll() is not None:
                pytest.fail(f"tether {command} exited with {proc.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"tether {command} did not start:\n{server.log()}")
            time.sleep(UNIT / 2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(100 * UNIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def upgrade_status(port: int, path: str = "/ws", **headers: str) -> int:
    """The status a raw WebSocket upgrade gets."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=50 * UNIT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def run(coro: Any, timeout: float = 100 * UNIT) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def shell(url: str, **options: Any) -> tuple[Any, bytearray]:
    """A terminal page: connected, attached, its output read into the bytearray (acked)."""
    ws = await tether.connect(url, **options)
    await ws.send(json.dumps({"type": "attach", "session": None, "since": None,
                              "cols": 80, "rows": 24}))
    attached = json.loads(await asyncio.wait_for(ws.recv(), 50 * UNIT))
    assert attached["type"] == "attached" and attached["role"] == "writer"
    output = bytearray()

    async def read() -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    output.extend(message)
                    await ws.send(json.dumps({"type": "ack", "offset": len(output)}))
        except tether.ConnectionClosed:
            pass

    ws.reader = asyncio.ensure_future(read())  # type: ignore[attr-defined]
    return ws, output


async def wait_for(output: bytearray, pattern: bytes, timeout: float = 50 * UNIT) -> bytes:
    deadline = time.monotonic() + timeout
    while (match := re.search(pattern, output)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in {bytes(output)[-500:]!r}")
        await asyncio.sleep(UNIT / 10)
    return match.group(0)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


# -- tether term --------------------------------------------------------------------------------


class TestTermToken:
    def test_made_up_token_gates_the_socket_and_is_logged_only_in_the_page_url(
            self, tmp_path: Path) -> None:
        with tether_server(tmp_path, "term", "--command", BASH) as server:
            port = server.port
            match = re.search(rf"page=http://127\.0\.0\.1:{port}/#token=([A-Za-z0-9_-]+)",
                              server.log())
            assert match, server.log()
            token = match.group(1)
            assert len(token) >= 24
            bearer = f"Bearer {token}"
            assert upgrade_status(port) == 401
            assert upgrade_status(port, Authorization="Bearer wrong") == 401
            assert upgrade_status(port, Authorization=bearer) == 101
            assert upgrade_status(port, Authorization=bearer,
                                  Origin="http://evil.example") == 403
            assert upgrade_status(port, Origin="http://evil.example") in (401, 403)
            assert upgrade_status(port, Authorization=bearer,
                                  Origin=f"http://127.0.0.1:{port}") == 101
            assert upgrade_status(port, Authorization=bearer,
                                  Origin=f"http://localhost:{port}") == 101

            async def use_it() -> None:
                # Each way a page or a program may present the token.
                url = f"ws://127.0.0.1:{port}/ws"
                ways: list[tuple[str, dict[str, Any]]] = [
                    (url, {"headers": {"Authorization": bearer}}),
                    (url, {"subprotocols": ["tether.term.v1", f"bearer.{token}"]}),
                    (f"{url}?token={token}", {"origin": f"http://127.0.0.1:{port}"}),
                ]
                for target, options in ways:
                    ws, output = await shell(target, **options)
                    if "subprotocols" in options:
                        assert ws.subprotocol == "tether.term.v1"
                    await ws.send(b"echo ok-$((20+22))\n")
                    await wait_for(output, rb"ok-42")
                    await ws.close()

            run(use_it())
            assert server.stop() == 0
            log = server.log()
            assert log.count(token) == 1, [line for line in log.splitlines() if token in line]
            assert "event=open" in log and "event=term-start" in log

    def test_given_token_is_not_logged(self, tmp_path: Path) -> None:
        token = "given-" + os.urandom(8).hex()
        with tether_server(tmp_path, "term", "--command", BASH, "--token", token) as server:
            assert re.search(rf"page=http://127\.0\.0\.1:{server.port}/(\s|$)", server.log())
            assert upgrade_status(server.port) == 401
            assert upgrade_status(server.port, Authorization=f"Bearer {token}") == 101
            assert server.stop() == 0
            assert token not in server.log()
            assert "#token=" not in server.log()

    def test_plain_page_is_served(self, tmp_path: Path) -> None:
        import urllib.request

        with tether_server(tmp_path, "term", "--command", BASH) as server:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/",
                                        timeout=50 * UNIT) as response:
                assert response.status == 200
                assert response.headers["Content-Security-Policy"]
            assert server.stop() == 0


class TestTermOptions:
    def test_viewer_token_needs_share(self) -> None:
        result = subprocess.run(TETHER + ["term", "--port", str(free_port()),
                                          "--viewer-token", "v"],
                                capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 2
        assert b"--viewer-token needs --share" in result.stderr
        assert b"Traceback" not in result.stderr

    @pytest.mark.parametrize("args, message", [
        (["--command", ""], b"--command is empty"),
        (["--command", "'unclosed"], b"cannot split --command"),
        (["--cwd", "/nonexistent-tether-dir"], b"is not a directory"),
        (["--keep", "-1"], b"--keep must be 0 or more"),
        (["--max-sessions", "0"], b"--max-sessions at least 1"),
    ])
    def test_usage_errors_exit_2(self, args: list[str], message: bytes) -> None:
        result = subprocess.run(TETHER + ["term", "--port", str(free_port()), *args],
                                capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert b"Traceback" not in result.stderr

    def test_bind_beyond_loopback_without_tls_warns(self, tmp_path: Path) -> None:
        with tether_server(tmp_path, "term", "--command", BASH, host="0.0.0.0") as server:
            assert server.stop() == 0  # the whole log: the warning is written after "listen"
            warnings = [line for line in server.log().splitlines()
                        if "level=WARNING" in line and "event=warning" in line]
            assert len(warnings) == 1, server.log()
            assert "without TLS" in warnings[0]

    def test_loopback_bind_does_not_warn(self, tmp_path: Path) -> None:
        with tether_server(tmp_path, "term", "--command", BASH) as server:
            assert server.stop() == 0
            assert "level=WARNING" not in server.log()

    def test_share_with_viewer_token(self, tmp_path: Path) -> None:
        with tether_server(tmp_path, "term", "--command", BASH, "--share", "--token", "w",
                           "--viewer-token", "v") as server:
            url = f"ws://127.0.0.1:{server.port}/ws"

            async def scenario() -> None:
                writer, out = await shell(url, headers={"Authorization": "Bearer w"})
                viewer = await tether.connect(url, headers={"Authorization": "Bearer v"})
                await viewer.send(json.dumps({"type": "attach", "session": None,
                                              "since": None, "cols": 80, "rows": 24}))
                attached = json.loads(await asyncio.wait_for(viewer.recv(), 50 * UNIT))
                assert (attached["role"], attached["shared"]) == ("viewer", True)
                await viewer.send(b"echo viewer-$((1+1))\n")
                while True:
                    message = await asyncio.wait_for(viewer.recv(), 50 * UNIT)
                    if isinstance(message, str):
                        assert json.loads(message) == {"type": "error",
                                                       "message": "read-only: input dropped"}
                        break
                await writer.send(b"echo writer-$((2+2))\n")
                await wait_for(out, rb"writer-4")
                assert b"viewer-2" not in out
                await viewer.close()
                await writer.close()

            run(scenario())
            assert server.stop() == 0


class TestTermShutdown:
    def test_sigterm_exits_0_and_reaps_every_shell(self, tmp_path: Path) -> None:
        with tether_server(tmp_path, "term", "--command", BASH, "--token", "t") as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            auth = {"Authorization": "Bearer t"}

            async def scenario() -> tuple[list[int], int, list[Any]]:
                pages = [await shell(url, headers=auth) for _ in range(2)]
                pids = []
                for ws, out in pages:
                    await ws.send(b"echo pid-$$-\n")
                    pids.append(int((await wait_for(out, rb"pid-\d+-"))[4:-1]))
                ws, out = pages[1]
                await ws.send(b"sh -c 'echo job-$$-; exec sleep 1000'\n")  # a foreground job
                job = int((await wait_for(out, rb"job-\d+-"))[4:-1])
                assert sorted(children_of(server.proc.pid)) == sorted(pids)
                assert server.proc.poll() is None
                server.proc.send_signal(signal.SIGTERM)
                for ws, _ in pages:
                    await asyncio.wait_for(ws.reader, 100 * UNIT)
                return pids, job, [ws.close_code for ws, _ in pages]

            pids, job, codes = run(scenario(), timeout=200 * UNIT)
            assert server.proc.wait(100 * UNIT) == 0
            assert all(code in (1000, 1001) for code in codes), codes
            for pid in pids:  # reaped by the server: no zombie left behind
                assert not os.path.exists(f"/proc/{pid}"), pid
            assert ended(job, 20 * UNIT), job  # hung up: it ends when next scheduled
            log = server.log()
            assert "event=shutdown" in log and "Traceback" not in log


# -- tether exec --------------------------------------------------------------------------------


class TestExec:
    def test_smoke_line_in_line_out_close_1000(self, tmp_path: Path) -> None:
        with tether_server(tmp_path, "exec",
                           after=("--", "sh", "-c", 'read l; echo "got $l"')) as server:

            async def scenario() -> tuple[int | None, str | None]:
                async with tether.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                    await ws.send("hello")
                    assert await asyncio.wait_for(ws.recv(), 50 * UNIT) == "got hello"
                    with pytest.raises(tether.ConnectionClosedOK):
                        await asyncio.wait_for(ws.recv(), 50 * UNIT)
                    return ws.close_code, ws.close_reason

            assert run(scenario()) == (1000, "exit status 0")
            assert server.stop() == 0
            log = server.log()
            assert "event=listen app=exec" in log and "event=exec-start" in log

    def test_sigterm_ends_the_process_of_a_client_that_just_left(self, tmp_path: Path) -> None:
        """The client leaves; its process ignores EOF and SIGHUP, so it is still being ended
        (SIGTERM comes a grace time later) when the server is stopped. The server must not
        exit and leave it running."""
        with tether_server(tmp_path, "exec", after=(
                "--", "sh", "-c", 'trap "" HUP; echo $$; exec sleep 100')) as server:

            async def scenario() -> int:
                async with tether.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                    return int(await asyncio.wait_for(ws.recv(), 50 * UNIT))

            pid = run(scenario())
            assert running(pid)
            try:
                assert server.stop() == 0
                assert ended(pid, 10 * UNIT), f"process {pid} outlived the server"
            finally:
                if running(pid):
                    os.kill(pid, signal.SIGKILL)

    def test_exec_origin_check(self, tmp_path: Path) -> None:
        with tether_server(tmp_path, "exec", after=("--", "cat")) as server:
            assert upgrade_status(server.port, "/") == 101  # a program: no Origin
            assert upgrade_status(server.port, "/", Origin="http://evil.example") == 403
            assert upgrade_status(server.port, "/",
                                  Origin=f"http://127.0.0.1:{server.port}") == 101
            assert server.stop() == 0

    def test_max_processes_503(self, tmp_path: Path) -> None:
        with tether_server(tmp_path, "exec", "--max-processes", "1",
                           after=("--", "cat")) as server:

            async def scenario() -> int:
                url = f"ws://127.0.0.1:{server.port}/"
                async with tether.connect(url) as ws:
                    await ws.send("x")
                    assert await asyncio.wait_for(ws.recv(), 50 * UNIT) == "x"
                    with pytest.raises(tether.InvalidStatus) as info:
                        await tether.connect(url)
                    return int(info.value.response.status)

            assert run(scenario()) == 503
            assert server.stop() == 0

    @pytest.mark.parametrize("argv", [[], ["--"]])
    def test_no_command_exits_2(self, argv: list[str]) -> None:
        result = subprocess.run(TETHER + ["exec", "--port", str(free_port()), *argv],
                                capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 2
        assert b"no command" in result.stderr
        assert b"Traceback" not in result.stderr

    def test_bad_max_processes_exits_2(self) -> None:
        result = subprocess.run(TETHER + ["exec", "--port", str(free_port()),
                                          "--max-processes", "0", "--", "cat"],
                                capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 2
        assert b"--max-processes must be at least 1" in result.stderr
