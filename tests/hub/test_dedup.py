"""PublishLog: the hub's bounded memory of recent publishes (by count and age, per topic)."""

from __future__ import annotations

import asyncio

import pytest

from tether.hub.dedup import Key, PublishLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(n: int, sender: str = "alice") -> Key:
    return (sender, f"id-{n}", b"digest")


class TestPublishLog:
    def test_remembers_and_forgets_by_count(self) -> None:
        log = PublishLog(size=3, clock=Clock())
        for n in range(1, 5):
            log.put("t", key(n), n)
        assert log.get("t", key(1)) is None  # the oldest went
        assert [log.get("t", key(n)) for n in (2, 3, 4)] == [2, 3, 4]
        assert log.get("u", key(2)) is None  # per topic
        assert log.get("t", key(2, "bob")) is None  # per sender
        log.put("u", key(1), 7)
        assert len(log) == 4  # the bound is per topic

    def test_put_again_makes_a_key_the_newest(self) -> None:
        log = PublishLog(size=2, clock=Clock())
        log.put("t", key(1), 1)
        log.put("t", key(2), 2)
        log.put("t", key(1), 1)
        log.put("t", key(3), 3)
        assert log.get("t", key(1)) == 1 and log.get("t", key(2)) is None

    def test_forgets_by_age(self) -> None:
        clock = Clock()
        log = PublishLog(size=100, age=60, clock=clock)
        log.put("t", key(1), 1)
        clock.now += 30
        log.put("t", key(2), 2)
        clock.now += 31
        assert log.get("t", key(1)) is None  # 61 s old
        assert log.get("t", key(2)) == 2
        log.put("t", key(3), 3)
        assert len(log) == 2  # the expired key was dropped on put

    def test_idle_topics_are_dropped(self) -> None:
        clock = Clock()
        log = PublishLog(size=100, age=60, clock=clock)
        for topic in ("a", "b", "c"):
            log.put(topic, key(1), 1)
            clock.now += 20
        assert log.topics() == ["a", "b", "c"]
        log.put("d", key(1), 1)  # a's newest is 60 s old: still kept
        assert log.topics() == ["a", "b", "c", "d"]
        clock.now += 21  # a is 81 s old, b 61 s, c 41 s
        log.put("d", key(2), 2)
        assert log.topics() == ["c", "d"]
        clock.now += 1000
        log.put("e", key(1), 1)
        assert log.topics() == ["e"] and len(log) == 1

    def test_settle(self) -> None:
        async def main() -> None:
            log = PublishLog(size=2, clock=Clock())
            pending: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            log.put("t", key(1), pending)
            assert log.get("t", key(1)) is pending
            log.put("t", key(2), 2)
            log.settle("t", key(1), pending, 5)
            assert log.get("t", key(1)) == 5
            log.put("t", key(3), 3)  # settling kept key 1's place: it is the oldest
            assert log.get("t", key(1)) is None

            failed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            log.put("t", key(4), failed)
            log.settle("t", key(4), failed, None)
            assert log.get("t", key(4)) is None
            # Settling a key that was pushed out, or that holds another entry: nothing.
            log.settle("t", key(1), pending, 9)
            log.settle("gone", key(1), pending, 9)
            log.put("t", key(5), 5)
            log.settle("t", key(5), pending, 9)
            assert log.get("t", key(5)) == 5 and log.get("t", key(1)) is None

        asyncio.run(main())

    def test_bounds_are_checked(self) -> None:
        with pytest.raises(ValueError):
            PublishLog(size=0)
        with pytest.raises(ValueError):
            PublishLog(age=0)
