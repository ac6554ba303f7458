"""Events the core hands to the I/O layer: small immutable nouns, built only by the core.

They are ``NamedTuple`` classes: immutable, slotted and the cheapest Python object to build, which
matters because one is built per message.
"""

from __future__ import annotations

from typing import NamedTuple, Union

from .http11 import Request, Response

__all__ = [
    "TextMessage",
    "BinaryMessage",
    "Ping",
    "Pong",
    "CloseFrame",
    "Event",
    "Request",
    "Response",
]


class TextMessage(NamedTuple):
    """A complete text message (all fragments reassembled, valid UTF-8)."""

    data: str


class BinaryMessage(NamedTuple):
    """A complete binary message (all fragments reassembled)."""

    data: bytes


class Ping(NamedTuple):
    """A ping frame was received; the core has already queued the pong."""

    data: bytes


class Pong(NamedTuple):
    """A pong frame was received."""

    data: bytes


class CloseFrame(NamedTuple):
    """A close frame, received (as an event) or sent (as a record on the connection).

    ``code`` is 1005 when the frame carried no code.
    """

    code: int
    reason: str

    def __str__(self) -> str:
        if self.code == 1005:
            return "close frame without code"
        reason = f" ({self.reason})" if self.reason else ""
        return f"close frame {self.code}{reason}"


Event = Union[Request, Response, TextMessage, BinaryMessage, Ping, Pong, CloseFrame]
