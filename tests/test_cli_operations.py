"""What an operator runs: health checks on every server command, /metrics, JSON logs, the
drain before a graceful stop. Real processes on loopback, as a load balancer or Prometheus
would see them."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tether
from tether.cli import main

from .test_cli import TETHER, UNIT, free_port, server_process, wait_for_port

COMMANDS = {
    "echo": [],
    "broadcast": [],
    "chat": ["--data", "-"],
    "term": [],
    "exec": ["--", "cat"],
}


def http_get(port: int, path: str, headers: dict[str, str] | None = None
             ) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=50 * UNIT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples and ``name{label=value,...}`` of a /metrics page."""
    status, text = http_get(port, "/metrics")
    assert status == 200, text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


class TestHealthOnEveryCommand:
    @pytest.mark.parametrize("command", list(COMMANDS))
    def test_healthz_and_readyz_without_token_or_origin(self, command: str,
                                                        tmp_path: Path) -> None:
        # A token, an Origin allow-list: neither applies to the probes.
        args = [*(["--token", "secret"]), "--allow-origin", "https://app.example"]
        extra = COMMANDS[command]
        if extra[:1] == ["--"]:
            args = args + extra
        else:
            args = extra + args
        with server_process(command, *args) as (server, port):
            assert http_get(port, "/healthz") == (200, "ok\n")
            assert http_get(port, "/readyz") == (200, "ready\n")
            server.send_signal(signal.SIGTERM)
            assert server.wait(100 * UNIT) == 0

    def test_not_ready_at_max_connections(self) -> None:
        with server_process("echo", "--max-connections", "1") as (_, port):

            async def scenario() -> None:
                async with tether.connect(f"ws://127.0.0.1:{port}/"):
                    loop = asyncio.get_running_loop()
                    status, body = await loop.run_in_executor(None, http_get, port, "/readyz")
                    assert (status, body) == (503, "not ready: at capacity\n")
                    assert (await loop.run_in_executor(None, http_get, port, "/healthz")
                            )[0] == 200

            asyncio.run(asyncio.wait_for(scenario(), 100 * UNIT))
            assert http_get(port, "/readyz")[0] == 200

    def test_draining_before_a_graceful_stop(self) -> None:
        with server_process("echo", "--shutdown-delay", "30") as (server, port):

            async def scenario() -> None:
                async with tether.connect(f"ws://127.0.0.1:{port}/") as ws:
                    server.send_signal(signal.SIGTERM)
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 50 * UNIT
                    while True:
                        status, body = await loop.run_in_executor(None, http_get, port,
                                                                  "/readyz")
                        if status == 503 or loop.time() > deadline:
                            break
                        await asyncio.sleep(UNIT / 5)
                    assert (status, body) == (503, "not ready: shutting down\n")
                    # Still serving: the open connection, a new one, liveness.
                    await ws.send("still here")
                    assert await ws.recv() == "still here"
                    async with tether.connect(f"ws://127.0.0.1:{port}/") as other:
                        await other.send("new")
                        assert await other.recv() == "new"
                    assert (await loop.run_in_executor(None, http_get, port, "/healthz")
                            )[0] == 200
                    server.send_signal(signal.SIGTERM)  # a second signal cuts the delay short
                    with pytest.raises(tether.ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 100 * UNIT)
                    assert ws.close_code == 1001

            asyncio.run(asyncio.wait_for(scenario(), 200 * UNIT))
            assert server.wait(100 * UNIT) == 0


class TestMetrics:
    def test_on_the_server_port(self) -> None:
        with server_process("echo", "--metrics") as (_, port):
            before = scrape(port)
            assert before["tether_messages_received_total"] == 0

            async def scenario() -> None:
                async with tether.connect(f"ws://127.0.0.1:{port}/some/path") as ws:
                    for i in range(5):
                        await ws.send(str(i))
                        assert await ws.recv() == str(i)
                    loop = asyncio.get_running_loop()
                    during = await loop.run_in_executor(None, scrape, port)
                    assert during["tether_connections{route=*}"] == 1
                    assert during["tether_messages_received_total"] == 5
                    assert during["tether_messages_sent_total"] == 5
                    assert during["tether_deflate_contexts"] == 1

            asyncio.run(asyncio.wait_for(scenario(), 100 * UNIT))
            after = scrape(port)
            assert after["tether_connections{route=*}"] == 0
            assert after["tether_closes_total{code=1000,initiator=client}"] == 1
            assert after["tether_handshakes_total{outcome=upgraded,status=101}"] == 1
            assert after["tether_event_loop_lag_seconds_count"] >= 0
            assert after["tether_http_requests_total{status=200}"] >= 2  # the scrapes

    def test_on_its_own_port_with_the_hub(self) -> None:
        metrics_port = free_port()
        with server_process("chat", "--data", "-", "--metrics-port", str(metrics_port)
                            ) as (server, port):
            wait_for_port(metrics_port, server)
            assert http_get(port, "/metrics")[0] == 404  # not on the chat's port
            assert http_get(metrics_port, "/readyz") == (200, "ready\n")

            async def scenario() -> None:
                url = f"ws://127.0.0.1:{port}/ws?name=op"
                async with tether.connect(url, origin=f"http://127.0.0.1:{port}") as ws:
                    await ws.recv()  # welcome
                    await ws.send(json.dumps({"type": "subscribe", "topic": "room",
                                              "id": 1}))
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 50 * UNIT
                    while True:
                        samples = await loop.run_in_executor(None, scrape, metrics_port)
                        if samples.get("tether_hub_subscribers") == 1 or \
                                loop.time() > deadline:
                            break
                        await asyncio.sleep(UNIT / 5)
                    assert samples["tether_hub_topics"] == 1
                    assert samples["tether_connections{route=/ws}"] == 1

            asyncio.run(asyncio.wait_for(scenario(), 100 * UNIT))

    def test_without_the_extra_one_line_and_exit_2(self,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        err = io.StringIO()
        with redirect_stderr(err):
            code = main(["echo", "--port", str(free_port()), "--metrics", "--quiet"])
        assert code == 2
        assert err.getvalue() == ("tether echo: metrics need prometheus_client: "
                                  "pip install 'tether[metrics]'\n")


class TestJsonLogs:
    def test_one_object_per_line_with_the_same_fields(self) -> None:
        with server_process("echo", "--log-format", "json") as (server, port):
            result = subprocess.run(TETHER + ["connect", f"ws://127.0.0.1:{port}/x"],
                                    input=b"hi\n", capture_output=True, timeout=100 * UNIT)
            assert result.returncode == 0
            http_get(port, "/nowhere", {"Upgrade": "websocket", "Connection": "Upgrade"})
            time.sleep(UNIT)
            server.send_signal(signal.SIGTERM)
            assert server.wait(100 * UNIT) == 0
            assert server.stderr is not None
            lines = server.stderr.read().decode().splitlines()
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        events = {record.get("event"): record for record in records}
        assert {"listen", "open", "close", "http", "shutdown"} <= set(events)
        close = events["close"]
        assert close["code"] == "1000" and close["path"] == "/x"
        assert close["level"] == "INFO" and close["logger"] == "tether"
        assert close["time"].endswith("Z") and isinstance(close["pid"], int)
        assert events["http"]["status"] == "400"
        # urllib says "Connection: close"; the quoted reason comes out whole, unquoted.
        assert events["http"]["reason"] == "Connection header must include Upgrade"


class TestReadyWithRedis:
    @pytest.mark.parametrize("command", ["chat", "broadcast"])
    def test_not_ready_while_redis_is_down(self, command: str, tmp_path: Path) -> None:
        """A --redis node answers /readyz 503 while its Redis is unreachable, even with no
        client at all, and 200 again once it is back (on the same port)."""
        from .hub.conftest import redis_running

        def wait_ready(port: int, status: int) -> tuple[int, str]:
            deadline = time.monotonic() + 100 * UNIT
            while True:
                got = http_get(port, "/readyz")
                if got[0] == status or time.monotonic() > deadline:
                    return got
                time.sleep(UNIT / 2)

        (tmp_path / "redis").mkdir()
        with redis_running(tmp_path / "redis") as redis, \
                server_process(command, "--redis", redis.url) as (server, port):
            assert http_get(port, "/readyz") == (200, "ready\n")
            redis.stop(signal.SIGKILL)
            assert wait_ready(port, 503) == (503, "not ready: redis unreachable\n")
            assert http_get(port, "/healthz") == (200, "ok\n")  # alive all along
            redis.start()
            assert wait_ready(port, 200) == (200, "ready\n")
            server.send_signal(signal.SIGTERM)
            assert server.wait(100 * UNIT) == 0


class TestChatFindings:
    def test_auth_check_and_the_limit_the_page_is_told(self) -> None:
        """Issue 14, findings 6 and 7, as `tether chat` wires them: /auth-check answers with
        the server's own token check; the welcome's max_frame is the smaller of the hub's
        limit and --max-size."""
        with server_process("chat", "--data", "-", "--token", "s3cret", "--max-size", "1000"
                            ) as (_, port):
            assert http_get(port, "/auth-check")[0] == 401
            assert http_get(port, "/auth-check", {"Authorization": "Bearer nope"})[0] == 401
            assert http_get(port, "/auth-check", {"Authorization": "Bearer s3cret"})[0] == 204

            async def scenario() -> None:
                async with tether.connect(f"ws://127.0.0.1:{port}/ws?name=x",
                                          headers=[("Authorization", "Bearer s3cret")],
                                          origin=f"http://127.0.0.1:{port}") as ws:
                    welcome = json.loads(await ws.recv())
                    assert welcome["data"]["max_frame"] == 1000

            asyncio.run(asyncio.wait_for(scenario(), 100 * UNIT))
