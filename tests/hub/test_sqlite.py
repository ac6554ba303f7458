"""SQLiteBackend beyond the contract: the file, its rows, WAL mode, bounds on open, errors,
one owner per file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tether.hub import BackendUnavailable
from tether.hub.sqlite import SQLiteBackend

from .conftest import Clock, run


def rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT topic, seq, data, sender FROM messages ORDER BY topic, seq"
                          ).fetchall()


class TestSQLiteBackend:
    def test_messages_are_rows_and_old_rows_are_deleted(self, tmp_path: Path) -> None:
        path = tmp_path / "h.sqlite3"

        async def main() -> None:
            backend = SQLiteBackend(path, history_size=3)
            for n in range(5):
                await backend.publish("t", {"n": n}, "alice")
            await backend.publish("u", "x")
            assert rows(path) == [
                ("t", 3, '{"n":2}', "alice"), ("t", 4, '{"n":3}', "alice"),
                ("t", 5, '{"n":4}', "alice"), ("u", 1, '"x"', None),
            ]
            with sqlite3.connect(path) as db:
                assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
                epochs = dict(db.execute("SELECT topic, epoch FROM topics").fetchall())
            assert epochs["t"] == await backend.epoch("t")
            await backend.close()

        run(main())

    def test_bounds_applied_on_open(self, tmp_path: Path) -> None:
        path = tmp_path / "h.sqlite3"
        clock = Clock()

        async def main() -> None:
            backend = SQLiteBackend(path, clock=clock)
            for n in range(10):
                await backend.publish("t", n)
            await backend.publish("old", "x")
            await backend.close()
            clock.now += 3600
            smaller = SQLiteBackend(path, history_size=4, history_age=1800, clock=clock)
            assert [r[1] for r in rows(path)] == []  # all older than 30 min
            await smaller.close()
            clock.now -= 3600
            again = SQLiteBackend(path, history_size=4, clock=clock)
            await again.close()

        run(main())

    def test_count_bound_on_open(self, tmp_path: Path) -> None:
        path = tmp_path / "h.sqlite3"

        async def main() -> None:
            backend = SQLiteBackend(path)
            for n in range(10):
                await backend.publish("t", n)
            await backend.close()
            smaller = SQLiteBackend(path, history_size=4)
            assert [r[1] for r in rows(path)] == [7, 8, 9, 10]
            assert (await smaller.publish("t", 10)).seq == 11
            assert [r[1] for r in rows(path)] == [8, 9, 10, 11]
            await smaller.close()

        run(main())

    def test_unicode_and_surrogates_are_stored(self, tmp_path: Path) -> None:
        async def main() -> None:
            backend = SQLiteBackend(tmp_path / "h.sqlite3")
            await backend.publish("t", {"text": "日本語 \U0001f600", "lone": "\ud800"})
            (message,) = (await backend.history("t")).messages
            assert message.data == {"text": "日本語 \U0001f600", "lone": "\ud800"}
            await backend.close()

        run(main())

    def test_not_json_is_refused_and_nothing_is_stored(self, tmp_path: Path) -> None:
        async def main() -> None:
            backend = SQLiteBackend(tmp_path / "h.sqlite3")
            with pytest.raises(TypeError):
                await backend.publish("t", object())
            with pytest.raises(ValueError):
                await backend.publish("t", float("nan"))
            assert (await backend.publish("t", 1)).seq == 1
            await backend.close()

        run(main())

    def test_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "h.sqlite3"
        path.write_bytes(b"this is not a database" * 100)
        with pytest.raises(BackendUnavailable, match="h.sqlite3"):
            SQLiteBackend(path)
        with pytest.raises(BackendUnavailable, match="cannot open"):
            SQLiteBackend(tmp_path / "missing-dir" / "h.sqlite3")

    def test_one_backend_per_file(self, tmp_path: Path) -> None:
        """The cached last seq would go wrong with two writers: the second is refused while
        the first is open, in this process or another, and the lock file names the owner."""
        path = tmp_path / "h.sqlite3"

        async def main() -> None:
            backend = SQLiteBackend(path)
            lock = tmp_path / "h.sqlite3.lock"
            assert lock.read_text() == f"{os.getpid()}\n"
            with pytest.raises(BackendUnavailable,
                               match=rf"in use by another server \(pid {os.getpid()}\)"):
                SQLiteBackend(path)
            other = subprocess.run(
                [sys.executable, "-c", "import sys; from tether.hub.sqlite import SQLiteBackend;"
                 " SQLiteBackend(sys.argv[1])", str(path)],
                capture_output=True, text=True, timeout=60)
            assert other.returncode == 1
            assert f"h.sqlite3 is in use by another server (pid {os.getpid()})" in other.stderr
            await backend.publish("t", 1)
            await backend.close()
            again = SQLiteBackend(path)  # free once closed
            assert (await again.publish("t", 2)).seq == 2
            await again.close()
            memory = [SQLiteBackend(":memory:"), SQLiteBackend(":memory:")]  # no file to share
            for backend in memory:
                await backend.close()

        run(main())

    def test_write_failure_is_unavailable_and_changes_nothing(self, tmp_path: Path) -> None:
        path = tmp_path / "h.sqlite3"

        async def main() -> None:
            backend = SQLiteBackend(path)
            await backend.publish("t", 1)
            blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            with pytest.raises(BackendUnavailable, match="locked"):
                await backend.publish("t", 2)
            blocker.execute("ROLLBACK")
            blocker.close()
            assert (await backend.publish("t", 2)).seq == 2  # no seq was lost
            assert [r[1] for r in rows(path)] == [1, 2]
            await backend.close()

        run(main())
