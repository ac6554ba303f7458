"""Type aliases used in tether's signatures."""

from __future__ import annotations

from typing import Union

__all__ = ["BytesLike", "Data", "Subprotocol"]

BytesLike = Union[bytes, bytearray, memoryview]
"""Anything that holds bytes."""

Data = Union[str, bytes]
"""A message: ``str`` for text, ``bytes`` for binary."""

Subprotocol = str
"""A subprotocol name, as in Sec-WebSocket-Protocol."""
