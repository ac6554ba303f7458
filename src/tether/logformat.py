"""The command line's log lines: text (``key=value``) or JSON objects, one per line, for log
shippers (``--log-format json``), written cheaply enough to leave on.

A server logs two lines per connection (``event=open``, ``event=close``). Through the stdlib's
defaults each costs about 20 µs, more than the rest of a handshake's Python code; here about
6 µs: the time text is rebuilt once per second (:class:`TextFormatter`), the pid is written
once, no caller, thread or process lookup is made per record (the logging module's own
"optimization" switches, :func:`configure`), the connection lines are held as their parts and
skip the logging module's dispatch when, at the flush, the command line's handler is the only
one in the way (:func:`log_event`), and the connection lines of 20 ms go out in one write
(:class:`LineBuffer`; every other line at once).

tether logs ``key=value`` lines (``event=open remote=127.0.0.1:50312 path=/ws ...``). The
JSON form has the same fields, parsed out of the message, beside the record's own: ``time``
(ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``pid``. A message that is not
``key=value`` pairs (a library's, or an exception's) goes in ``message``; a traceback in
``exception``. Values stay strings, as they were printed; a field named like one of the
record's own is prefixed with ``field_``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Any, TextIO

__all__ = ["JsonFormatter", "TextFormatter", "LineBuffer", "configure", "log_event",
           "parse_fields"]

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


class _Clock:
    """A time's text, rebuilt only when the second changes (``time.strftime`` costs about
    as much as the rest of a record)."""

    def __init__(self, pattern: str, utc: bool = False) -> None:
        self._pattern = pattern
        self._utc = utc
        self._second = -1
        self._text = ""

    def text(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            stamp = time.gmtime(second) if self._utc else time.localtime(second)
            self._text = time.strftime(self._pattern, stamp)
        return self._text


class TextFormatter(logging.Formatter):
    """``2026-12-07 04:57:52,123 level=INFO pid=4242 event=open ...``: the stdlib's
    ``%(asctime)s level=%(levelname)s pid=%(process)d %(message)s``, with the time text
    made once per second and the pid once."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock("%Y-%m-%d %H:%M:%S")
        self._pid = f" pid={os.getpid()} "

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{self._clock.text(record.created)},{int(record.msecs):03d} "
                f"level={record.levelname}{self._pid}{record.getMessage()}")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line

    def format_held(self, msg: str, args: tuple[object, ...], created: float) -> str:
        """A line of :func:`log_event`'s direct path (INFO, no exception), as :meth:`format`
        writes it, without a record object."""
        clock = self._clock
        second = int(created)
        stamp = clock._text if second == clock._second else clock.text(created)
        return (f"{stamp},{int((created - second) * 1000):03d} "
                f"level=INFO{self._pid}{msg % args if args else msg}")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock("%Y-%m-%dT%H:%M:%S", utc=True)
        self._pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, object] = {
            "time": f"{self._clock.text(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": self._pid,
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


class LineBuffer(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that holds the per-connection lines (``event=open``, ``event=close``:
    two per connection, thousands a second in a reconnect storm) and writes them together, in
    one write and one flush, at most ``DELAY`` seconds after the first of them (those that
    :func:`log_event` held as parts are formatted then too, together). Every other
    line goes out at once, after those held before it: start-up, warnings, errors. So do the
    held ones outside a running event loop and when 64 KiB are waiting. A process killed
    outright loses at most the connection lines of its last ``DELAY`` seconds
    (``logging.shutdown()``, run at exit, flushes)."""

    LIMIT = 65536
    DELAY = 0.02
    HELD = ("event=open ", "event=close ")
    HELD_SIZE = 160  # what a held line is counted as towards LIMIT before it is formatted

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        # Formatted lines, and log_event's held as (logger, msg, args, created).
        self._lines: list[str | tuple[logging.Logger, str, tuple[object, ...], float]] = []
        self._size = 0
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        message = record.msg
        if (record.levelno >= logging.WARNING or self._size >= self.LIMIT
                or not isinstance(message, str) or not message.startswith(self.HELD)):
            self.flush()
            return
        if not self._scheduled:
            self._schedule()

    def hold(self, logger: logging.Logger, msg: str, args: tuple[object, ...]) -> None:
        """:func:`log_event`'s path: a per-connection line held as its parts (a tuple: no
        record object yet). At flush, when this handler is still the only one the logger's
        lines reach, it is formatted with the others, off the connection's own path; else it
        becomes the record ``logger.info`` would have made, with the time it was logged."""
        self._lines.append((logger, msg, args, time.time()))
        self._size += self.HELD_SIZE
        if self._size >= self.LIMIT:
            self.flush()
        elif not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        """Flush in DELAY seconds (callers check that no flush is scheduled yet)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (also after the loop that was to flush them has stopped)
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self.DELAY, self.flush)

    def close(self) -> None:
        self.flush()
        super().close()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        held, self._lines, self._size = self._lines, [], 0
        lines: list[str] = []
        formatter = self.formatter
        # The command line's text lines: formatted straight from the held parts.
        text = formatter if type(formatter) is TextFormatter else None
        direct: dict[logging.Logger, bool] = {}  # decided once per logger and flush
        records: list[tuple[logging.Logger, str, tuple[object, ...], float]] = []
        for line in held:
            if isinstance(line, str):
                lines.append(line)
                continue
            logger, msg, args, created = line
            only = direct.get(logger)
            if only is None:
                only = direct[logger] = _only_to(self, logger)
            if not only:
                records.append(line)
                continue
            try:
                if text is not None:
                    lines.append(text.format_held(msg, args, created))
                else:
                    event: Any = _Event(logger.name, msg, args, created)
                    lines.append(self.format(event))
            except Exception:
                self.handleError(_Event(logger.name, msg, args, created))  # type: ignore[arg-type]
        self._write(lines)
        for logger, msg, args, created in records:
            _handle(logger, msg, args, created)

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        out = "\n".join(lines) + "\n"
        self.acquire()
        try:
            self.stream.write(out)
            self.stream.flush()
        except Exception:
            pass  # a closed or broken stream: the lines are lost, the server goes on
        finally:
            self.release()


def _msecs(created: float) -> float:
    """A record's ``msecs`` for the time ``created``, as LogRecord computes it."""
    return int((created - int(created)) * 1000) + 0.0


class _Event:
    """What the formatters and :class:`LineBuffer` read of a record: the direct path of
    :func:`log_event`, which skips the ``LogRecord`` (its constructor alone fills some twenty
    attributes these lines never show)."""

    __slots__ = ("name", "msg", "args", "created", "msecs")
    levelno = logging.INFO
    levelname = "INFO"
    exc_info = None
    exc_text = None
    stack_info = None

    def __init__(self, name: str, msg: str, args: tuple[object, ...], now: float) -> None:
        self.name = name
        self.msg = msg
        self.args = args
        self.created = now
        self.msecs = _msecs(now)

    def getMessage(self) -> str:  # noqa: N802 (LogRecord's name)
        return self.msg % self.args if self.args else self.msg


# The handler configure() installed, while it may be the only one (see log_event).
_sink: LineBuffer | None = None


def log_event(logger: logging.Logger, msg: str, *args: object) -> None:
    """``logger.info(msg, *args)``, for the lines written per connection (the caller has
    checked ``logger.isEnabledFor(logging.INFO)``). Once :func:`configure` installed the
    command line's handler, the line is held by it as its parts and, at its next flush (at
    most ``LineBuffer.DELAY`` later), written directly when that handler is the only one the
    logger's lines reach (no other handler or filter on the way), formatted the same: the
    logging module's dispatch (record, filters, handler chain, lock) costs more than the line
    itself, and so does checking the way per line. Otherwise, then, the line becomes the
    record ``logger.info`` makes, with the time it was logged, and goes the usual way (an
    application's own handlers, a test's capture). Without :func:`configure` it is
    ``logger.info``."""
    sink = _sink
    if sink is not None:
        sink.hold(logger, msg, args)
    else:
        logger.info(msg, *args)


def _handle(logger: logging.Logger, msg: str, args: tuple[object, ...], created: float) -> None:
    """What ``logger.info(msg, *args)`` would have done at ``created``: a held line whose
    logger reaches other handlers than the command line's by the time it is flushed."""
    record = logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, msg, args, None)
    record.created = created
    record.msecs = _msecs(created)
    logger.handle(record)


def _only_to(sink: LineBuffer, logger: logging.Logger) -> bool:
    root = logging.root
    node: logging.Logger | None = logger
    while node is not root:
        if node is None or node.filters or node.disabled or not node.propagate:
            return False
        for handler in node.handlers:  # a library's NullHandler (tether's own) does nothing
            if type(handler) is not logging.NullHandler:
                return False
        node = node.parent
    handlers = root.handlers
    return (len(handlers) == 1 and handlers[0] is sink and not root.filters
            and not sink.filters and sink.level <= logging.INFO)


def configure(level: int, stream: TextIO, json_lines: bool = False) -> None:
    """Set up the root logger as the command line does: one :class:`LineBuffer` on
    ``stream`` with the text or JSON formatter, and none of the per-record lookups its
    lines do not show (the calling function, the thread, the process: the logging module's
    documented optimization switches). As ``logging.basicConfig``, it does nothing when the
    root logger has handlers already (an application's own, or a test runner's)."""
    root = logging.getLogger()
    if root.handlers:
        return
    logging._srcfile = None  # documented: no findCaller() per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _sink
    handler = LineBuffer(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    _sink = handler
