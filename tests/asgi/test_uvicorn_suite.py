"""uvicorn's own WebSocket test suite, from its pinned sdist on PyPI, against tether's engine.

uvicorn's ``tests/protocols/test_websocket.py`` is parametrized by the engine class
(``ws_protocol_cls``). This test downloads the sdist of the uvicorn version the test extra
pins (checked against its SHA-256), extracts its tests, overrides that fixture with
``tether.asgi.UvicornProtocol``, and runs the file in a subprocess (a pytest of its own: its
conftest, not ours). Every test must pass, under both of uvicorn's HTTP parsers (httptools
and h11).

The few places where a test checks a detail of uvicorn's own engines are adapted below, each
with the reason; an adaptation that no longer applies fails this test, so an upgrade of the
pin gets looked at.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is in the test extra")

VERSION = "0.55.0"
SHA256 = "b65ae5f0f30cdcbc26a104b93d7d19723aa5f46fec3915a6c247d5795449331c"
SUITE = "tests/protocols/test_websocket.py"
TIMEOUT = 600  # seconds for the whole file (about 30 s here)

# (what uvicorn's file says, what it says here, why)
ADAPTATIONS = [
    (
        "            assert isinstance(protocol, (_WSProtocol, WebSocketsSansIOProtocol))",
        "            assert isinstance(protocol, ws_protocol_cls)",
        "the keepalive tests check that the engine is one of uvicorn's two classes; the "
        "attributes they read next (ping_sent_at, ping_timer) tether's engine has too",
    ),
    (
        '        config = Config(app=app, ws=ws_protocol_cls, http=http_protocol_cls, '
        'lifespan="off")\n        config.load()\n        self._server_state = ServerState()',
        '        config = Config(app=app, ws=ws_protocol_cls, http=http_protocol_cls, '
        'lifespan="off", ws_max_queue=1)\n        config.load()\n'
        '        self._server_state = ServerState()',
        "the in-process tests assert that reading pauses after one unread message: uvicorn's "
        "engines pause after every message whatever ws_max_queue says; tether pauses past "
        "ws_max_queue messages (32 by default), so these tests set it to 1",
    ),
    (
        "    def resume_reading(self) -> None:\n        self.reading_paused = False\n",
        "    def resume_reading(self) -> None:\n        self.reading_paused = False\n\n"
        "    def set_write_buffer_limits(self, high=None, low=None):\n        pass\n\n"
        "    def get_write_buffer_size(self):\n        return 0\n\n"
        "    def can_write_eof(self):\n        return False\n\n"
        "    def write_eof(self):\n        pass\n\n"
        "    def writelines(self, data):\n        self.buffer += b''.join(data)\n\n"
        "    def abort(self):\n        self.closed = True\n\n"
        "    def get_protocol(self):\n        return None\n\n"
        "    def set_protocol(self, protocol):\n        pass\n",
        "the in-process tests' mock transport has only the methods uvicorn's engines call; "
        "tether's also uses these methods of asyncio.Transport (write-buffer limits for "
        "backpressure, half-close, scatter writes)",
    ),
    (
        "        if ws_protocol_cls == _WSProtocol:\n"
        "            # wsproto automatically makes the message chunked",
        "        if ws_protocol_cls == _WSProtocol or ws_protocol_cls.__module__.startswith("
        '"tether"):\n            # wsproto automatically makes the message chunked',
        "a denial response whose app gave no Content-Length: wsproto's engine sends the body "
        "chunked as it comes, websockets' buffers it and adds Content-Length; tether streams "
        "it chunked, as wsproto's does",
    ),
]

CONFTEST = '''
import pytest
from tether.asgi import UvicornProtocol


@pytest.fixture(params=[pytest.param(UvicornProtocol, id="tether")])
def ws_protocol_cls(request):
    return request.param
'''


def _sdist(cache: Path) -> Path:
    """uvicorn's sdist, downloaded once per virtual environment and checked."""
    path = cache / f"uvicorn-{VERSION}.tar.gz"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", "--dest", str(cache), f"uvicorn=={VERSION}"],
            check=True, timeout=300,
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == SHA256, f"{path} is not uvicorn {VERSION}'s sdist (sha256 {digest})"
    return path


def _extract_tests(sdist: Path, target: Path) -> Path:
    prefix = f"uvicorn-{VERSION}/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers()
                   if m.name.startswith(prefix + "tests/") and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(target, members=members, filter="data")
    return target


def test_uvicorn_websocket_suite_passes_on_tether(tmp_path: Path) -> None:
    assert uvicorn.__version__ == VERSION, (
        f"the test extra pins uvicorn {VERSION}, {uvicorn.__version__} is installed")
    root = _extract_tests(_sdist(Path(sys.prefix) / "tether-test-cache"), tmp_path)
    suite = root / SUITE
    text = suite.read_text()
    for old, new, why in ADAPTATIONS:
        assert text.count(old) >= 1, f"an adaptation no longer applies ({why}): {old!r}"
        text = text.replace(old, new)
    suite.write_text(text)
    (root / "tests" / "protocols" / "conftest.py").write_text(CONFTEST)

    report = tmp_path / "report.xml"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider",
         "-W", "ignore::DeprecationWarning", "-k", "not zttp",  # zttp: not installed
         "-o", "faulthandler_timeout=60", f"--junitxml={report}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    tail = (result.stdout + result.stderr)[-6000:]
    assert report.exists(), f"uvicorn's suite did not run:\n{tail}"
    suite_element = ElementTree.parse(report).getroot()
    if suite_element.tag == "testsuites":
        suite_element = suite_element[0]
    counts = {key: int(suite_element.get(key, "0"))
              for key in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == 0 and counts["errors"] == 0, f"{counts}\n{tail}"
    assert result.returncode == 0, tail
    # Both HTTP parsers, every test: uvicorn 0.55.0's file has 79 tests a parser.
    passed = counts["tests"] - counts["skipped"]
    assert passed >= 150, f"only {passed} tests ran: {counts}\n{tail}"
    skipped = [case for case in suite_element.iter("testcase")
               if case.find("skipped") is not None]
    assert skipped == [], [case.get("name") for case in skipped]
