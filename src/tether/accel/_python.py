"""The reference implementation of the hot leaf functions: the specification of ``_speedups``.

Both modules export the same names with the same signatures, accepted types and exceptions.
"""

from __future__ import annotations

import struct
from typing import Any

from ..typing import BytesLike

__all__ = ["apply_mask", "parse_messages", "frame"]

_UNPACK_H = struct.Struct("!H").unpack_from
_UNPACK_Q = struct.Struct("!Q").unpack_from
_PACK_H = struct.Struct("!BBH").pack
_PACK_Q = struct.Struct("!BBQ").pack


def apply_mask(data: BytesLike, mask: BytesLike) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated, RFC 6455 §5.3; return new bytes.

    Accepts bytes, bytearray and memoryview (contiguous or not) for both arguments.

    Raises:
        ValueError: ``mask`` is not 4 bytes long.
    """
    # memoryview() accepts exactly the buffer types and raises TypeError for anything else.
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    mask = memoryview(mask).tobytes()
    if len(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    n = view.nbytes
    if n == 0:
        return b""
    # One big-integer XOR instead of a per-byte loop: the fastest pure-Python way.
    repeated = mask * (n >> 2) + mask[: n & 3]
    value = int.from_bytes(view, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(n, "little")


def parse_messages(
    buf: bytes | bytearray,
    pos: int,
    masked: bool,
    limit: int | None,
    events: list[Any],
    text_type: type[Any],
    binary_type: type[Any],
) -> int:
    """Parse the simple frames at ``buf[pos:]``; return the position of the first other one.

    A simple frame is a whole message in one plain frame, RFC 6455 §5.2: FIN set, RSV bits
    clear, opcode text or binary, the mask bit equal to ``masked``, the length in its minimal
    encoding and at most ``limit`` (None: no limit), the whole frame in ``buf``, and for text
    valid UTF-8. Each one appends ``text_type(str)`` or ``binary_type(bytes)`` to ``events``,
    with the payload unmasked. Parsing stops at the first frame that is not simple (or not
    complete) without consuming it: the caller's general parser takes it from there, and
    reports any error in it.
    """
    end = len(buf)
    while end - pos >= 2:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if (b0 != 0x81 and b0 != 0x82) or (b1 >> 7) != masked:
            break
        length = b1 & 0x7F
        start = pos + 2
        if length == 126:
            if end - pos < 4:
                break
            length = _UNPACK_H(buf, start)[0]
            if length < 126:
                break
            start += 2
        elif length == 127:
            if end - pos < 10:
                break
            length = _UNPACK_Q(buf, start)[0]
            if length >> 63 or length < 0x10000:
                break
            start += 8
        if limit is not None and length > limit:
            break
        if masked:
            start += 4
        stop = start + length
        if stop > end:
            break
        if masked:
            payload = apply_mask(memoryview(buf)[start:stop], buf[start - 4 : start])
        else:
            payload = bytes(buf[start:stop])
        if b0 == 0x81:
            try:
                events.append(text_type(payload.decode()))
            except UnicodeDecodeError:
                break
        else:
            events.append(binary_type(payload))
        pos = stop
    return pos


def frame(first_byte: int, payload: BytesLike) -> bytes:
    """An unmasked frame, RFC 6455 §5.2: ``first_byte`` (FIN, RSV, opcode), the payload length
    in its minimal encoding, then the payload, as one bytes object.

    Raises:
        ValueError: ``first_byte`` is not in range(256).
    """
    if not 0 <= first_byte <= 255:
        raise ValueError("first byte out of range")
    data = memoryview(payload).cast("B")
    n = data.nbytes
    if n < 126:
        return bytes((first_byte, n)) + data
    if n < 0x10000:
        return _PACK_H(first_byte, 126, n) + data
    return _PACK_Q(first_byte, 127, n) + data
