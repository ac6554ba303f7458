"""tether.logformat: key=value lines as JSON objects."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

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


def test_text_format_as_the_stdlib_would() -> None:
    """TextFormatter is ``%(asctime)s level=%(levelname)s pid=%(process)d %(message)s``,
    made cheaper: the same line, the traceback after it."""
    import os

    from tether.logformat import TextFormatter

    stdlib = logging.Formatter("%(asctime)s level=%(levelname)s pid=%(process)d %(message)s")
    ours = TextFormatter()
    plain = record("event=open remote=%s", "127.0.0.1:5")
    plain.process = os.getpid()
    assert ours.format(plain) == stdlib.format(plain)
    failed = record("boom", exc=True)
    failed.process = os.getpid()
    line = ours.format(failed)
    assert line.startswith(stdlib.format(record("boom")).split(" level")[0][:10])
    assert line.splitlines()[0].endswith(f"level=WARNING pid={os.getpid()} boom")
    assert "ValueError: boom" in line


def test_line_buffer_writes_together_and_warnings_at_once() -> None:
    import asyncio
    import io

    from tether.logformat import LineBuffer, TextFormatter

    stream = io.StringIO()
    handler = LineBuffer(stream)
    handler.setFormatter(TextFormatter())
    info = record("event=open n=%d ok", 1)
    info.levelno, info.levelname = logging.INFO, "INFO"

    handler.emit(info)  # no running loop: written at once
    assert stream.getvalue().count("\n") == 1

    async def main() -> None:
        handler.emit(info)
        handler.emit(info)
        assert stream.getvalue().count("\n") == 1  # held for one write
        await asyncio.sleep(LineBuffer.DELAY * 3)
        assert stream.getvalue().count("\n") == 3
        handler.emit(info)
        handler.emit(record("event=warning"))  # a warning: everything goes out now
        assert stream.getvalue().count("\n") == 5
        handler.emit(info)
        listen = record("event=listen url=%s", "ws://127.0.0.1:1")
        listen.levelno, listen.levelname = logging.INFO, "INFO"
        handler.emit(listen)  # not a connection line: at once, after the one held
        assert stream.getvalue().splitlines()[-2:] == [
            handler.format(info), handler.format(listen)]
        handler.emit(info)
        # log_event's path: parts, held; formatted here at flush, as the only handler
        root = logging.getLogger()
        saved = root.handlers[:]
        root.handlers[:] = [handler]
        try:
            handler.hold(logging.getLogger("tether"), "event=close n=%d", (2,))
            text = stream.getvalue()
            await asyncio.sleep(0.01)
            handler.emit(record("event=warning"))  # formatted in order, before the warning
        finally:
            root.handlers[:] = saved
        lines = stream.getvalue()[len(text):].splitlines()
        assert [line.split(" pid=")[1].split(" ", 1)[1] for line in lines] == [
            "event=open n=1 ok", "event=close n=2", "event=warning"]
        assert lines[1][:23] < lines[2][:23]  # the time it was logged, not written
        handler.emit(info)
        handler.close()  # logging.shutdown() at exit: flush, then close

    asyncio.run(main())
    assert stream.getvalue().count("\n") == 11


def test_log_event_goes_straight_to_the_cli_handler_and_through_logging_otherwise() -> None:
    """log_event: the per-connection lines. With only the command line's handler in the way
    they skip the logging module's dispatch and read the same as logger.info's; with any
    other handler or filter on the way they are ordinary records."""
    import asyncio
    import io

    from tether import logformat

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logformat._sink)
    switches = (logging._srcfile, logging.logThreads, logging.logProcesses,  # type: ignore[attr-defined]
                logging.logMultiprocessing)
    root.handlers.clear()
    try:
        stream = io.StringIO()
        logformat.configure(logging.INFO, stream)
        import tether.asyncio.server  # noqa: F401  (gives "tether" its NullHandler)

        logger = logging.getLogger("tether")
        assert any(type(h) is logging.NullHandler for h in logger.handlers)
        fmt = "event=open remote=%s path=%s n=%d"
        records = 0
        factory = logging.getLogRecordFactory()

        def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
            nonlocal records
            records += 1
            return factory(*args, **kwargs)

        logging.setLogRecordFactory(counting)
        try:
            logformat.log_event(logger, fmt, "127.0.0.1:5", "/ws", 7)
            assert records == 0  # the direct path, past the library's NullHandler
            logger.info(fmt, "127.0.0.1:5", "/ws", 7)
            assert records == 1
        finally:
            logging.setLogRecordFactory(factory)
        direct, stdlib = stream.getvalue().splitlines()
        assert direct.split(" level=")[1] == stdlib.split(" level=")[1]
        assert direct.endswith("event=open remote=127.0.0.1:5 path=/ws n=7")
        # the same time text (a second may tick between the two lines)
        times = [datetime.fromisoformat(line[:19]) for line in (direct, stdlib)]
        assert timedelta(0) <= times[1] - times[0] <= timedelta(seconds=1)

        seen: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record)

        sink = root.handlers[0]
        keep = Keep()

        async def held() -> None:  # in a running loop: held until the flush
            logformat.log_event(logger, fmt, "127.0.0.1:6", "/", 8)
            logger.addHandler(keep)  # an application's own handler: records again
            try:
                logformat.log_event(logger, fmt, "127.0.0.1:6", "/", 9)
                assert seen == []  # decided when the lines are flushed, at most 20 ms later
                sink.flush()  # (what the loop's timer does)
            finally:
                logger.removeHandler(keep)

        before = time.time()
        asyncio.run(held())
        # Both held lines: the one logged before the handler came too.
        assert [r.getMessage() for r in seen] == ["event=open remote=127.0.0.1:6 path=/ n=8",
                                                  "event=open remote=127.0.0.1:6 path=/ n=9"]
        assert seen[1].created >= before and seen[1].created - before < 1.0
        assert seen[1].levelno == logging.INFO and seen[1].name == "tether"
        sink.flush()  # the sink's own copies, through the record's way
        assert stream.getvalue().splitlines()[-1].endswith("remote=127.0.0.1:6 path=/ n=9")
        logger.addFilter(lambda record: False)  # a filter on the way: honoured
        try:
            logformat.log_event(logger, fmt, "127.0.0.1:7", "/", 9)
            sink.flush()
            sink.flush()
        finally:
            logger.filters.clear()
        assert "127.0.0.1:7" not in stream.getvalue()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logformat._sink = saved[2]
        (logging._srcfile, logging.logThreads, logging.logProcesses,  # type: ignore[attr-defined]
         logging.logMultiprocessing) = switches
