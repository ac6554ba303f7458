"""The reference implementation of the hot leaf functions: the specification of ``_speedups``.

Both modules export the same names with the same signatures, accepted types and exceptions.
"""

from __future__ import annotations

import mmap
import struct
from asyncio import Future
from typing import Any

from ..typing import BytesLike

__all__ = [
    "apply_mask", "parse_messages", "frame", "mask_inplace", "new_payload", "take_payload",
    "parse_upgrade_head", "pack_fields", "fuse", "Waiter",
]

_new_tuple = tuple.__new__
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
    with the payload unmasked; both types are tuple subclasses, and the events are built as
    ``tuple.__new__`` builds them, without calling a Python-level ``__new__`` (a NamedTuple's
    costs a function call per message). Parsing stops at the first frame that is not simple
    (or not complete) without consuming it: the caller's general parser takes it from there,
    and reports any error in it.
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
                events.append(_new_tuple(text_type, (payload.decode(),)))
            except UnicodeDecodeError:
                break
        else:
            events.append(_new_tuple(binary_type, (payload,)))
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


def mask_inplace(buf: Any, start: int, end: int, mask: BytesLike) -> None:
    """Unmask ``buf[start:end]`` in place, RFC 6455 §5.3, at the mask phase of offset
    ``start`` (byte ``i`` of a payload is XORed with ``mask[i % 4]``). ``buf`` is a writable
    buffer: a bytearray, a writable memoryview, a payload from :func:`new_payload`.

    Raises:
        ValueError: ``mask`` is not 4 bytes long, or not ``0 <= start <= end <= len(buf)``.
        BufferError: ``buf`` is read-only.
        TypeError: ``buf`` is not a buffer.
    """
    mask = memoryview(mask).tobytes()
    if len(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    view = memoryview(buf).cast("B")
    if view.readonly:
        raise BufferError("Object is not writable.")
    if not 0 <= start <= end <= view.nbytes:
        raise ValueError("start and end must satisfy 0 <= start <= end <= len(buf)")
    phase = start & 3
    view[start:end] = apply_mask(view[start:end], mask[phase:] + mask[:phase])


def new_payload(size: int) -> Any:
    """A writable buffer of ``size`` bytes to receive a payload in place (``memoryview()`` of
    it is writable); :func:`take_payload` turns it into ``bytes``. Its memory is not touched
    before it is written: a frame header that announces a large payload costs address space,
    not resident memory.

    Raises:
        ValueError: ``size`` is negative.
        MemoryError: the space cannot be reserved.
    """
    if size < 0:
        raise ValueError("size must not be negative")
    if size == 0:
        return bytearray()
    try:
        return mmap.mmap(-1, size)  # anonymous: pages are given on first write
    except OSError as exc:
        raise MemoryError(f"cannot reserve {size} bytes: {exc}") from None


def take_payload(payload: Any) -> bytes:
    """The payload from :func:`new_payload`, filled, as ``bytes``. No view of it can be made
    after this; views made before stay valid (the memory lives until the last is released) and
    must not be written to.

    Raises:
        BufferError: the payload was already taken.
    """
    if isinstance(payload, bytearray):
        return bytes(payload)
    if payload.closed:
        raise BufferError("the payload was already taken")
    data: bytes = payload[:]
    try:
        payload.close()
    except BufferError:
        pass  # a view is still alive: the map is unmapped when the last one goes
    return data


# What parse_upgrade_head() accepts is a subset of what llhttp (tether.protocol.http11's
# RequestParser) accepts, so that it never lets through what that parser would refuse: a head of
# printable ASCII lines (so no control character, not even HTAB) and field names of RFC 9110
# §5.6.2 tchar.
_TCHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# Fields that make llhttp expect a body or change how it frames the message.
_FRAMING_FIELDS = frozenset(("content-length", "transfer-encoding", "proxy-connection"))


def parse_upgrade_head(
    data: BytesLike, max_request_line: int, max_headers: int, max_header_bytes: int
) -> tuple[str, list[tuple[str, str]], dict[str, list[str]], int] | None:
    """Parse a whole, plain WebSocket upgrade request at the start of ``data``, the common case
    of the opening handshake; ``None`` for anything else (the full HTTP parser decides then).

    Plain means: ``GET /target HTTP/1.1``, at most ``max_request_line`` bytes of target, the
    blank line within ``max_header_bytes``, at most ``max_headers`` fields, printable ASCII
    only, field names of tchar, a non-empty Upgrade field, the ``upgrade`` token in Connection,
    and no Content-Length, Transfer-Encoding or Proxy-Connection.

    Returns ``(target, fields, index, end)``: the fields as (name, value) pairs with the spaces
    around values stripped, as received; the index from each lowercased name to its values, in
    order; and the position just after the blank line.
    """
    if type(data) is not bytes:
        data = memoryview(data).tobytes()
    end = data.find(b"\r\n\r\n", 0, max_header_bytes)
    if end < 0:
        return None
    head = data[:end]
    if not head.isascii():
        return None
    lines = head.decode("ascii").split("\r\n")
    if len(lines) > max_headers + 1 or not "".join(lines).isprintable():
        return None  # a lone CR or LF, another control character, or too many fields
    request_line = lines[0].split(" ")
    if len(request_line) != 3:
        return None
    method, target, version = request_line
    if (
        method != "GET"
        or version != "HTTP/1.1"
        or target[:1] != "/"
        or len(target) > max_request_line
    ):
        return None
    items: list[tuple[str, str]] = []
    index: dict[str, list[str]] = {}
    lines[0] = ":"  # a placeholder, taken out below
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            return None
        value = value.strip()  # printable ASCII: strips spaces only, like llhttp
        items.append((name, value))
        key = name.lower()
        if key in index:
            index[key].append(value)
        else:
            index[key] = [value]
    del items[0]
    if len(index.pop("")) > 1 or not _TCHARS.issuperset("".join(index)):
        return None  # an empty field name, or one with a character outside tchar
    # llhttp hands the rest over only for an upgrade: a non-empty Upgrade field and the
    # "upgrade" token in Connection; and it reads a body after Content-Length or
    # Transfer-Encoding.
    upgrade = index.get("upgrade")
    if upgrade is None or not all(upgrade) or not _FRAMING_FIELDS.isdisjoint(index):
        return None
    for value in index.get("connection", ()):
        if "upgrade" in [token.strip() for token in value.lower().split(",")]:
            break
    else:
        return None
    return target, items, index, end + 4


def pack_fields(fields: list[tuple[str, str]]) -> str | None:
    """Header fields as one string, ``name:value`` lines joined by newlines (what
    ``Headers.compact`` keeps, a fraction of the list's memory), or None when that would not
    unpack to the same fields: a name holding ``:`` or a newline, a value a newline.

    Raises:
        TypeError: ``fields`` is not a list of ``(str, str)`` tuples.
    """
    if not isinstance(fields, list):
        raise TypeError(f"fields must be a list, not {type(fields).__name__}")
    for field in fields:
        if type(field) is not tuple or len(field) != 2:
            raise TypeError("a field must be a (name, value) tuple")
    try:
        packed = "\n".join([name + ":" + value for name, value in fields])
    except TypeError:
        raise TypeError("a field's name and value must be str") from None
    names = "".join([name for name, _ in fields])
    if ":" in names or "\n" in names or packed.count("\n") != max(len(fields) - 1, 0):
        return None
    return packed


#: What a waiting ``recv()`` awaits (``Waiter(loop=loop)``): here asyncio's Future, which is
#: the compiled Waiter's specification. The compiled one is a Future in every way a Task or a
#: caller can see, and one thing more, for the fused read alone (see ``fuse``): it can be
#: resumed at once, its callbacks (the waiting Task's wake-up) run in the read rather than
#: queued for the loop's next turn.
Waiter = Future


def fuse(websocket: type, connection: type, open_state: object, text_type: type[Any],
         binary_type: type[Any], join_limit: int, coalesce_limit: int,
         current_tasks: dict[Any, Any] | None, closed: object) -> None:
    """Give the I/O layer's methods on the path of every message (tether.asyncio.connection's
    ``WebSocket.data_received``, ``send_nowait``, ``_end_turn``, ``_flush``, ``recv`` and
    ``__anext__``) fast paths for their common case: a read of whole messages in plain frames
    for a Listener, or for a waiting ``recv()``; a server's small uncompressed message; writing
    what was gathered; a ``recv()`` that waits.
    ``connection`` is the sans-I/O core whose fields they read, ``open_state`` its OPEN state,
    the two types its text and binary message events (for messages handed back to
    ``_process_events``), and the limits ``_JOIN_LIMIT`` and ``_COALESCE_LIMIT`` of the
    modules that own them. Only the first class given is served.

    A read for a ``recv()`` waiting on a compiled ``Waiter`` hands it each message in turn and
    runs the waiting Task's step at once, inside the read (``_in_read`` set: ``recv()`` leaves
    the replies to the read's end, which writes them once), when ``current_tasks`` (asyncio's
    ``{loop: running Task}``) says no Task is running on the loop; otherwise, and when nobody
    waits any more, the messages go to ``_process_events`` as here. ``recv()`` and
    ``__anext__`` return a compiled coroutine that does ``_receive``'s common case (nothing
    queued, the connection open: wait on a new Waiter) and hands any other to ``_receive``;
    ``closed`` is the sentinel that wakes a waiting ``recv()`` when the connection closes.

    Here, nothing: the Python methods are the specification, and the compiled module's
    versions call them for everything that is not their common case.
    """
