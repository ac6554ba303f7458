"""The SQLite backend: durable history in one file, live feed and presence in-process.

History survives restarts: each topic keeps its epoch and its ``seq`` goes on where it
stopped, so clients resume across a server restart without a gap. The bounds (count and age)
are enforced by deleting old rows when a topic is published to and when the file is opened;
reads never return expired rows.

The calls to :mod:`sqlite3` are synchronous, made on the event loop's thread: each is one
indexed statement or one short transaction in WAL mode (tens of microseconds on a local disk),
cheaper than a hop to a thread. ``synchronous=NORMAL``: a committed message survives a crash
of the process; a power loss may lose the last few. One process owns a file: the latest
``seq`` of each topic is cached, so a second backend on the same file, in this process or
another, is refused while the first is open (an exclusive ``flock`` on ``FILE.lock``, which
holds the owner's pid; the kernel releases it when the owner exits, however it exits).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .base import (
    check_history_bounds,
    DEFAULT_HISTORY_AGE,
    DEFAULT_HISTORY_SIZE,
    Backend,
    BackendUnavailable,
    Envelope,
    HistoryResult,
)
from .memory import LocalFeed, new_epoch

__all__ = ["SQLiteBackend"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic    TEXT PRIMARY KEY,
    epoch    TEXT NOT NULL,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    topic  TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    epoch  TEXT NOT NULL,
    data   TEXT NOT NULL,
    sender TEXT,
    time   INTEGER NOT NULL,
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;
"""

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_encode_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _to_json(data: Any) -> str:
    text = _encode(data)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate: SQLite text must be valid UTF-8
            return _encode_ascii(data)
    return text


class SQLiteBackend(LocalFeed, Backend):
    """History in a SQLite file (created if missing), in WAL mode.

    Args:
        path: the database file; its directory must exist.
        history_size: messages kept per topic (default 1000).
        history_age: seconds a message is kept (default 24 h).
        clock: Unix time in seconds; tests pass a fake one.

    Raises:
        BackendUnavailable: the file cannot be opened or is not a database, or another
            backend (in this process or another) has it open.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_age: float = DEFAULT_HISTORY_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        check_history_bounds(history_size, history_age)
        self.path = Path(path)
        self.history_size = history_size
        self.history_age = history_age
        self.clock = clock
        self._topics: dict[str, tuple[str, int]] = {}  # topic -> (epoch, last_seq)
        self._lock = _lock(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            _unlock(self._lock)
            raise BackendUnavailable(f"cannot open {self.path}: {exc}") from exc
        try:
            with self._errors():
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA busy_timeout=1000")
                self._db.executescript(_SCHEMA)
                self._prune_all()
        except BackendUnavailable:
            self._db.close()
            _unlock(self._lock)
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        if self._closed:
            raise BackendUnavailable("the backend is closed")
        try:
            yield
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"{self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _cutoff(self, now: int) -> int:
        return now - int(self.history_age * 1000)

    def _prune_all(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE time < ?", (self._cutoff(self._now()),))
            db.execute(
                "DELETE FROM messages WHERE seq <= (SELECT last_seq FROM topics "
                "WHERE topics.topic = messages.topic) - ?",
                (self.history_size,),
            )

    def _state(self, topic: str) -> tuple[str, int]:
        """(epoch, last_seq) of a topic, creating it with a new epoch if it is new."""
        self._check_open()
        state = self._topics.get(topic)
        if state is None:
            with self._errors():
                row = self._db.execute(
                    "SELECT epoch, last_seq FROM topics WHERE topic = ?", (topic,)
                ).fetchone()
                if row is None:
                    row = (new_epoch(), 0)
                    self._db.execute("INSERT INTO topics VALUES (?, ?, ?)", (topic, *row))
            state = self._topics[topic] = (str(row[0]), int(row[1]))
        return state

    async def publish(self, topic: str, data: Any, sender: str | None = None) -> Envelope:
        text = _to_json(data)
        epoch, last_seq = self._state(topic)
        seq = last_seq + 1
        now = self._now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                (topic, seq, epoch, text, sender, now),
            )
            db.execute("UPDATE topics SET last_seq = ? WHERE topic = ?", (seq, topic))
            db.execute(
                "DELETE FROM messages WHERE topic = ? AND (seq <= ? OR time < ?)",
                (topic, seq - self.history_size, self._cutoff(now)),
            )
        self._topics[topic] = (epoch, seq)
        envelope = Envelope(topic, seq, epoch, data, sender, now)
        self.notify(topic, envelope)
        return envelope

    async def history(
        self, topic: str, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        epoch, last_seq = self._state(topic)
        cutoff = self._cutoff(self._now())
        after = 0 if since is None else since
        with self._errors():
            db = self._db
            if limit is None:
                rows = db.execute(
                    "SELECT seq, epoch, data, sender, time FROM messages "
                    "WHERE topic = ? AND seq > ? AND time >= ? ORDER BY seq",
                    (topic, after, cutoff),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT seq, epoch, data, sender, time FROM messages "
                    "WHERE topic = ? AND seq > ? AND time >= ? ORDER BY seq DESC LIMIT ?",
                    (topic, after, cutoff, max(limit, 0)),
                ).fetchall()
                rows.reverse()
            (oldest,) = db.execute(
                "SELECT MIN(seq) FROM messages WHERE topic = ? AND time >= ?", (topic, cutoff)
            ).fetchone()
        messages = tuple(
            Envelope(topic, seq, row_epoch, json.loads(data), sender, when)
            for seq, row_epoch, data, sender, when in rows
        )
        first = int(oldest) if oldest is not None else last_seq + 1
        gap = since is not None and since < first - 1
        return HistoryResult(messages, gap, first, epoch, last_seq)

    async def epoch(self, topic: str) -> str:
        return self._state(topic)[0]

    async def reset(self, topic: str) -> str:
        epoch = new_epoch()
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE topic = ?", (topic,))
            db.execute("INSERT OR REPLACE INTO topics VALUES (?, ?, 0)", (topic, epoch))
        self._topics[topic] = (epoch, 0)
        return epoch

    async def close(self) -> None:
        if not self._closed:
            self._close_feed()
            self._db.close()
            _unlock(self._lock)
            self._lock = None


def _lock(path: Path) -> int | None:
    """Lock ``path`` for this backend: an exclusive, non-blocking ``flock`` on ``path.lock``,
    which then holds our pid. None for ``:memory:`` and where there is no ``flock``.

    Raises:
        BackendUnavailable: another backend holds it, or the lock file cannot be opened.
    """
    if sys.platform == "win32" or str(path) == ":memory:":
        return None
    import fcntl

    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise BackendUnavailable(f"cannot open {lock_path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise BackendUnavailable(
            f"{path} is in use by another server{who}; one history file serves one "
            "process at a time (stop the other one, or give this one its own data folder)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock
