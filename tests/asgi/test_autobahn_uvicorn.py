"""The Autobahn TestSuite against tether as uvicorn's WebSocket engine, driven by kosoku.

Autobahn under uvicorn runs once, in the C/uvloop pass; it exercises the engine glue, and the
pure-Python core is already covered by tests/compliance.

``kosoku.run_fuzzingclient`` connects once per case (all 517: 1.* - 10.*, and the
permessage-deflate cases 12.* and 13.*) to a bare ASGI echo app (text echoed as text, bytes as
bytes) served by ``uvicorn.Server`` in this process with ``ws=UvicornProtocol`` and
``ws_per_message_deflate=True``. The verdicts are judged exactly as in
tests/compliance/test_autobahn.py (its helpers, imported): FAILED, UNIMPLEMENTED and the
failing close verdicts fail the test; NON-STRICT / INFORMATIONAL pass only for the case ids in
its server allow-list. The per-case summary goes to
``reports/autobahn-server-uvicorn-{c,python}-{loop}.json``; the same ``AUTOBAHN_CASES`` /
``AUTOBAHN_EXCLUDE`` knobs select cases.
"""

from __future__ import annotations

import asyncio
import os
import time
import pytest

import kosoku  # not importorskip: the test extra installs it, compliance never skips silently

from ..compliance.test_autobahn import (
    EXPECTED_CASES_SERVER,
    HOST,
    MAX_MESSAGE_SIZE,
    RUN_TIMEOUT,
    SERVER_ALLOWED,
    _check,
    _globs,
)
from .conftest import asgi_echo, serving

pytestmark = [
    pytest.mark.compliance,
    pytest.mark.skipif(
        os.environ.get("TETHER_NO_EXTENSIONS") == "1",
        reason="Autobahn under uvicorn runs once, in the C/uvloop pass; it exercises the "
        "engine glue, and the pure-Python core is already covered by tests/compliance",
    ),
]


def test_autobahn_server_under_uvicorn() -> None:
    async def main() -> None:
        # As tests/compliance: messages up to MAX_MESSAGE_SIZE (cases 9.1.6 / 9.2.6 send
        # 16 MiB), and no heartbeat (a ping in the middle of a case fails it).
        async with serving(asgi_echo, ws_max_size=MAX_MESSAGE_SIZE, ws_ping_interval=0,
                           ws_ping_timeout=0, ws_per_message_deflate=True) as port:
            started = time.monotonic()
            try:
                results = await kosoku.run_fuzzingclient(
                    f"ws://{HOST}:{port}",
                    cases=_globs("AUTOBAHN_CASES"),
                    exclude_cases=_globs("AUTOBAHN_EXCLUDE"),
                )
            except kosoku.FailureError as failure:  # carries every result, not only failures
                results = failure.results
            # The verdicts first; then, on the way out, the helper's check of the engine's
            # tasks (an app task that ended with an exception fails the test too).
            _check("server-uvicorn", list(results), SERVER_ALLOWED, EXPECTED_CASES_SERVER,
                   time.monotonic() - started)

    try:
        asyncio.run(asyncio.wait_for(main(), RUN_TIMEOUT))
    except asyncio.TimeoutError:
        pytest.fail(f"the Autobahn run under uvicorn did not finish in {RUN_TIMEOUT}s (kosoku "
                    "has no handshake timeout: a server that never answers hangs a case)",
                    pytrace=False)
