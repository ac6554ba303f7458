"""The reference implementation of the hot leaf functions: the specification of ``_speedups``.

Both modules export the same names with the same signatures, accepted types and exceptions.
"""

from __future__ import annotations

from ..typing import BytesLike

__all__ = ["apply_mask"]


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
