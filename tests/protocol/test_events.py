"""tether.protocol.events: small immutable events built by the core."""

from __future__ import annotations

import pytest

import tether.protocol
from tether.protocol.events import BinaryMessage, CloseFrame, Ping, Pong, TextMessage


class TestEvents:
    """Events are frozen and slotted (STYLE.md), one per message."""

    @pytest.mark.parametrize(
        "event", [TextMessage("t"), BinaryMessage(b"b"), Ping(b"p"), Pong(b"q"), CloseFrame(1000, "")]
    )
    def test_immutable_and_slotted(self, event: object) -> None:
        with pytest.raises(AttributeError):
            event.data = "changed"  # type: ignore[attr-defined]
        with pytest.raises(AttributeError):
            event.other = 1  # type: ignore[attr-defined]
        assert not hasattr(event, "__dict__")

    def test_fields(self) -> None:
        assert TextMessage("héllo").data == "héllo"
        assert BinaryMessage(b"\x00").data == b"\x00"
        frame = CloseFrame(1001, "bye")
        assert (frame.code, frame.reason) == (1001, "bye")

    def test_close_frame_str(self) -> None:
        assert str(CloseFrame(1005, "")) == "close frame without code"
        assert str(CloseFrame(1000, "")) == "close frame 1000"
        assert str(CloseFrame(1001, "bye")) == "close frame 1001 (bye)"

    def test_public_names(self) -> None:
        for name in tether.protocol.__all__:
            assert getattr(tether.protocol, name) is not None
