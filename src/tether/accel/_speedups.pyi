from typing import Any

from ..typing import BytesLike

def apply_mask(data: BytesLike, mask: BytesLike) -> bytes: ...
def parse_messages(
    buf: bytes | bytearray,
    pos: int,
    masked: bool,
    limit: int | None,
    events: list[Any],
    text_type: type[Any],
    binary_type: type[Any],
) -> int: ...
def frame(first_byte: int, payload: BytesLike) -> bytes: ...
