"""The backend contract (tether.hub.base.Backend), run against every backend: seq
assignment and order, history and its bounds (count, age), epochs, the live feed, presence."""

from __future__ import annotations

from typing import Any

import pytest

from tether.hub import BackendUnavailable, Envelope, PresenceEvent

from .conftest import BackendKind, Clock, run


class TestBackendContract:
    def test_seq_from_one_per_topic_in_publish_order(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            a = [await backend.publish("a", {"n": n}, "alice") for n in range(5)]
            b = await backend.publish("b", None)
            assert [e.seq for e in a] == [1, 2, 3, 4, 5]
            assert b.seq == 1 and b.sender is None and b.data is None
            assert a[0].epoch == a[4].epoch == await backend.epoch("a")
            assert await backend.epoch("b") != await backend.epoch("a")
            assert a[2] == Envelope("a", 3, a[0].epoch, {"n": 2}, "alice", a[2].time)
            result = await backend.history("a")
            assert [e.data for e in result.messages] == [{"n": n} for n in range(5)]
            assert result.messages == tuple(a)
            assert (result.gap, result.first, result.last_seq) == (False, 1, 5)
            await backend.close()

        run(main())

    def test_json_values_round_trip(self, backend_kind: BackendKind) -> None:
        values = [None, True, 0, -1.5, "héllo \u2603", [1, [2, {"x": None}]], {"": ""}]

        async def main() -> None:
            backend = backend_kind.open()
            for value in values:
                await backend.publish("t", value)
            result = await backend.history("t")
            assert [e.data for e in result.messages] == values
            await backend.close()

        run(main())

    def test_history_since_and_limit(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            for n in range(1, 11):
                await backend.publish("t", n)
            since = await backend.history("t", since=7)
            assert [e.seq for e in since.messages] == [8, 9, 10] and not since.gap
            last = await backend.history("t", limit=3)
            assert [e.seq for e in last.messages] == [8, 9, 10]
            both = await backend.history("t", since=2, limit=2)
            assert [e.seq for e in both.messages] == [9, 10]
            assert (await backend.history("t", limit=0)).messages == ()
            assert (await backend.history("t", since=10)).messages == ()
            assert (await backend.history("t", since=99)).messages == ()
            assert (await backend.history("t", limit=50)).last_seq == 10
            empty = await backend.history("new")
            assert (empty.messages, empty.gap, empty.first, empty.last_seq) == ((), False, 1, 0)
            await backend.close()

        run(main())

    def test_history_bounded_by_count(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open(history_size=5)
            for n in range(1, 13):
                await backend.publish("t", n)
            result = await backend.history("t")
            assert [e.seq for e in result.messages] == [8, 9, 10, 11, 12]
            assert (result.first, result.last_seq, result.gap) == (8, 12, False)
            assert (await backend.history("t", since=7)).gap is False
            old = await backend.history("t", since=2)
            assert old.gap is True and [e.seq for e in old.messages] == [8, 9, 10, 11, 12]
            await backend.close()

        run(main())

    def test_default_bounds(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            assert backend.history_size == 1000
            assert backend.history_age == 24 * 3600
            await backend.close()

        run(main())

    def test_history_bounded_by_age(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            clock = Clock()
            backend = backend_kind.open(history_age=60.0, clock=clock)
            await backend.publish("t", "old")  # t = 0
            clock.now += 30
            await backend.publish("t", "mid")  # t = 30
            clock.now += 40  # t = 70: "old" is 70 s old
            result = await backend.history("t")
            assert [e.data for e in result.messages] == ["mid"]
            assert (result.first, result.last_seq) == (2, 2)
            assert (await backend.history("t", since=0)).gap is True
            assert (await backend.history("t", since=1)).gap is False
            clock.now += 60  # everything expired, even without a publish
            gone = await backend.history("t", since=1)
            assert (gone.messages, gone.gap, gone.first, gone.last_seq) == ((), True, 3, 2)
            assert (await backend.history("t", since=2)).gap is False
            again = await backend.publish("t", "new")
            assert again.seq == 3  # seq goes on
            assert again.time == int(clock.now * 1000)
            await backend.close()

        run(main())

    def test_epoch_across_reopen(self, backend_kind: BackendKind) -> None:
        """Durable backends keep the epoch and go on with seq; volatile ones start a new
        epoch (so that resuming clients learn their since is meaningless)."""

        async def main() -> None:
            backend = backend_kind.open()
            first = await backend.publish("t", 1)
            await backend.publish("t", 2)
            await backend.close()
            reopened = backend_kind.open()
            epoch = await reopened.epoch("t")
            result = await reopened.history("t")
            following = await reopened.publish("t", 3)
            if backend_kind.durable:
                assert epoch == first.epoch
                assert [e.data for e in result.messages] == [1, 2]
                assert following.seq == 3 and following.epoch == first.epoch
            else:
                assert epoch != first.epoch
                assert result.messages == () and result.last_seq == 0
                assert following.seq == 1
            await reopened.close()

        run(main())

    def test_epoch_of_an_empty_topic_is_kept(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            epoch = await backend.epoch("quiet")
            assert (await backend.history("quiet")).epoch == epoch
            assert (await backend.publish("quiet", 1)).epoch == epoch
            await backend.close()

        run(main())

    def test_reset_starts_a_new_epoch(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            before = await backend.publish("t", 1)
            epoch = await backend.reset("t")
            assert epoch != before.epoch and await backend.epoch("t") == epoch
            result = await backend.history("t")
            assert (result.messages, result.last_seq, result.epoch) == ((), 0, epoch)
            after = await backend.publish("t", 2)
            assert (after.seq, after.epoch) == (1, epoch)
            await backend.close()

        run(main())

    def test_live_feed_in_order(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            seen: list[Any] = []

            def listener(event: Envelope | PresenceEvent) -> None:
                seen.append(event)

            await backend.listen("t", listener)
            await backend.publish("other", "x")
            envelopes = [await backend.publish("t", n) for n in range(3)]
            assert seen == envelopes
            history_seen: list[int] = []

            def reader(event: Envelope | PresenceEvent) -> None:
                history_seen.append(event.seq if isinstance(event, Envelope) else -1)

            await backend.listen("t", reader)
            await backend.publish("t", 3)
            assert history_seen == [4] and len(seen) == 4
            await backend.unlisten("t", listener)
            await backend.unlisten("t", listener)  # twice: no error
            await backend.publish("t", 4)
            assert len(seen) == 4 and history_seen == [4, 5]
            await backend.close()

        run(main())

    def test_a_failing_listener_does_not_stop_the_others(
        self, backend_kind: BackendKind, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            seen: list[Any] = []

            def broken(event: Envelope | PresenceEvent) -> None:
                raise RuntimeError("boom")

            await backend.listen("t", broken)
            await backend.listen("t", seen.append)
            envelope = await backend.publish("t", 1)
            assert seen == [envelope]
            await backend.close()

        run(main())
        assert "listener for topic t failed" in caplog.text

    def test_presence(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            events: list[Any] = []
            await backend.listen("room", events.append)
            await backend.join("room", "m1", "bob")
            await backend.join("room", "m2", "alice")
            await backend.join("room", "m3", "alice")  # a second tab: no event
            await backend.join("room", "m3", "alice")  # a refresh: no event
            await backend.join("other", "m1", "bob")
            assert await backend.members("room") == ["alice", "bob"]
            assert await backend.members("nobody") == []
            # Changes only: never the member list (issue 17).
            assert events == [
                PresenceEvent("room", joined="bob"),
                PresenceEvent("room", joined="alice"),
            ]
            events.clear()
            await backend.leave("room", "m2")  # alice still has m3
            assert events == [] and await backend.members("room") == ["alice", "bob"]
            await backend.leave("room", "m3")
            await backend.leave("room", "m3")  # twice: no error
            await backend.leave("room", "unknown")
            assert events == [PresenceEvent("room", left="alice")]
            await backend.join("room", "m1", "robert")  # renamed: leaves then joins
            assert events[1:] == [
                PresenceEvent("room", left="bob"),
                PresenceEvent("room", joined="robert"),
            ]
            assert await backend.members("other") == ["bob"]
            await backend.close()

        run(main())

    def test_roster_pages_in_sorted_order(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            names = [f"m{i:03d}" for i in range(25)] + ["Zoë", "zoe", "éva", ""]
            for i, name in enumerate(reversed(names)):
                await backend.join("big", f"id{i}", name)
            await backend.join("big", "dup", "m007")  # a second tab: counted once
            expected = sorted(names)  # by code point, as Redis sorts UTF-8 bytes
            assert await backend.members("big") == expected
            first = await backend.roster("big", None, 10)
            assert (first.names, first.count) == (expected[:10], len(names))
            after = await backend.roster("big", first.names[-1], 10)
            assert after.names == expected[10:20]
            rest = await backend.roster("big", after.names[-1])
            assert rest.names == expected[20:]
            assert (await backend.roster("big", "", 3)).names == expected[1:4]
            assert (await backend.roster("nobody", None, 5)).count == 0
            await backend.leave("big", "id0")  # the last name joined: ""
            assert (await backend.roster("big", None, 2)).names == expected[1:3]
            await backend.close()

        run(main())

    def test_closed_backend_is_unavailable(self, backend_kind: BackendKind) -> None:
        async def main() -> None:
            backend = backend_kind.open()
            await backend.publish("t", 1)
            await backend.close()
            await backend.close()  # twice: no error
            with pytest.raises(BackendUnavailable):
                await backend.publish("t", 2)
            with pytest.raises(BackendUnavailable):
                await backend.history("t")
            with pytest.raises(BackendUnavailable):
                await backend.join("t", "m", "n")

        run(main())

    def test_negative_bounds_are_refused(self, backend_kind: BackendKind) -> None:
        with pytest.raises(ValueError):
            backend_kind.open(history_size=-1)
