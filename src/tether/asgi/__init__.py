"""tether under ASGI servers: ``uvicorn app:app --ws tether.asgi:UvicornProtocol``.

Nothing here imports uvicorn until the protocol class is used: ``import tether.asgi`` stays
cheap, and tether itself does not depend on uvicorn.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UvicornProtocol"]


def __getattr__(name: str) -> Any:
    if name == "UvicornProtocol":
        from .uvicorn import UvicornProtocol

        return UvicornProtocol
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
