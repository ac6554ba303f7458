"""The hub's JSON protocol as pure functions: every client frame, valid or not, and the
server frames' encoding."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.hub import Envelope, PresenceEvent
from tether.hub import protocol
from tether.hub.protocol import Ping, Publish, RequestError, Subscribe, Unsubscribe

LIMIT = 64 * 1024


def parse(frame: Any) -> Any:
    return protocol.parse_request(frame if isinstance(frame, (str, bytes)) else json.dumps(
        frame), LIMIT)


def error_of(frame: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(frame)
    return info.value


class TestParseRequest:
    def test_valid_requests(self) -> None:
        assert parse({"type": "subscribe", "topic": "a"}) == Subscribe("a")
        assert parse({"type": "subscribe", "topic": "a", "since": 0, "epoch": "e"}) == \
            Subscribe("a", 0, "e")
        assert parse({"type": "unsubscribe", "topic": "room/1"}) == Unsubscribe("room/1")
        assert parse({"type": "publish", "topic": "a", "data": None}) == Publish("a", None)
        assert parse({"type": "publish", "topic": "a", "data": [1], "id": "x"}) == \
            Publish("a", [1], "x")
        assert parse({"type": "ping"}) == Ping()
        assert parse({"type": "ping", "id": 7}) == Ping(7)
        assert parse({"type": "publish", "topic": "a", "data": 1, "extra": True}) == \
            Publish("a", 1)

    @pytest.mark.parametrize("topic", ["a", "A-z_0.9:/", "x" * 128])
    def test_valid_topics(self, topic: str) -> None:
        assert parse({"type": "subscribe", "topic": topic}) == Subscribe(topic)
        assert protocol.check_topic(topic) == topic

    @pytest.mark.parametrize("topic", ["", "x" * 129, "a b", "é", "a\n", "a?b", "a#"])
    def test_bad_topics(self, topic: str) -> None:
        error = error_of({"type": "subscribe", "topic": topic, "id": "r1"})
        assert (error.code, error.id) == ("bad_topic", "r1")
        with pytest.raises(ValueError):
            protocol.check_topic(topic)

    @pytest.mark.parametrize("frame, code, field", [
        (b"{}", "bad_frame", "binary"),
        ("[1]", "bad_frame", "object"),
        ('"type"', "bad_frame", "object"),
        ("{", "bad_json", "invalid JSON"),
        ("", "bad_json", "invalid JSON"),
        ('{"type": "ping", "x": NaN}', "bad_json", "NaN"),
        ('{"type": "ping", "x": -Infinity}', "bad_json", "Infinity"),
        ("[" * 100_000 + "]" * 100_000, "too_big", "exceeds limit of 65536"),
        ("[" * 30_000 + "]" * 30_000, "bad_json", "nested too deeply"),
        ('{"type": "ping", "x": ' + "9" * 5000 + "}", "bad_json", "invalid JSON"),
        ({}, "bad_field", '"type"'),
        ({"type": 1}, "bad_field", '"type"'),
        ({"type": "shout"}, "unknown_type", "expected subscribe"),
        ({"type": "subscribe"}, "bad_field", '"topic"'),
        ({"type": "subscribe", "topic": 5}, "bad_field", '"topic"'),
        ({"type": "subscribe", "topic": "a", "since": "3"}, "bad_field", '"since"'),
        ({"type": "subscribe", "topic": "a", "since": -1}, "bad_field", '"since"'),
        ({"type": "subscribe", "topic": "a", "since": 1.5}, "bad_field", '"since"'),
        ({"type": "subscribe", "topic": "a", "since": True}, "bad_field", '"since"'),
        ({"type": "subscribe", "topic": "a", "epoch": 3}, "bad_field", '"epoch"'),
        ({"type": "unsubscribe"}, "bad_field", '"topic"'),
        ({"type": "publish", "topic": "a"}, "bad_field", '"data"'),
        ({"type": "publish", "topic": "a", "data": 1, "id": 5}, "bad_field", '"id"'),
    ])
    def test_errors(self, frame: Any, code: str, field: str) -> None:
        error = error_of(frame)
        assert error.code == code
        assert field in error.message

    def test_error_carries_the_request_id(self) -> None:
        assert error_of({"type": "shout", "id": "q"}).id == "q"
        assert error_of({"type": "publish", "topic": "a", "id": "p"}).id == "p"
        assert error_of({"type": "shout", "id": 3}).id is None

    def test_size_limit_counts_utf8_bytes(self) -> None:
        small = json.dumps({"type": "ping", "id": "é" * 1000}, ensure_ascii=False)
        assert protocol.parse_request(small, 4000) == Ping("é" * 1000)
        with pytest.raises(RequestError) as info:
            protocol.parse_request(small, 1500)  # 1000 characters, 2000 bytes
        assert info.value.code == "too_big"
        assert "with 2026 bytes" in info.value.message


class TestTooBigKeepsTheId:
    """A frame too big to parse still gets its ``id`` echoed when the top-level ``id`` comes
    before any object or array, within the first 512 characters: what tether.js sends."""

    BIG = "x" * LIMIT

    def test_publish_from_tether_js(self) -> None:
        frame = json.dumps({"type": "publish", "id": "k3j9x0q2m4a1-7", "topic": "general",
                            "data": {"text": self.BIG}})
        error = error_of(frame)
        assert (error.code, error.id) == ("too_big", "k3j9x0q2m4a1-7")

    @pytest.mark.parametrize("frame, found", [
        ('{"type":"publish","id":"a","data":"D"}', "a"),
        (' \n{ "type" : "publish" , "n" : -1.5e3, "ok": true, "no": null, "id" : "b" , '
         '"data": "D"}', "b"),
        ('{"type":"publish","topic":"t","data":"D","id":"after-a-string"}', "after-a-string"),
        ('{"id":"q\\u00e9\\"\\\\"}', 'qé"\\'),
        ('{"id":"first","id":"second","data":"D"}', "first"),
        # Not found: after an object or array, nested, not a string, cut by the window.
        ('{"type":"publish","data":{"id":"inner"},"id":"late"}', None),
        ('{"type":"publish","data":["D"],"id":"late"}', None),
        ('{"type":"publish","id":7,"data":"D"}', None),
        ('{"type":"publish","pad":"' + "p" * 600 + '","id":"far"}', None),
        ('["id","x"]', None),
        ('{"type":"publish","id":"unterminated', None),
        ('{"type":"publish"}', None),
        ("{'id': 'single quotes'}", None),
        ('{"type":"publish","id":"ctl\u0001","data":"D"}', None),  # raw control character
    ])
    def test_leading_id(self, frame: str, found: str | None) -> None:
        assert protocol.leading_id(frame) == found
        if len(frame) < 2000:
            padded = frame + " " * LIMIT  # too big: the same id, or none
            assert error_of(padded).id == found

    def test_reads_only_the_window(self) -> None:
        """A pathological frame costs the window, not its size."""
        for frame in ('{"a":"' + "\\" * 1_000_000, '{"a":' + "1" * 1_000_000,
                      " " * 1_000_000 + '{"id":"x"}'):
            assert protocol.leading_id(frame) is None


class TestServerFrames:
    def test_message_and_presence(self) -> None:
        envelope = Envelope("t", 3, "e", {"x": [1]}, None, 1234)
        assert protocol.encode(protocol.message(envelope)) == (
            b'{"type":"message","topic":"t","seq":3,"epoch":"e","data":{"x":[1]},'
            b'"sender":null,"time":1234}')
        assert protocol.snapshot("t", ["a", "b"], 2) == {
            "type": "presence", "topic": "t", "members": ["a", "b"], "count": 2}
        assert protocol.snapshot("t", ["a"], 5) == {
            "type": "presence", "topic": "t", "members": ["a"], "count": 5, "more": True}
        assert protocol.changes("t", ["b", "c"], []) == {
            "type": "presence", "topic": "t", "joined": ["b", "c"]}
        assert protocol.changes("t", [], ["a"]) == {
            "type": "presence", "topic": "t", "left": ["a"]}
        assert protocol.gap("t", 4, 9) == {"type": "gap", "topic": "t", "from": 4, "to": 9}
        assert protocol.error("bad_json", "m") == {
            "type": "error", "code": "bad_json", "message": "m"}
        assert protocol.error("bad_json", "m", "i")["id"] == "i"

    def test_utf8_kept_and_lone_surrogates_escaped(self) -> None:
        assert protocol.encode({"t": "é\u2603"}) == '{"t":"é\u2603"}'.encode()
        assert protocol.dumps({"t": "é"}) == '{"t":"é"}'
        assert protocol.encode({"t": "é\ud800"}) == b'{"t":"\\u00e9\\ud800"}'
        assert protocol.dumps({"t": "\udfff"}) == '{"t":"\\udfff"}'
        assert json.loads(protocol.encode({"t": "\ud800"})) == {"t": "\ud800"}

    def test_not_json_is_refused(self) -> None:
        with pytest.raises(ValueError):
            protocol.encode(float("inf"))
        with pytest.raises(TypeError):
            protocol.encode({1j})
