"""tether.logformat: key=value lines as JSON objects."""

from __future__ import annotations

import json
import logging

from tether.logformat import JsonFormatter, parse_fields


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("tether.hub", logging.WARNING, __file__, 1, message, args,
                             exc_info)


def test_pairs_quoted_and_plain() -> None:
    assert parse_fields('event=slow remote=127.0.0.1:5 reason="too slow: 5 bytes" empty=') == {
        "event": "slow", "remote": "127.0.0.1:5", "reason": "too slow: 5 bytes", "empty": ""}
    assert parse_fields(r'error="a \"quoted\" word"') == {"error": 'a "quoted" word'}


def test_not_pairs() -> None:
    assert parse_fields("connection handler failed") is None
    assert parse_fields("event=x and then prose") is None
    assert parse_fields("") is None


def test_format() -> None:
    out = json.loads(JsonFormatter().format(record("event=%s level=%d", "open", 3)))
    assert out["event"] == "open"
    assert out["field_level"] == "3"  # does not hide the record's own level
    assert out["level"] == "WARNING" and out["logger"] == "tether.hub"
    assert out["time"].endswith("Z") and "T" in out["time"]
    prose = json.loads(JsonFormatter().format(record("handler failed", exc=True)))
    assert prose["message"] == "handler failed"
    assert "ValueError: boom" in prose["exception"]
    assert "\n" not in JsonFormatter().format(record("handler failed", exc=True))
