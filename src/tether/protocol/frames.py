"""Frames: opcodes, close codes, header serialization and the close-frame payload (RFC 6455 §5, §7.4).

Parsing lives in :mod:`tether.protocol.connection`, inside the receive loop, because that is the hot
path; this module holds the rules and the pieces both directions share.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from ..exceptions import FrameError, InvalidUTF8

__all__ = [
    "Opcode",
    "CloseCode",
    "DATA_OPCODES",
    "CONTROL_OPCODES",
    "MAX_CONTROL_PAYLOAD",
    "MAX_CLOSE_REASON",
    "is_valid_close_code",
    "serialize_header",
    "parse_close",
    "serialize_close",
    "truncate_reason",
]


class Opcode(IntEnum):
    """Frame opcodes, RFC 6455 §5.2; 3-7 and 11-15 are reserved."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset((Opcode.CONT, Opcode.TEXT, Opcode.BINARY))
CONTROL_OPCODES = frozenset((Opcode.CLOSE, Opcode.PING, Opcode.PONG))

# RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD = 125
# A close payload is a 2-byte code followed by the reason.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2


class CloseCode(IntEnum):
    """Close codes from the IANA registry (RFC 6455 §7.4.1 and later registrations)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never sent: stands for "the close frame had no code"
    ABNORMAL_CLOSURE = 1006  # never sent: stands for "no close frame at all"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never sent: stands for "the TLS handshake failed"


# Codes an endpoint may put in a close frame: the registered ones except the three "never sent".
_SENDABLE_REGISTERED = frozenset(
    code
    for code in CloseCode
    if code not in (CloseCode.NO_STATUS_RCVD, CloseCode.ABNORMAL_CLOSURE, CloseCode.TLS_HANDSHAKE)
)


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire.

    RFC 6455 §7.4.2: 0-999 are not used; 1000-2999 are reserved for the protocol and its
    extensions (only the registered ones are valid); 3000-3999 are for libraries and frameworks
    (IANA registry); 4000-4999 are for private use.
    """
    return code in _SENDABLE_REGISTERED or 3000 <= code <= 4999


_PACK_H = struct.Struct("!BBH").pack
_PACK_Q = struct.Struct("!BBQ").pack


def serialize_header(fin: bool, rsv1: bool, opcode: int, length: int, masked: bool) -> bytes:
    """The first bytes of a frame, up to (not including) the masking key, RFC 6455 §5.2.

    The payload length uses the minimal encoding, as §5.2 requires.
    """
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, mask_bit | length))
    if length < 0x10000:
        return _PACK_H(b0, mask_bit | 126, length)
    return _PACK_Q(b0, mask_bit | 127, length)


def parse_close(payload: bytes) -> tuple[int, str]:
    """Decode a close frame's payload into (code, reason), RFC 6455 §5.5.1.

    An empty payload means "no status code" and gives 1005.

    Raises:
        FrameError: the payload is one byte long, or the code is not valid on the wire.
        InvalidUTF8: the reason is not UTF-8.
    """
    if not payload:
        return CloseCode.NO_STATUS_RCVD, ""
    if len(payload) == 1:
        raise FrameError("close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise FrameError(f"close frame with invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise InvalidUTF8("close frame with a reason that is not valid UTF-8") from None
    return code, reason


def truncate_reason(reason: str) -> bytes:
    """``reason`` as UTF-8, cut on a character boundary to at most 123 bytes."""
    data = reason.encode()
    if len(data) <= MAX_CLOSE_REASON:
        return data
    return data[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode()


def serialize_close(code: int, reason: str) -> bytes:
    """Encode a close frame's payload; code 1005 means "send no code" (an empty payload).

    Raises:
        ValueError: the code is not valid on the wire, or the reason passes 123 bytes.
    """
    if code == CloseCode.NO_STATUS_RCVD:
        if reason:
            raise ValueError("a close frame without a code cannot carry a reason")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}")
    data = reason.encode()
    if len(data) > MAX_CLOSE_REASON:
        raise ValueError(f"close reason of {len(data)} bytes exceeds {MAX_CLOSE_REASON} bytes")
    return code.to_bytes(2, "big") + data
