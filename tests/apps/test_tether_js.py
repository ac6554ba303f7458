"""tether.js under Node, against a scripted fake WebSocket (tether_js_cases.mjs): recovering
from the hub's `gap` notice (drop policy) without skipping or reordering seqs, resending a
publish with its id, publishes too big for the hub, the token option and setToken(), `direct`
frames. The browser tests cover the rest."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tether.apps.chat.server import STATIC_DIR

CASES = Path(__file__).with_name("tether_js_cases.mjs")


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Node 20 runs tether.js outside a browser)")
    module = (STATIC_DIR / "tether.js").as_uri()
    done = subprocess.run([node, str(CASES), module], capture_output=True, text=True,
                          timeout=60)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{done.stderr}"
    out = json.loads(lines[-1])
    assert done.returncode == 0 and "error" not in out, out.get("error", done.stderr)
    assert isinstance(out, dict)
    return out


class TestGapRecovery:
    """The "drop" slow-subscriber policy: messages after a `gap` notice are held until the
    replay that fills it has arrived; then everything goes out in seq order, each once."""

    def test_gap_filled_by_the_replay(self, results: dict[str, Any]) -> None:
        out = results["gapFilledByTheReplay"]
        assert out["resubscribe"] == {"type": "subscribe", "topic": "room", "since": 3,
                                      "epoch": "e1"}
        assert out["heldBack"] == [1, 2, 3]  # 7 and 8 wait for 4..6
        assert out["beforeLast"] == [1, 2, 3]  # and for the replay's end
        assert out["messages"] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
        assert out["gaps"] == []

    def test_gap_partly_filled(self, results: dict[str, Any]) -> None:
        out = results["gapPartlyFilled"]
        assert out["messages"] == [1, 2, 3, 6, 7, 8, 9]
        assert out["gaps"] == [[4, 5]]  # only what the history no longer has

    def test_gap_not_filled(self, results: dict[str, Any]) -> None:
        out = results["gapNotFilled"]
        assert out["messages"] == [1, 2, 3, 7, 8, 11]
        assert out["gaps"] == [[4, 6], [9, 10]]

    def test_no_replay_in_time_means_reconnect(self, results: dict[str, Any]) -> None:
        out = results["recoveryTimesOut"]
        assert out["resume"] == {"type": "subscribe", "topic": "room", "since": 3,
                                 "epoch": "e1"}
        assert out["messages"] == [1, 2, 3, 4, 5, 6, 7]
        assert out["gaps"] == [] and len(out["opens"]) == 2

    def test_drop_while_holding(self, results: dict[str, Any]) -> None:
        out = results["dropWhileHolding"]
        assert out["resume"]["since"] == 3  # the held 5 was never emitted
        assert out["messages"] == [1, 2, 3, 4, 5]

    def test_other_topics_go_on(self, results: dict[str, Any]) -> None:
        assert results["otherTopicsAreNotHeld"]["whileHolding"] == [1, 2, 3, 1]


class TestPublish:
    def test_resend_keeps_the_id(self, results: dict[str, Any]) -> None:
        out = results["resendKeepsTheId"]
        assert out["again"] == out["first"]
        assert out["ack"] == {"id": out["first"]["id"], "topic": "room", "seq": 4}
        prefix, _, counter = out["first"]["id"].rpartition("-")
        assert len(prefix) == 16 and int(prefix, 16) >= 0 and counter == "1"
        assert out["otherId"].rpartition("-")[0] != prefix  # each client its own prefix


class TestTooBig:
    """A publish the hub refuses as too_big fails with that code and is never sent again."""

    def test_the_hub_echoes_the_id(self, results: dict[str, Any]) -> None:
        out = results["tooBigWithItsId"]
        assert out["keys"] == ["type", "id", "topic", "data"]  # id where the hub looks
        assert out["refused"] == {"code": "too_big", "tether": True,
                                  "message": "frame with 70060 bytes exceeds limit of 65536 bytes"}
        assert out["resent"] == [out["smallId"]]  # only the small one goes again
        assert out["smallAck"]["seq"] == 4

    def test_an_error_without_id_fails_the_oldest_unanswered(
            self, results: dict[str, Any]) -> None:
        out = results["tooBigWithoutAnId"]
        assert out["refused"] == "too_big"
        assert out["resent"] == [out["ids"][2]]
        assert out["afterSeq"] == 5

    def test_max_frame_refuses_before_sending(self, results: dict[str, Any]) -> None:
        out = results["maxFrameRefusesAtOnce"]
        assert out["predicted"] == out["actual"] == 158  # UTF-8 bytes of the frame sent
        assert out["refused"] == "too_big" and out["sentForRefused"] == 0
        assert out["sentOnceUnknown"] == 1
        assert out["badData"] == "bad_data"

    def test_close_1009_fails_the_largest(self, results: dict[str, Any]) -> None:
        out = results["close1009FailsTheLargest"]
        assert out["refused"] == "too_big"
        assert out["resent"] == [out["smallId"]]
        assert out["opened"] == [[1009, True], [1006, False]]


class TestToken:
    def test_in_the_query(self, results: dict[str, Any]) -> None:
        out = results["tokenInTheQuery"]
        assert out["socketUrl"] == "ws://127.0.0.1:1/ws?name=zoe&token=s3+cret%26x"
        assert out["url"] == "ws://127.0.0.1:1/ws?name=zoe"
        assert out["protocols"] is None
        assert [o["url"] for o in out["opens"]] == ["ws://127.0.0.1:1/ws?name=zoe"]
        assert "token" not in out["keys"]
        assert "cret" not in out["json"]

    def test_as_a_subprotocol(self, results: dict[str, Any]) -> None:
        out = results["tokenAsASubprotocol"]
        assert out["socketUrl"] == "ws://127.0.0.1:1/ws"
        assert out["protocols"] == ["chat", "bearer.s3cret"]
        assert "s3cret" not in json.dumps(out["opens"])
        assert out["refused"] == ["bad_token", "bad_option"]

    def test_set_token_reconnects_now(self, results: dict[str, Any]) -> None:
        out = results["setTokenReconnectsNow"]
        assert out["newSocket"]  # at once, not after the minute of backoff
        assert out["url"] == "ws://127.0.0.1:1/ws?token=n3w+t0ken"
        assert "token" not in out["keys"] and "t0ken" not in out["json"]
        assert out["without"] == "ws://127.0.0.1:1/ws"

    def test_errors_do_not_show_it(self, results: dict[str, Any]) -> None:
        [error] = results["errorsDoNotShowTheToken"]["errors"]
        assert error["source"] == "socket"
        assert "s3cret" not in error["message"] and "***" in error["message"]


def test_presence_keeps_the_list(results: dict[str, Any]) -> None:
    out = results["presenceKeepsTheList"]
    assert out["events"] == [
        [["a", "b", "me"], 3, False, ["b", "a"], []],
        [["b", "me"], 2, False, ["me"], ["a"]],
        [["b", "c", "me"], 3, False, ["c"], []],
        [["a", "b"], 5, True, [], []],  # a snapshot starts over
        [["a", "b", "c", "d", "e"], 5, False, [], []],  # the next page
    ]
    assert out["asked"] is True and out["notMore"] is False
    assert out["request"] == {"type": "members", "topic": "room", "after": "b"}
    assert out["known"] == {"members": ["a", "b", "c", "d", "e"], "count": 5, "more": False}


def test_kicked_is_not_resubscribed(results: dict[str, Any]) -> None:
    out = results["kickedIsNotResubscribed"]
    assert out["events"] == [{"topic": "room", "reason": "kicked"}]
    assert out["failed"] == "not_subscribed"
    assert out["topics"] == []
    assert out["resubscribed"] == []  # the reconnect does not undo the kick
    assert out["resent"] == 0
    assert out["rejoined"] == ["room"]  # an explicit subscribe() does


def test_direct_frames(results: dict[str, Any]) -> None:
    assert results["directFrames"] == [
        {"data": {"chat": "welcome", "name": "carol"}, "sender": None, "time": 5}]
