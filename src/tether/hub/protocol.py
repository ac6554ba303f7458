"""The hub's JSON protocol (docs/hub-protocol.md) as pure functions: client frames in,
requests or :class:`RequestError` out; server frames built as JSON. No I/O.

Outgoing JSON is compact and keeps non-ASCII characters as UTF-8, except in the rare object
holding a lone surrogate (``"\\ud800"`` is valid JSON), which is escaped as ASCII so that
every frame is valid UTF-8.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Union

from ..typing import Data
from .base import Envelope, PresenceEvent

__all__ = [
    "BAD_FIELD",
    "BAD_FRAME",
    "BAD_JSON",
    "BAD_TOPIC",
    "NOT_SUBSCRIBED",
    "RATE_LIMITED",
    "TOO_BIG",
    "UNAVAILABLE",
    "UNKNOWN_TYPE",
    "Ping",
    "Publish",
    "Request",
    "Members",
    "RequestError",
    "Subscribe",
    "Unsubscribe",
    "check_topic",
    "dumps",
    "encode",
    "error",
    "gap",
    "leading_id",
    "message",
    "parse_request",
    "snapshot",
    "changes",
]

BAD_JSON = "bad_json"
BAD_FRAME = "bad_frame"
TOO_BIG = "too_big"
UNKNOWN_TYPE = "unknown_type"
BAD_FIELD = "bad_field"
NOT_SUBSCRIBED = "not_subscribed"
BAD_TOPIC = "bad_topic"
RATE_LIMITED = "rate_limited"
UNAVAILABLE = "unavailable"

TOPIC = re.compile(r"[A-Za-z0-9\-_.:/]{1,128}", re.ASCII)
"""A topic: 1-128 characters, letters, digits and ``-_.:/``."""


class RequestError(Exception):
    """A client frame the hub cannot act on: answered with an ``error`` frame.

    Attributes:
        code: the error code (``bad_json``, ``bad_field``, ...).
        message: what was wrong, for humans; never an echo of the client's data.
        id: the request's ``id`` when it had one, echoed in the reply.
    """

    def __init__(self, code: str, message: str, id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(frozen=True, slots=True)
class Subscribe:
    topic: str
    since: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    data: Any
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: Any = None


@dataclass(frozen=True, slots=True)
class Members:
    """A page of a topic's members past the snapshot: the names after ``after``."""

    topic: str
    after: str | None = None
    id: str | None = None


Request = Union[Subscribe, Unsubscribe, Publish, Ping, Members]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(frame: Data, max_frame: int) -> Request:
    """Parse one client frame.

    Raises:
        RequestError: the frame is binary, too big, not JSON, not an object, of an unknown
            type, or a field is missing, of the wrong type, or out of range.
    """
    if not isinstance(frame, str):
        raise RequestError(BAD_FRAME, "binary frames are not part of the protocol: send JSON "
                           "text")
    size = len(frame)
    if size > max_frame or (size * 4 > max_frame and len(frame.encode(
            "utf-8", "surrogatepass")) > max_frame):
        size = len(frame.encode("utf-8", "surrogatepass"))
        raise RequestError(TOO_BIG, f"frame with {size} bytes exceeds limit of {max_frame} "
                           "bytes", leading_id(frame))
    try:
        obj = json.loads(frame, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RequestError(BAD_JSON, f"invalid JSON: {detail}") from None
    if not isinstance(obj, dict):
        raise RequestError(BAD_FRAME, "expected a JSON object with a \"type\"")
    kind = obj.get("type")
    request_id = obj.get("id")
    if kind == "ping":
        return Ping(request_id)
    if not isinstance(request_id, str):
        request_id = None
    if not isinstance(kind, str):
        raise RequestError(BAD_FIELD, "field \"type\" must be a string", request_id)
    if kind == "publish":
        if "id" in obj and obj["id"] is not None and request_id is None:
            raise RequestError(BAD_FIELD, "field \"id\" must be a string")
        topic = _topic_field(obj, request_id)
        if "data" not in obj:
            raise RequestError(BAD_FIELD, "field \"data\" is missing", request_id)
        return Publish(topic, obj["data"], request_id)
    if kind == "subscribe":
        topic = _topic_field(obj, request_id)
        since = obj.get("since")
        if since is not None and (type(since) is not int or since < 0):
            raise RequestError(BAD_FIELD, "field \"since\" must be an integer >= 0", request_id)
        epoch = obj.get("epoch")
        if epoch is not None and not isinstance(epoch, str):
            raise RequestError(BAD_FIELD, "field \"epoch\" must be a string", request_id)
        return Subscribe(topic, since, epoch)
    if kind == "unsubscribe":
        return Unsubscribe(_topic_field(obj, request_id))
    if kind == "members":
        topic = _topic_field(obj, request_id)
        after = obj.get("after")
        if after is not None and not isinstance(after, str):
            raise RequestError(BAD_FIELD, "field \"after\" must be a string", request_id)
        return Members(topic, after, request_id)
    raise RequestError(UNKNOWN_TYPE, "unknown type: expected subscribe, unsubscribe, publish, "
                       "members or ping", request_id)


# A JSON string, and a JSON scalar (string, number, true, false, null). The alternatives of
# each repetition are disjoint, so matching is linear in the input.
_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_SCALAR = _STRING + r"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null"
_OPEN = re.compile(r"[ \t\n\r]*\{")
_MEMBER = re.compile(
    rf"[ \t\n\r]*({_STRING})[ \t\n\r]*:[ \t\n\r]*({_SCALAR})[ \t\n\r]*([,}}])")
LEADING_ID_WINDOW = 512
"""Characters at the start of a frame too big to parse that :func:`leading_id` reads."""


def leading_id(frame: str) -> str | None:
    """The ``id`` of a frame too big to parse, when it is cheap and safe to find: a string
    value of the top-level object's ``id`` member, among the members that come before any
    object or array value, within the first :data:`LEADING_ID_WINDOW` characters. tether.js
    puts ``id`` second, right after ``type``. Anything else (an ``id`` after an object or
    array value, nested, cut by the window, not a string) gives None: the error then goes
    without an ``id``.

    Reads at most the window, whatever the frame's size; never parses the rest, so an
    ``"id"`` inside ``data`` is never taken for the request's.
    """
    head = frame[:LEADING_ID_WINDOW]
    match = _OPEN.match(head)
    if match is None:
        return None
    position = match.end()
    while (member := _MEMBER.match(head, position)) is not None:
        key, value, separator = member.groups()
        if json.loads(key) == "id":
            found = json.loads(value)
            return found if isinstance(found, str) else None
        if separator == "}":
            return None
        position = member.end()
    return None


def _topic_field(obj: dict[str, Any], request_id: str | None) -> str:
    topic = obj.get("topic")
    if not isinstance(topic, str):
        raise RequestError(BAD_FIELD, "field \"topic\" must be a string", request_id)
    if not TOPIC.fullmatch(topic):
        raise RequestError(BAD_TOPIC, "a topic is 1-128 characters: letters, digits, "
                           "-_.:/", request_id)
    return topic


def check_topic(topic: str) -> str:
    """Return ``topic`` if it is valid.

    Raises:
        ValueError: it is not 1-128 letters, digits or ``-_.:/``.
    """
    if not isinstance(topic, str) or not TOPIC.fullmatch(topic):
        raise ValueError(f"invalid topic {topic!r}: 1-128 letters, digits or -_.:/")
    return topic


# -- server frames -------------------------------------------------------------------------

_unicode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode


def encode(obj: Any) -> bytes:
    """``obj`` as compact JSON in UTF-8: a text frame's payload.

    Raises:
        TypeError, ValueError: ``obj`` is not a JSON value (NaN and infinities are not).
    """
    text = _unicode(obj)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return _ascii(obj).encode()


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON text that encodes to valid UTF-8."""
    text = _unicode(obj)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return str(_ascii(obj))
    return str(text)


def message(envelope: Envelope) -> dict[str, Any]:
    """The ``message`` frame of an envelope."""
    return {
        "type": "message",
        "topic": envelope.topic,
        "seq": envelope.seq,
        "epoch": envelope.epoch,
        "data": envelope.data,
        "sender": envelope.sender,
        "time": envelope.time,
    }


def snapshot(topic: str, names: list[str], count: int) -> dict[str, Any]:
    """The ``presence`` snapshot: the members (the first page of them, sorted) and how many
    there are; ``more`` when the page is not all of them."""
    frame: dict[str, Any] = {"type": "presence", "topic": topic, "members": names,
                             "count": count}
    if len(names) < count:
        frame["more"] = True
    return frame


def changes(topic: str, joined: list[str], left: list[str]) -> dict[str, Any]:
    """A ``presence`` change: the names that joined and left since the last frame."""
    frame: dict[str, Any] = {"type": "presence", "topic": topic}
    if joined:
        frame["joined"] = joined
    if left:
        frame["left"] = left
    return frame


def gap(topic: str, first: int, last: int) -> dict[str, Any]:
    """The ``gap`` notice: messages ``first``..``last`` were skipped (drop policy)."""
    return {"type": "gap", "topic": topic, "from": first, "to": last}


def error(code: str, text: str, request_id: Any = None) -> dict[str, Any]:
    """An ``error`` frame."""
    frame: dict[str, Any] = {"type": "error", "code": code, "message": text}
    if request_id is not None:
        frame["id"] = request_id
    return frame
