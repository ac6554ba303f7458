"""Log lines as JSON objects, one per line, for log shippers (``--log-format json``).

tether logs ``key=value`` lines (``event=open remote=127.0.0.1:50312 path=/ws ...``). The
JSON form has the same fields, parsed out of the message, beside the record's own: ``time``
(ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``pid``. A message that is not
``key=value`` pairs (a library's, or an exception's) goes in ``message``; a traceback in
``exception``. Values stay strings, as they were printed; a field named like one of the
record's own is prefixed with ``field_``.
"""

from __future__ import annotations

import json
import logging
import re
import time

__all__ = ["JsonFormatter", "parse_fields"]

_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|\S*)')
_RESERVED = ("time", "level", "logger", "pid", "message", "exception")


def parse_fields(message: str) -> dict[str, str] | None:
    """The ``key=value`` pairs of a message, or None when it is not made only of them.
    Quoted values lose their quotes (``reason="going away"`` gives ``going away``)."""
    fields: dict[str, str] = {}
    pos = 0
    end = len(message)
    while pos < end:
        if message[pos] == " ":
            pos += 1
            continue
        match = _PAIR.match(message, pos)
        if match is None:
            return None
        key, value = match.group(1), match.group(2)
        if value.startswith('"') and len(value) >= 2 and value.endswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        fields[key] = value
        pos = match.end()
    return fields or None


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        fields = parse_fields(message)
        if fields is None:
            out["message"] = message
        else:
            for key, value in fields.items():
                out[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)
