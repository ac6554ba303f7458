"""The command line, as a user runs it: real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import tether
from tether.cli import main

UNIT = 0.1 * float(os.environ.get("TETHER_TESTS_TIMEOUT_FACTOR", "1"))
TETHER = [sys.executable, "-m", "tether"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 100 * UNIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=UNIT).close()
            return
        except OSError:
            time.sleep(UNIT / 2)
    raise TimeoutError(f"nothing listening on {port}")


@contextmanager
def server_process(command: str, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m tether COMMAND`` on a free port; killed afterwards if still running."""
    port = free_port()
    proc = subprocess.Popen(TETHER + [command, "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout and proc.stderr
        proc.stdout.close()
        proc.stderr.close()


def echo_server(*args: str) -> "contextlib.AbstractContextManager[tuple[subprocess.Popen[bytes], int]]":
    return server_process("echo", *args)


class TestHelp:
    def test_help_explains_every_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "echo" in out and "connect" in out

    @pytest.mark.parametrize("command, options", [
        ("echo", ["--host", "--port", "--max-size", "--no-compression", "--open-timeout",
                  "--close-timeout", "--max-queue", "--require-origin", "--max-header-size",
                  "--max-pending-handshakes"]),
        ("broadcast", ["--max-buffered", "--token", "#token="]),
        ("connect", ["--header", "--subprotocol", "--no-compression"]),
    ])
    def test_command_help(
        self, capsys: pytest.CaptureFixture[str], command: str, options: list[str]
    ) -> None:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        for option in options:
            assert option in out

    def test_bad_size_is_a_clear_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as info:
            main(["echo", "--max-size", "lots"])
        assert info.value.code == 2
        assert "not a size" in capsys.readouterr().err


class TestEchoAndConnect:
    def test_pipe_prints_echo_and_exits_0(self) -> None:
        with echo_server() as (server, port):
            result = subprocess.run(
                TETHER + ["connect", f"ws://127.0.0.1:{port}"],
                input=b"hi\nsecond line\n",
                capture_output=True,
                timeout=100 * UNIT,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"hi\nsecond line\n"
            assert b"Connection closed: 1000" in result.stderr
            server.send_signal(signal.SIGINT)
            assert server.wait(100 * UNIT) == 0
            assert server.stderr is not None
            log = server.stderr.read().decode()
            # One line per connection, with its close code, duration and bytes.
            assert "event=open" in log and "event=close" in log
            assert "code=1000" in log and "duration=" in log and "in=" in log

    @pytest.mark.parametrize("extra", [[], ["--no-compression"]])
    def test_connect_options(self, extra: list[str]) -> None:
        with echo_server(*extra) as (_, port):
            result = subprocess.run(
                TETHER + ["connect", f"ws://127.0.0.1:{port}/path", "-H", "X-A: b",
                          "--subprotocol", "p", *extra],
                input=b"x\n",
                capture_output=True,
                timeout=100 * UNIT,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"x\n"

    def test_ctrl_c_closes_clients_with_1001_and_exits_0(self) -> None:
        with echo_server() as (server, port):

            async def client() -> tuple[int | None, str | None]:
                async with tether.connect(f"ws://127.0.0.1:{port}") as ws:
                    await ws.send("hello")
                    assert await ws.recv() == "hello"
                    server.send_signal(signal.SIGINT)
                    with pytest.raises(tether.ConnectionClosedOK):
                        await ws.recv()
                    return ws.close_code, ws.close_reason

            assert asyncio.run(asyncio.wait_for(client(), 100 * UNIT)) == (
                1001, "server shutting down")
            assert server.wait(100 * UNIT) == 0

    @pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
    def test_loop_option(self, loop: str) -> None:
        with echo_server("--loop", loop) as (server, port):
            result = subprocess.run(
                TETHER + ["connect", "--loop", loop, f"ws://127.0.0.1:{port}"],
                input=b"on " + loop.encode() + b"\n", capture_output=True, timeout=100 * UNIT)
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"on " + loop.encode() + b"\n"
            server.send_signal(signal.SIGTERM)
            assert server.wait(100 * UNIT) == 0
            assert server.stderr is not None
            assert f"loop={loop}" in server.stderr.read().decode()

    def test_unknown_loop_in_environment_is_a_clear_error(self) -> None:
        result = subprocess.run(TETHER + ["echo", "--port", str(free_port())],
                                env={**os.environ, "TETHER_LOOP": "trio"},
                                capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 2
        assert b"unknown event loop 'trio'" in result.stderr
        assert b"Traceback" not in result.stderr

    def test_sigterm_too(self) -> None:
        with echo_server() as (server, _):
            server.send_signal(signal.SIGTERM)
            assert server.wait(100 * UNIT) == 0

    def test_max_size_option(self) -> None:
        with echo_server("--max-size", "1KiB") as (_, port):

            async def client() -> int | None:
                async with tether.connect(f"ws://127.0.0.1:{port}") as ws:
                    await ws.send("x" * 1025)
                    with pytest.raises(tether.ConnectionClosedError):
                        await ws.recv()
                    return ws.close_code

            assert asyncio.run(asyncio.wait_for(client(), 100 * UNIT)) == 1009


class TestErrors:
    def test_connect_refused_is_a_clear_error(self) -> None:
        result = subprocess.run(
            TETHER + ["connect", f"ws://127.0.0.1:{free_port()}"],
            input=b"", capture_output=True, timeout=100 * UNIT,
        )
        assert result.returncode == 1
        assert result.stderr.startswith(b"tether connect:")
        assert b"Traceback" not in result.stderr

    def test_connect_bad_url(self) -> None:
        result = subprocess.run(TETHER + ["connect", "http://example.com/"],
                                input=b"", capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 1
        assert b"not a WebSocket URI" in result.stderr

    def test_lifts_its_open_files_limit(self) -> None:
        """Started with the usual soft limit of 1,024 (here 256), a server would refuse
        connections past it without a word: it lifts its soft limit to the hard one, and
        its listen line says how many it may open."""
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        expected = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        port = free_port()
        proc = subprocess.Popen(
            TETHER + ["echo", "--port", str(port)], stderr=subprocess.PIPE,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
        try:
            wait_for_port(port, proc)
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
            line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
            assert int(line.split()[3]) == expected, line
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=100 * UNIT)
        assert f"open_files={expected}" in err.decode(), err

    def test_port_in_use(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]
            result = subprocess.run(TETHER + ["echo", "--port", str(port)],
                                    capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 1
        assert b"cannot listen" in result.stderr
        assert b"Traceback" not in result.stderr


class TestInteractive:
    """``tether connect`` in a terminal, checked on the screen a user sees (pyte renders the
    terminal output): a message that arrives while the user types prints above the line being
    typed, which stays intact."""

    def test_message_does_not_garble_the_typed_line(self) -> None:
        pty = pytest.importorskip("pty")
        pyte = pytest.importorskip("pyte")
        pytest.importorskip("prompt_toolkit")

        async def push_while_typing(ws: tether.WebSocket) -> None:
            await ws.recv()  # "go"
            await pushed_go.wait()  # the user has typed half a line
            await ws.send("incoming!")
            async for message in ws:
                await ws.send(message)

        pushed_go = asyncio.Event()
        screen = pyte.Screen(80, 24)
        stream = pyte.ByteStream(screen)

        def lines() -> list[str]:
            return [line.rstrip() for line in screen.display if line.strip()]

        async def scenario() -> None:
            async with tether.serve(push_while_typing, "127.0.0.1", 0) as server:
                master, slave = pty.openpty()
                env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
                proc = await asyncio.create_subprocess_exec(
                    *TETHER, "connect", f"ws://127.0.0.1:{server.port_number}",
                    stdin=slave, stdout=slave, stderr=slave, env=env,
                )
                os.close(slave)
                loop = asyncio.get_running_loop()

                async def until(predicate: "Callable[[], bool]") -> None:
                    while not predicate():
                        chunk = await asyncio.wait_for(
                            loop.run_in_executor(None, os.read, master, 4096), 100 * UNIT)
                        stream.feed(chunk)

                try:
                    await until(lambda: any(line.startswith(">") for line in lines()))
                    os.write(master, b"go\r")
                    os.write(master, b"half-typ")
                    await until(lambda: lines()[-1] == "> half-typ")
                    pushed_go.set()
                    await until(lambda: "incoming!" in lines())
                    await until(lambda: lines()[-1] == "> half-typ")
                    # The message is above the prompt, the partial line intact below it.
                    assert lines()[-2:] == ["incoming!", "> half-typ"]
                    os.write(master, b"ed\r")
                    await until(lambda: "half-typed" in lines()[:-1] and lines()[-1] == ">")
                    os.write(master, b"\x04")  # Ctrl-D closes the connection
                    assert await asyncio.wait_for(proc.wait(), 100 * UNIT) == 0
                finally:
                    if proc.returncode is None:
                        proc.kill()
                    os.close(master)

        asyncio.run(asyncio.wait_for(scenario(), 300 * UNIT))



class TestBroadcastCommand:
    def test_page_and_relay_to_every_client(self) -> None:
        with server_process("broadcast") as (server, port):

            async def scenario() -> list[list[object]]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                page = await reader.read()
                writer.close()
                assert page.startswith(b"HTTP/1.1 200 OK")
                assert b"new WebSocket(url)" in page and b"textContent" in page
                clients = [await tether.connect(f"ws://127.0.0.1:{port}/") for _ in range(3)]
                await clients[0].send("hello all")
                got = [[await ws.recv()] for ws in clients]
                await clients[2].send("hi back")  # after everyone has the first: ordered
                for ws, messages in zip(clients, got):
                    messages.append(await ws.recv())  # type: ignore[arg-type]
                server.send_signal(signal.SIGTERM)
                for ws in clients:
                    with pytest.raises(tether.ConnectionClosedOK):
                        await ws.recv()
                    assert ws.close_code == 1001
                return got

            got = asyncio.run(asyncio.wait_for(scenario(), 100 * UNIT))
            assert all(messages == ["hello all", "hi back"] for messages in got)
            assert server.wait(100 * UNIT) == 0


    def test_max_size_message_reaches_all_and_max_buffered_closes_the_slow(self) -> None:
        """A message of exactly --max-size reaches every client with the default budget;
        a client that stops reading is closed with 1013 once past --max-buffered."""
        max_size = 2**20
        with server_process("broadcast", "--max-size", "1MiB", "--max-buffered", "64KiB",
                            "--no-compression") as (server, port):
            url = f"ws://127.0.0.1:{port}/"

            async def scenario() -> None:
                clients = [await tether.connect(url, compression=None, max_size=max_size)
                           for _ in range(3)]
                await clients[0].send("x" * max_size)
                for ws in clients:
                    assert await ws.recv() == "x" * max_size
                slow = clients[2]
                assert slow.transport is not None
                slow.transport.pause_reading()  # stops reading
                chunk = "y" * (max_size // 2)
                for _ in range(24):  # 12 MiB: more than the kernel's buffers hold (about 4 MiB)
                    await clients[0].send(chunk)
                    for ws in clients[:2]:
                        assert await ws.recv() == chunk
                slow.transport.resume_reading()
                with pytest.raises(tether.ConnectionClosedError) as info:
                    while True:
                        await slow.recv()
                assert info.value.code == 1013
                assert "too slow" in info.value.reason
                for ws in clients[:2]:
                    await ws.close()

            asyncio.run(asyncio.wait_for(scenario(), 300 * UNIT))
            server.send_signal(signal.SIGTERM)
            assert server.wait(100 * UNIT) == 0


class TestServerFlags:
    def test_token_and_origin(self, tmp_path: Path) -> None:
        tokens = tmp_path / "tokens"
        tokens.write_text("from-file alice\n")
        with server_process("echo", "--token", "flag-token", "--token-file", str(tokens),
                            "--allow-origin", "https://ok.example") as (server, port):
            url = f"ws://127.0.0.1:{port}/"

            async def scenario() -> None:
                for target in [url + "?token=flag-token", url + "?token=from-file"]:
                    async with tether.connect(target, origin="https://ok.example") as ws:
                        await ws.send("in")
                        assert await ws.recv() == "in"
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url)
                assert info.value.response.status == 401
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url + "?token=flag-token", origin="https://evil.example")
                assert info.value.response.status == 403

            asyncio.run(asyncio.wait_for(scenario(), 100 * UNIT))
            server.send_signal(signal.SIGINT)
            assert server.wait(100 * UNIT) == 0
            assert server.stderr is not None
            log = server.stderr.read().decode()
            assert "flag-token" not in log and "from-file" not in log

    def test_tls(self, tmp_path: Path) -> None:
        import ssl

        trustme = pytest.importorskip("trustme")
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")
        cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
        with server_process("echo", "--tls-cert", str(tmp_path / "cert.pem"),
                            "--tls-key", str(tmp_path / "key.pem")) as (server, port):
            context = ssl.create_default_context()
            ca.configure_trust(context)

            async def scenario() -> None:
                async with tether.connect(f"wss://localhost:{port}/", ssl=context) as ws:
                    await ws.send("over tls")
                    assert await ws.recv() == "over tls"

            asyncio.run(asyncio.wait_for(scenario(), 100 * UNIT))
            url = f"wss://localhost:{port}/"
            # tether connect verifies certificates; --insecure is the way round for self-signed.
            refused = subprocess.run(TETHER + ["connect", url], input=b"x\n",
                                     capture_output=True, timeout=100 * UNIT)
            assert refused.returncode == 1
            assert b"CERTIFICATE_VERIFY_FAILED" in refused.stderr
            allowed = subprocess.run(TETHER + ["connect", "--insecure", url], input=b"x\n",
                                     capture_output=True, timeout=100 * UNIT)
            assert allowed.returncode == 0, allowed.stderr
            assert allowed.stdout == b"x\n"

    def test_handshake_limits_origin_and_close_timeout(self) -> None:
        """--open-timeout, --max-pending-handshakes, --max-header-size, --require-origin,
        --close-timeout, on one server."""
        # --open-timeout 3: room for a loaded machine between the bounds checked below
        with server_process("echo", "--open-timeout", "3", "--max-pending-handshakes", "3",
                            "--max-header-size", "1KiB", "--require-origin", "--allow-origin",
                            "https://ok.example", "--close-timeout", "0.5",
                            "--shutdown-timeout", "30") as (server, port):
            url = f"ws://127.0.0.1:{port}/"

            writers: list[asyncio.StreamWriter] = []  # kept: a lost writer closes its socket

            async def slowloris() -> tuple[asyncio.StreamReader, float]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
                writers.append(writer)
                connected = asyncio.get_running_loop().time()
                await asyncio.sleep(UNIT)  # seen by the server before the next one
                return reader, connected

            async def answer(request: bytes) -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                data = await asyncio.wait_for(reader.read(), 50 * UNIT)
                writer.close()
                return data

            async def scenario() -> None:
                loop = asyncio.get_running_loop()
                slow = [await slowloris() for _ in range(4)]
                # The fourth made the server drop the first: 3 pending at most.
                reader, connected = slow[0]
                assert await asyncio.wait_for(reader.read(), 50 * UNIT) == b""
                assert loop.time() - connected < 2.5
                for reader, connected in slow[1:]:  # the others: after --open-timeout
                    assert await asyncio.wait_for(reader.read(), 50 * UNIT) == b""
                    assert 2.5 <= loop.time() - connected < 3 + 30 * UNIT
                for writer in writers:
                    writer.close()
                async with tether.connect(url, origin="https://ok.example") as ws:
                    await ws.send("in")
                    assert await ws.recv() == "in"
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(url)  # no Origin
                assert info.value.response.status == 403
                assert info.value.response.body == b"Origin header required\n"
                big = (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 2000 + b"\r\n\r\n")
                assert b" 431 " in (await answer(big)).split(b"\r\n")[0]
                # --close-timeout: a client that never answers the close frame is dropped
                # after 0.5 s, well before --shutdown-timeout.
                ws = await tether.connect(url, origin="https://ok.example")
                assert ws.transport is not None
                ws.transport.pause_reading()
                server.send_signal(signal.SIGTERM)
                stopping = loop.time()
                assert await loop.run_in_executor(None, server.wait, 100 * UNIT) == 0
                assert loop.time() - stopping < 0.5 + 30 * UNIT
                ws.transport.abort()

            asyncio.run(asyncio.wait_for(scenario(), 300 * UNIT))

    def test_limit_flags_reach_serve(self) -> None:
        from tether.cli import _parser, _server_options

        args = _parser().parse_args(["echo", "--max-queue", "4", "--close-timeout", "2.5",
                                     "--open-timeout", "3", "--max-pending-handshakes", "9",
                                     "--max-header-size", "8KiB"])
        options = _server_options(args)
        assert (options["max_queue"], options["close_timeout"], options["open_timeout"],
                options["max_pending_handshakes"], options["max_header_bytes"]) == (
                    4, 2.5, 3.0, 9, 8192)

    @pytest.mark.parametrize("args, message", [
        (["--require-origin"], b"--require-origin needs --allow-origin"),
        (["--open-timeout", "0"], b"--open-timeout must be more than 0"),
        (["--max-queue", "0"], b"--max-queue must be more than 0"),
        (["--tls-cert", "/nonexistent.pem"], b"--tls-cert and --tls-key go together"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
         b"cannot load the TLS certificate"),
        (["--token-file", "/nonexistent/tokens"], b"cannot read --token-file"),
    ])
    def test_bad_options_are_clear_errors(self, args: list[str], message: bytes) -> None:
        result = subprocess.run(TETHER + ["echo", "--port", str(free_port()), *args],
                                capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 2
        assert message in result.stderr
        assert b"Traceback" not in result.stderr


class TestShutdown:
    def test_shutdown_timeout_bounds_the_wait(self) -> None:
        with server_process("echo", "--shutdown-timeout", "0.5") as (server, port):

            async def scenario() -> None:
                ws = await tether.connect(f"ws://127.0.0.1:{port}/")
                assert ws.transport is not None
                ws.transport.pause_reading()  # never answers the server's close frame
                server.send_signal(signal.SIGTERM)
                loop = asyncio.get_running_loop()
                started = loop.time()
                await loop.run_in_executor(None, server.wait, 100 * UNIT)
                assert loop.time() - started < 0.5 + 50 * UNIT
                ws.transport.abort()

            asyncio.run(asyncio.wait_for(scenario(), 200 * UNIT))
            assert server.returncode == 0


def wait_for_listeners(port: int, count: int) -> None:
    """Wait until ``count`` sockets listen on ``port`` (SO_REUSEPORT: one per worker)."""
    deadline = time.monotonic() + 200 * UNIT
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        listening = [r for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
        if len(listening) >= count:
            return
        time.sleep(UNIT / 2)
    raise TimeoutError(f"fewer than {count} sockets listen on {port}")


class TestScaleOut:
    """``tether chat --redis`` and ``--workers``: nodes sharing topics through Redis."""

    def test_redis_unreachable_is_a_clear_error(self) -> None:
        result = subprocess.run(
            TETHER + ["chat", "--port", str(free_port()),
                      "--redis", f"redis://127.0.0.1:{free_port()}/0"],
            capture_output=True, timeout=200 * UNIT)
        assert result.returncode == 1
        assert b"cannot reach Redis" in result.stderr
        assert b"Traceback" not in result.stderr

    @pytest.mark.parametrize("command", ["chat", "broadcast"])
    def test_redis_unreachable_is_one_line_without_warnings(
        self, command: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Issue 14, finding 2: no warning from redis-py around the one-line error."""
        port = free_port()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning fails the start instead of printing
            code = main([command, "--port", str(free_port()), "--redis",
                         f"redis://127.0.0.1:{port}/0"])
        assert code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"tether {command}: cannot reach Redis at "
                              f"redis://127.0.0.1:{port}/0: "), err
        assert err.count("\n") == 1 and err.endswith("\n"), err

    @pytest.mark.parametrize("command", ["chat", "broadcast"])
    def test_redis_without_the_extra_says_what_to_install(
        self, command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Issue 14, finding 1: a plain `pip install tether` has no redis package."""
        for name in list(sys.modules):  # forget redis-py and the backend that imports it
            if name == "tether.hub.redis" or name.startswith("redis."):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` fails
        code = main([command, "--port", str(free_port()), "--redis", "redis://127.0.0.1:6379/0"])
        assert code == 1  # as every other failure to start
        assert capsys.readouterr().err == (
            f"tether {command}: --redis needs the redis extra: pip install 'tether[redis]'\n")

    def test_presence_ttl_reaches_the_backend(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from tether.hub import BackendUnavailable
        from tether.hub import redis as redis_backend

        made: list[float] = []

        class Recording(redis_backend.RedisBackend):
            async def connect(self) -> None:
                made.append(self.presence_ttl)
                raise BackendUnavailable("not this time")

        monkeypatch.setattr(redis_backend, "RedisBackend", Recording)
        url = "redis://127.0.0.1:6379/0"
        assert main(["chat", "--port", str(free_port()), "--redis", url]) == 1
        assert main(["chat", "--port", str(free_port()), "--redis", url,
                     "--presence-ttl", "1.5"]) == 1
        assert made == [redis_backend.DEFAULT_PRESENCE_TTL, 1.5]
        assert capsys.readouterr().err == "tether chat: not this time\n" * 2
        for bad in ("0", "-1", "inf", "nan", "soon"):
            with pytest.raises(SystemExit) as info:
                main(["chat", "--redis", url, "--presence-ttl", bad])
            assert info.value.code == 2
        assert "--presence-ttl" in capsys.readouterr().err

    def test_presence_ttl_needs_redis(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["chat", "--port", str(free_port()), "--presence-ttl", "5"]) == 2
        assert capsys.readouterr().err == ("tether chat: --presence-ttl needs --redis (one "
                                           "node's members leave when their connections "
                                           "close)\n")

    def test_workers_without_the_extra_say_it_once(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setitem(sys.modules, "redis", None)
        code = main(["chat", "--port", str(free_port()), "--workers", "3", "--redis",
                     "redis://127.0.0.1:6379/0"])
        assert code == 1  # before any worker starts: one line, not one per worker
        assert capsys.readouterr().err == (
            "tether chat: --redis needs the redis extra: pip install 'tether[redis]'\n")

    def test_presence_ttl_only_where_there_is_presence(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for command, listed in (("chat", True), ("broadcast", False)):
            with pytest.raises(SystemExit):
                main([command, "--help"])
            out = capsys.readouterr().out
            assert ("--presence-ttl" in out) is listed
            assert "tether[redis]" in out

    def test_a_killed_node_leaves_within_the_presence_ttl(self, tmp_path: Path) -> None:
        """Issue 14, finding 4, end to end: two chat nodes, one killed with SIGKILL; the
        other announces its member as left at most --presence-ttl after the kill."""
        from .hub.conftest import redis_running

        ttl = 20 * UNIT
        slack = 5 * UNIT  # the sweep's Redis call, the delivery, a busy test machine
        (tmp_path / "redis").mkdir()
        with redis_running(tmp_path / "redis") as redis, \
                server_process("chat", "--redis", redis.url, "--presence-ttl", str(ttl)
                               ) as (node_a, port_a), \
                server_process("chat", "--redis", redis.url, "--presence-ttl", str(ttl)
                               ) as (node_b, port_b):

            async def frame(ws: tether.WebSocket, kind: str) -> dict[str, object]:
                while True:
                    got = json.loads(await ws.recv())
                    if got["type"] == kind:
                        return dict(got)

            async def scenario() -> float:
                bob = await tether.connect(f"ws://127.0.0.1:{port_b}/ws?name=bob",
                                           origin=f"http://127.0.0.1:{port_b}")
                await bob.send('{"type": "subscribe", "topic": "lobby"}')
                await frame(bob, "presence")
                alice = await tether.connect(f"ws://127.0.0.1:{port_a}/ws?name=alice",
                                             origin=f"http://127.0.0.1:{port_a}")
                await alice.send('{"type": "subscribe", "topic": "lobby"}')
                assert (await frame(bob, "presence")).get("joined") == ["alice"]
                await asyncio.sleep(ttl)  # node A refreshes alice meanwhile: still there
                node_a.send_signal(signal.SIGKILL)  # no leave
                killed = time.monotonic()
                alice.transport.abort()
                left = await asyncio.wait_for(frame(bob, "presence"), 3 * ttl)
                assert left == {"type": "presence", "topic": "lobby", "left": ["alice"]}, left
                await bob.close()
                return time.monotonic() - killed

            took = asyncio.run(asyncio.wait_for(scenario(), 200 * UNIT))
            assert took <= ttl + slack, f"left after {took:.2f} s"
            node_b.send_signal(signal.SIGTERM)
            assert node_b.wait(100 * UNIT) == 0

    def test_workers_need_redis(self) -> None:
        result = subprocess.run(TETHER + ["chat", "--port", str(free_port()), "--workers", "2"],
                                capture_output=True, timeout=100 * UNIT)
        assert result.returncode == 2
        assert b"--workers > 1 needs --redis" in result.stderr

    def test_two_workers_serve_one_port_and_share_topics(self, tmp_path: Path) -> None:
        from .hub.conftest import redis_running

        (tmp_path / "redis").mkdir()
        with redis_running(tmp_path / "redis") as redis:
            with server_process("chat", "--workers", "2", "--redis", redis.url) as (server, port):
                wait_for_listeners(port, 2)

                async def scenario() -> set[str]:
                    url = f"ws://127.0.0.1:{port}/ws"
                    clients = [await tether.connect(f"{url}?name=c{i}",
                                                    origin=f"http://127.0.0.1:{port}")
                               for i in range(16)]
                    for ws in clients:
                        await ws.send('{"type": "subscribe", "topic": "lobby"}')
                        while True:  # subscribed, then the presence snapshot
                            frame = json.loads(await ws.recv())
                            if frame["type"] == "presence":
                                break
                    await clients[0].send(
                        '{"type": "publish", "topic": "lobby", "data": "hi all", "id": "1"}')
                    for ws in clients:
                        while True:
                            frame = json.loads(await ws.recv())
                            if frame["type"] == "message":
                                assert frame["data"] == "hi all" and frame["seq"] == 1
                                break
                    for ws in clients:
                        await ws.close()
                    return set()

                asyncio.run(asyncio.wait_for(scenario(), 300 * UNIT))
                server.send_signal(signal.SIGTERM)
                assert server.wait(200 * UNIT) == 0
                assert server.stderr is not None
                log = server.stderr.read().decode()
                pids = {part.split("=")[1] for line in log.splitlines() if "event=open" in line
                        for part in line.split() if part.startswith("pid=")}
                # The kernel spread the 16 connections over both workers (SO_REUSEPORT), and
                # every client got the message whichever worker it was on.
                assert len(pids) == 2, log

    def test_broadcast_nodes_share_messages(self, tmp_path: Path) -> None:
        from .hub.conftest import redis_running

        (tmp_path / "redis").mkdir()
        with redis_running(tmp_path / "redis") as redis, \
                server_process("broadcast", "--redis", redis.url) as (node_a, port_a), \
                server_process("broadcast", "--redis", redis.url) as (node_b, port_b):

            async def scenario() -> None:
                on_a = await tether.connect(f"ws://127.0.0.1:{port_a}/")
                on_b = await tether.connect(f"ws://127.0.0.1:{port_b}/")
                await on_a.send("from a")
                await on_b.send(b"\x00from b")
                got = [[await ws.recv(), await ws.recv()] for ws in (on_a, on_b)]
                assert got[0] == got[1]  # one order, whichever it is, on both nodes
                assert sorted(got[0], key=repr) == sorted(["from a", b"\x00from b"], key=repr)
                await on_a.close()
                await on_b.close()

            asyncio.run(asyncio.wait_for(scenario(), 200 * UNIT))
            for node in (node_a, node_b):
                node.send_signal(signal.SIGTERM)
                assert node.wait(100 * UNIT) == 0
