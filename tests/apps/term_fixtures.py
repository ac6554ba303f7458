"""Fixtures for the web terminal's browser tests: `tether term` in a subprocess running a
plain bash with a fixed prompt, and a TCP proxy that can cut the network between a page
and the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .conftest import free_port

PROMPT = "PROMPT$ "
SHELL = "bash --norc --noprofile -i"
START_TIMEOUT = 15.0  # seconds for the server to answer
STOP_TIMEOUT = 10.0


class TermServer:
    """`python -m tether term` on 127.0.0.1:port running bash with PS1=`prompt`, HOME in
    `home`, and more command-line options in `options`."""

    def __init__(self, port: int, home: Path, log_path: Path, *, token: str | None = "T",
                 options: Sequence[str] = (), prompt: str = PROMPT) -> None:
        self.port = port
        self.home = home
        self.log_path = log_path
        self.token = token
        self.options = list(options)
        self.prompt = prompt
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        token = ["--token", self.token] if self.token is not None else []
        return [sys.executable, "-m", "tether", "term", "--host", "127.0.0.1",
                "--port", str(self.port), *token, "--command", SHELL, *self.options]

    def page_url(self, token: str | None = None, base: str | None = None) -> str:
        token = self.token if token is None else token
        return f"{base or self.url}/#token={token}"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PS1": self.prompt,
            "HOME": str(self.home),
            "HISTFILE": str(self.home / ".bash_history"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PY": sys.executable,  # for commands typed into the terminal: "$PY" -c ...
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("PROMPT_COMMAND", None)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tether term exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"tether term did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (ends the programs, closes every socket with 1001), SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


@pytest.fixture
def term_servers(tmp_path: Path) -> Iterator[TermServerFactory]:
    factory = TermServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


class TermServerFactory:
    """`term_servers(options=..., token=...)` starts a TermServer; all stop at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[TermServer] = []

    def __call__(self, *, token: str | None = "T", options: Sequence[str] = (),
                 prompt: str = PROMPT, port: int | None = None) -> TermServer:
        n = len(self.servers)
        server = TermServer(port or free_port(), self.tmp_path / f"home{n}",
                            self.tmp_path / f"server{n}.log", token=token, options=options,
                            prompt=prompt)
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


def descendants(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every living descendant of `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[tuple[int, list[str]]] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found.append((child, [arg.decode(errors="replace") for arg in argv if arg]))
        todo.extend(children.get(child, []))
    return found


class TcpProxy:
    """A TCP relay from 127.0.0.1:port to 127.0.0.1:upstream_port, in threads.

    cut() closes every relayed connection and, until restore(), closes each new one as soon
    as it is accepted: to the page, the network is down."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._refusing = False
        self._closed = False
        self.accepted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                refusing = self._refusing
            if refusing:
                self.refused += 1
                _kill(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
            except OSError:
                _kill(client)
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                if self._refusing or self._closed:
                    _kill(client)
                    _kill(upstream)
                    continue
                self._pairs.add(pair)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            if pair not in self._pairs:
                return
            self._pairs.discard(pair)
        for sock in pair:
            _kill(sock)

    def cut(self) -> int:
        """Close every relayed connection and refuse new ones; returns how many were cut."""
        with self._lock:
            self._refusing = True
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)
        return len(pairs)

    def restore(self) -> None:
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._thread.join(5)
        self.listener.close()


def _kill(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()

