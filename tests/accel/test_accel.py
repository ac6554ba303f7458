"""tether.accel: the C and pure-Python ``apply_mask`` behave the same (RFC 6455 §5.3)."""

from __future__ import annotations

import array
import asyncio
import contextvars
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import pytest

import tether.accel
from tether.accel import _python

try:
    from tether.accel import _speedups
except ImportError as exc:  # not built
    _speedups = None
    _SPEEDUPS_ERROR = str(exc)
else:
    _SPEEDUPS_ERROR = ""

IMPLEMENTATIONS = [
    pytest.param(_python, id="python"),
    pytest.param(
        _speedups,
        id="c",
        marks=pytest.mark.skipif(
            _speedups is None, reason=f"tether.accel._speedups is not built: {_SPEEDUPS_ERROR}"
        ),
    ),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def accel(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation of the accelerated functions."""
    return request.param  # type: ignore[no-any-return]


def reference_mask(data: bytes, mask: bytes) -> bytes:
    """RFC 6455 §5.3: "octet i of the transformed data is the XOR of octet i of the original
    data with octet at index i modulo 4 of the masking key"."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class TestApplyMask:
    """RFC 6455 §5.3: client-to-server masking."""

    def test_rfc_example(self, accel: ModuleType) -> None:
        # §5.7: "Hello" masked with 37 fa 21 3d.
        masked = accel.apply_mask(b"Hello", b"\x37\xfa\x21\x3d")
        assert masked == b"\x7f\x9f\x4d\x51\x58"
        assert accel.apply_mask(masked, b"\x37\xfa\x21\x3d") == b"Hello"

    @pytest.mark.parametrize(
        ("data", "mask", "expected"),
        [
            (b"", b"\x01\x02\x03\x04", b""),
            (b"\x00\x00\x00\x00", b"\x01\x02\x03\x04", b"\x01\x02\x03\x04"),
            (b"\xff" * 6, b"\x0f\xf0\x00\xff", b"\xf0\x0f\xff\x00\xf0\x0f"),
            (b"abcdefgh", b"\x00\x00\x00\x00", b"abcdefgh"),
        ],
    )
    def test_vectors(self, accel: ModuleType, data: bytes, mask: bytes, expected: bytes) -> None:
        assert accel.apply_mask(data, mask) == expected

    def test_all_small_lengths(self, accel: ModuleType) -> None:
        mask = b"\x6d\xb6\xb2\x80"
        for n in range(41):
            data = bytes((i * 37 + 11) & 0xFF for i in range(n))
            result = accel.apply_mask(data, mask)
            assert type(result) is bytes
            assert result == reference_mask(data, mask), n

    @pytest.mark.parametrize("n", [63, 64, 65, 4095, 4096, 4097, 65535, 65536, 1_000_003])
    def test_big_lengths(self, accel: ModuleType, n: int) -> None:
        data = random.Random(n).randbytes(n)
        mask = b"\xa5\x5a\x01\xfe"
        assert accel.apply_mask(data, mask) == _python_mask_reference(data, mask)

    def test_input_types(self, accel: ModuleType) -> None:
        data = bytes(range(50))
        mask = b"\x01\x02\x03\x04"
        expected = reference_mask(data, mask)
        for d in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
            for m in (mask, bytearray(mask), memoryview(mask)):
                result = accel.apply_mask(d, m)
                assert type(result) is bytes and result == expected

    def test_memoryview_slices(self, accel: ModuleType) -> None:
        buf = bytes(range(200))
        mask = b"\x10\x20\x30\x40"
        for view in (
            memoryview(buf)[3:150],  # contiguous, at an offset
            memoryview(buf)[::2],  # non-contiguous
            memoryview(buf)[1::3],
            memoryview(buf)[::-1],
            memoryview(buf)[5:5],
        ):
            assert accel.apply_mask(view, mask) == reference_mask(view.tobytes(), mask)

    def test_non_contiguous_mask(self, accel: ModuleType) -> None:
        mask = memoryview(b"\x01x\x02x\x03x\x04x")[::2]
        assert accel.apply_mask(b"\x00" * 5, mask) == b"\x01\x02\x03\x04\x01"

    def test_multi_byte_items(self, accel: ModuleType) -> None:
        items = array.array("H", range(10))
        data = items.tobytes()
        assert accel.apply_mask(memoryview(items), b"abcd") == reference_mask(data, b"abcd")
        assert accel.apply_mask(memoryview(items)[::2], b"abcd") == reference_mask(
            memoryview(items)[::2].tobytes(), b"abcd"
        )

    def test_input_is_not_modified(self, accel: ModuleType) -> None:
        data = bytearray(b"unchanged")
        accel.apply_mask(data, b"\xff\xff\xff\xff")
        assert data == b"unchanged"

    @pytest.mark.parametrize("mask", [b"", b"\x01", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
    @pytest.mark.parametrize("data", [b"", b"abcd", b"x" * 100])
    def test_mask_of_wrong_length(self, accel: ModuleType, data: bytes, mask: bytes) -> None:
        with pytest.raises(ValueError, match="mask must contain 4 bytes"):
            accel.apply_mask(data, mask)
        with pytest.raises(ValueError, match="mask must contain 4 bytes"):
            accel.apply_mask(data, bytearray(mask))

    @pytest.mark.parametrize("data", ["text", 42, None])
    def test_data_of_wrong_type(self, accel: ModuleType, data: object) -> None:
        with pytest.raises(TypeError):
            accel.apply_mask(data, b"abcd")

    def test_mask_of_wrong_type(self, accel: ModuleType) -> None:
        with pytest.raises(TypeError):
            accel.apply_mask(b"data", "abcd")
        with pytest.raises(TypeError):
            accel.apply_mask(b"data", None)

    @pytest.mark.parametrize(
        ("data", "mask"),
        [
            (b"data", 4),  # bytes(4) would be b"\0" * 4: a mask that silently does nothing
            (b"data", [1, 2, 3, 4]),
            (b"data", (1, 2, 3, 4)),
            ([1, 2, 3], b"abcd"),
            ((1, 2), b"abcd"),
            (b"x", 5),
        ],
    )
    def test_non_buffer_arguments(self, accel: ModuleType, data: object, mask: object) -> None:
        # Bytes-like objects only, with the same exception from both (STYLE.md).
        with pytest.raises(TypeError):
            accel.apply_mask(data, mask)

    def test_wrong_number_of_arguments(self, accel: ModuleType) -> None:
        with pytest.raises(TypeError):
            accel.apply_mask(b"data")
        with pytest.raises(TypeError):
            accel.apply_mask(b"data", b"abcd", b"extra")


def _python_mask_reference(data: bytes, mask: bytes) -> bytes:
    # For big inputs: XOR in 4-byte steps, still independent of both implementations.
    n = len(data)
    repeated = (mask * (n // 4 + 1))[:n]
    return bytes(a ^ b for a, b in zip(data, repeated))


@pytest.mark.skipif(_speedups is None, reason="tether.accel._speedups is not built")
class Text(NamedTuple):
    """Stands for TextMessage: the event types are NamedTuple classes of one field."""

    data: str


class Binary(NamedTuple):
    """Stands for BinaryMessage."""

    data: bytes


def make_frame(b0: int, payload: bytes, mask: bytes | None, length_bytes: int = 0) -> bytes:
    """A frame with the given first byte; ``length_bytes`` forces a 2- or 8-byte length."""
    n = len(payload)
    bit = 0x80 if mask is not None else 0
    if length_bytes == 2 or (not length_bytes and 126 <= n < 0x10000):
        header = bytes((b0, bit | 126)) + n.to_bytes(2, "big")
    elif length_bytes == 8 or (not length_bytes and n >= 0x10000):
        header = bytes((b0, bit | 127)) + n.to_bytes(8, "big")
    else:
        header = bytes((b0, bit | n))
    if mask is None:
        return header + payload
    return header + mask + reference_mask(payload, mask)


def random_frame(rng: random.Random, masked: bool) -> bytes:
    kind = rng.random()
    size = rng.choice([0, 1, 5, 125, 126, 200, 65535, 65536, 70000]) if kind < 0.1 else \
        rng.randrange(0, 300)
    text = rng.random() < 0.6
    if text:
        payload = ("é€x" * size)[:size].encode()[:size]
        if rng.random() < 0.1:
            payload = payload[: rng.randrange(0, len(payload) + 1)] + b"\xff"  # invalid
        if rng.random() < 0.05 and len(payload) > 1:
            payload = "€".encode()[:2]  # truncated sequence
    else:
        payload = rng.randbytes(size)
    b0 = 0x81 if text else 0x82
    if rng.random() < 0.1:
        b0 = rng.choice([0x01, 0x02, 0x80, 0x89, 0x8A, 0x88, 0xC1, 0x91, 0x83])
    frame_mask = rng.randbytes(4) if masked != (rng.random() < 0.05) else None
    length_bytes = rng.choice([0] * 20 + [2, 8])
    if length_bytes == 2 and len(payload) >= 0x10000:
        length_bytes = 8
    return make_frame(b0, payload, frame_mask, length_bytes)


class TestParseMessages:
    """parse_messages(): whole messages in single plain frames, and nothing else."""

    def test_text_and_binary_masked(self, accel: ModuleType) -> None:
        mask = b"\x01\x02\x03\x04"
        stream = (make_frame(0x81, "héllo".encode(), mask) + make_frame(0x82, b"\x00\xff", mask)
                  + make_frame(0x82, b"z" * 300, mask) + make_frame(0x81, b"y" * 70000, mask))
        events: list[object] = []
        assert accel.parse_messages(stream, 0, True, None, events, Text, Binary) == len(stream)
        assert [type(e) for e in events] == [Text, Binary, Binary, Text]
        assert [e[0] for e in events] == ["héllo", b"\x00\xff", b"z" * 300, "y" * 70000]

    def test_unmasked_for_clients_and_a_start_position(self, accel: ModuleType) -> None:
        stream = b"junk" + make_frame(0x81, b"hi", None) + make_frame(0x82, b"", None)
        events: list[object] = []
        assert accel.parse_messages(bytearray(stream), 4, False, 10, events, Text, Binary) \
            == len(stream)
        assert events == [Text("hi"), Binary(b"")]

    @pytest.mark.parametrize("second", [
        make_frame(0x01, b"fragment", b"abcd"),          # FIN clear
        make_frame(0x80, b"continuation", b"abcd"),       # continuation
        make_frame(0xC1, b"compressed", b"abcd"),         # RSV1
        make_frame(0x89, b"ping", b"abcd"),               # control frames
        make_frame(0x88, b"\x03\xe8", b"abcd"),
        make_frame(0x83, b"reserved opcode", b"abcd"),
        make_frame(0x81, b"unmasked", None),              # wrong mask bit
        make_frame(0x81, b"short", b"abcd", length_bytes=2),   # non-minimal lengths
        make_frame(0x82, b"x" * 200, b"abcd", length_bytes=8),
        make_frame(0x81, b"x" * 101, b"abcd"),            # over the limit
        make_frame(0x81, b"caf\xc3", b"abcd"),            # invalid UTF-8
        make_frame(0x81, b"\xed\xa0\x80", b"abcd"),       # a surrogate
        make_frame(0x81, b"x" * 50, b"abcd")[:-1],        # incomplete payload
        make_frame(0x82, b"x" * 200, b"abcd")[:3],        # incomplete length
        make_frame(0x82, b"x" * 70000, b"abcd")[:9],
        b"\x81",                                          # one byte
    ])
    def test_stops_before_anything_else(self, accel: ModuleType, second: bytes) -> None:
        first = make_frame(0x81, b"ok", b"wxyz")
        stream = first + second + make_frame(0x81, b"never reached", b"wxyz")
        events: list[object] = []
        assert accel.parse_messages(stream, 0, True, 100, events, Text, Binary) == len(first)
        assert events == [Text("ok")]

    def test_nothing_to_parse(self, accel: ModuleType) -> None:
        events: list[object] = []
        assert accel.parse_messages(b"", 0, True, None, events, Text, Binary) == 0
        assert accel.parse_messages(b"\x81\x80", 2, True, None, events, Text, Binary) == 2
        assert events == []


class TestFrame:
    """frame(): an unmasked frame in one bytes object, §5.2's minimal length encoding."""

    @pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
    def test_lengths(self, accel: ModuleType, n: int) -> None:
        payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        result = accel.frame(0x82, payload)
        assert type(result) is bytes
        assert result == make_frame(0x82, payload, None)

    def test_buffer_types(self, accel: ModuleType) -> None:
        for payload in (b"abc", bytearray(b"abc"), memoryview(b"xabc")[1:]):
            assert accel.frame(0x81, payload) == b"\x81\x03abc"

    def test_first_byte_out_of_range(self, accel: ModuleType) -> None:
        for first in (-1, 256):
            with pytest.raises(ValueError):
                accel.frame(first, b"")


class TestMaskInplace:
    """Unmasking part of a payload in place, at the mask phase of its offset."""

    @pytest.mark.parametrize("start", [0, 1, 2, 3, 5, 8, 13])
    def test_any_offset_matches_the_whole(self, accel: ModuleType, start: int) -> None:
        data = bytes(range(256)) * 3
        mask = b"\x11\x22\x33\x44"
        buf = bytearray(data)
        accel.mask_inplace(buf, start, start + 100, mask)
        expected = data[:start] + reference_mask(data, mask)[start : start + 100] + data[start + 100 :]
        assert bytes(buf) == expected

    @pytest.mark.parametrize("n", [255, 256, 257, 287, 288, 289, 383, 384, 385, 1000, 4099])
    def test_lengths_around_the_vector_widths(self, accel: ModuleType, n: int) -> None:
        """The C version XORs 128 and 32 bytes at a time from 256 bytes on (AVX2, where the
        CPU has it), then 8, then 1: every tail, at every mask phase and buffer alignment."""
        data = random.Random(n).randbytes(n + 8)
        mask = b"\x9c\x03\xe1\x5f"
        for start in range(8):
            buf = bytearray(data)
            accel.mask_inplace(buf, start, start + n, mask)
            whole = reference_mask(data, mask)
            assert bytes(buf) == data[:start] + whole[start : start + n] + data[start + n :]

    def test_pieces_make_the_whole(self, accel: ModuleType) -> None:
        rng = random.Random(5)
        data = rng.randbytes(5000)
        mask = rng.randbytes(4)
        buf = bytearray(data)
        cut = 0
        while cut < len(buf):
            step = rng.randrange(0, 300)
            accel.mask_inplace(buf, cut, min(cut + step, len(buf)), mask)
            cut += step
        assert bytes(buf) == reference_mask(data, mask)

    def test_writable_views_and_payloads(self, accel: ModuleType) -> None:
        buf = bytearray(b"abcdefgh")
        accel.mask_inplace(memoryview(buf), 4, 8, b"\x01\x01\x01\x01")
        assert buf == b"abcddgfi"
        payload = accel.new_payload(8)
        memoryview(payload)[:] = b"abcdefgh"
        accel.mask_inplace(payload, 0, 8, b"\x00\x00\x00\x01")
        assert accel.take_payload(payload) == b"abceefgi"

    def test_errors(self, accel: ModuleType) -> None:
        with pytest.raises(BufferError):
            accel.mask_inplace(b"read-only", 0, 1, b"abcd")
        with pytest.raises(TypeError):
            accel.mask_inplace(None, 0, 1, b"abcd")
        with pytest.raises(ValueError):
            accel.mask_inplace(bytearray(4), 0, 4, b"abc")
        for start, end in [(-1, 2), (3, 2), (0, 5)]:
            with pytest.raises(ValueError):
                accel.mask_inplace(bytearray(4), start, end, b"abcd")


class TestPayload:
    """A payload received in place, then taken as bytes."""

    @pytest.mark.parametrize("size", [0, 1, 70_000, 1 << 20])
    def test_fill_and_take(self, accel: ModuleType, size: int) -> None:
        payload = accel.new_payload(size)
        assert len(payload) == size
        view = memoryview(payload)
        assert not view.readonly and view.nbytes == size
        data = random.Random(size).randbytes(size)
        half = size // 2
        view[:half] = data[:half]
        view[half:] = data[half:]
        view.release()
        taken = accel.take_payload(payload)
        assert type(taken) is bytes and taken == data

    def test_no_view_after_take(self, accel: ModuleType) -> None:
        payload = accel.new_payload(16)
        accel.take_payload(payload)
        with pytest.raises((BufferError, ValueError)):
            memoryview(payload)
        with pytest.raises(BufferError):
            accel.take_payload(payload)

    def test_a_view_alive_at_take_stays_valid(self, accel: ModuleType) -> None:
        """The event loop may still hold its read buffer while buffer_updated() takes the
        payload: that view keeps the memory alive, whatever happens to the taken bytes."""
        payload = accel.new_payload(1 << 16)
        view = memoryview(payload)
        view[:] = b"x" * (1 << 16)
        taken = accel.take_payload(payload)
        del taken
        assert view[-1] == ord("x")
        view.release()

    def test_negative_size(self, accel: ModuleType) -> None:
        with pytest.raises(ValueError):
            accel.new_payload(-1)

    def test_take_needs_a_payload(self) -> None:
        if _speedups is None:
            pytest.skip("the C accelerator is not built")
        with pytest.raises(TypeError):
            _speedups.take_payload(bytearray(3))


UPGRADE_HEAD = (
    b"GET /chat?x=1 HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade"
    b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-A:  1 \r\nx-a: 2\r\n\r\n\x81\x80"
)
LIMITS = (8192, 128, 16384)


class TestParseUpgradeHead:
    """The opening handshake's common case (tests/protocol/test_http11.py checks it against
    the full parser; these check the shape of the result and the arguments)."""

    def test_fields_index_and_end(self, accel: ModuleType) -> None:
        target, fields, index, end = accel.parse_upgrade_head(UPGRADE_HEAD, *LIMITS)
        assert target == "/chat?x=1"
        assert fields == [
            ("Host", "h:1"), ("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("X-A", "1"), ("x-a", "2"),
        ]
        assert index == {
            "host": ["h:1"], "upgrade": ["websocket"], "connection": ["keep-alive, Upgrade"],
            "sec-websocket-key": ["dGhlIHNhbXBsZSBub25jZQ=="], "x-a": ["1", "2"],
        }
        assert UPGRADE_HEAD[end:] == b"\x81\x80"

    def test_buffer_types(self, accel: ModuleType) -> None:
        expected = accel.parse_upgrade_head(UPGRADE_HEAD, *LIMITS)
        spaced = bytes(b for pair in zip(UPGRADE_HEAD, b"?" * len(UPGRADE_HEAD)) for b in pair)
        for data in (bytearray(UPGRADE_HEAD), memoryview(UPGRADE_HEAD),
                     memoryview(spaced)[::2]):
            assert accel.parse_upgrade_head(data, *LIMITS) == expected

    @pytest.mark.parametrize(
        "edit",
        [
            (b"GET ", b"POST "), (b"GET ", b"GET  "), (b" HTTP/1.1", b" HTTP/1.1 "),
            (b"/chat", b"chat"), (b"Upgrade: websocket", b"Upgrade: "),
            (b"keep-alive, Upgrade", b"keep-alive, Upgrades"), (b"X-A:", b"X A:"),
            (b"X-A:", b":"), (b"X-A:  1", b"X-A\x7f"), (b"h:1", b"h\t1"), (b"h:1", b"h\n1"),
            (b"h:1", b"h\xe91"), (b"X-A:", b"Content-Length: 0\r\nX-A:"),
            (b"X-A:", b"Transfer-Encoding: chunked\r\nX-A:"), (b"\r\n\r\n", b"\r\n"),
        ],
    )
    def test_anything_else_is_none(self, accel: ModuleType, edit: tuple[bytes, bytes]) -> None:
        assert accel.parse_upgrade_head(UPGRADE_HEAD.replace(*edit, 1), *LIMITS) is None

    def test_limits(self, accel: ModuleType) -> None:
        head = UPGRADE_HEAD.index(b"\r\n\r\n") + 4
        assert accel.parse_upgrade_head(UPGRADE_HEAD, 9, 6, head) is not None
        assert accel.parse_upgrade_head(UPGRADE_HEAD, 8, 6, head) is None
        assert accel.parse_upgrade_head(UPGRADE_HEAD, 9, 5, head) is None
        assert accel.parse_upgrade_head(UPGRADE_HEAD, 9, 6, head - 1) is None

    def test_argument_errors(self, accel: ModuleType) -> None:
        with pytest.raises(TypeError):
            accel.parse_upgrade_head("GET / HTTP/1.1", *LIMITS)
        with pytest.raises(TypeError):
            accel.parse_upgrade_head(UPGRADE_HEAD, "8192", 128, 16384)


class TestPackFields:
    """What ``Headers.compact`` keeps: ``name:value`` lines, or None when that would not
    unpack to the same fields."""

    @pytest.mark.parametrize("fields, packed", [
        ([], ""),
        ([("Host", "example.com:8080")], "Host:example.com:8080"),
        ([("Upgrade", "websocket"), ("X", "")], "Upgrade:websocket\nX:"),
        ([("Ü", "é"), ("A", "ÿ")], "Ü:é\nA:ÿ"),  # Latin-1: one byte per character
        ([("A", "日本"), ("B", "x"), ("C", "😀")], "A:日本\nB:x\nC:😀"),  # wider
    ])
    def test_packed(self, accel: ModuleType, fields: list[tuple[str, str]],
                    packed: str) -> None:
        assert accel.pack_fields(fields) == packed
        unpacked = [tuple(line.partition(":")[::2]) for line in packed.split("\n")] \
            if packed else []
        assert unpacked == fields

    @pytest.mark.parametrize("fields", [
        [("A:B", "c")], [("A\nB", "c")], [("A", "b\nc")], [("A", "b"), ("C", "日\n")],
    ])
    def test_not_reversible_is_none(self, accel: ModuleType,
                                    fields: list[tuple[str, str]]) -> None:
        assert accel.pack_fields(fields) is None

    @pytest.mark.parametrize("fields", [
        None, (("a", "b"),), [("a",)], [("a", "b", "c")], [(1, "b")], [("a", b"b")], ["ab"],
        [["a", "b"]],
    ])
    def test_wrong_types(self, accel: ModuleType, fields: object) -> None:
        with pytest.raises(TypeError):
            accel.pack_fields(fields)


class TestWaiter:
    """What a waiting recv() awaits: asyncio's Future in Python (the specification), a compiled
    one in C, which must behave the same to a Task and to anyone calling its methods."""

    def test_awaited_by_a_task(self, accel: ModuleType) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            waiter = accel.Waiter(loop=loop)
            assert asyncio.isfuture(waiter) and waiter.get_loop() is loop
            assert not waiter.done() and not waiter.cancelled()

            async def wait() -> object:
                return await waiter

            task = asyncio.ensure_future(wait())
            await asyncio.sleep(0)
            assert not task.done()
            waiter.set_result(("a", "tuple"))  # (a tuple result is returned whole)
            assert waiter.done() and not task.done()  # the wake-up is queued, not run
            assert await task == ("a", "tuple")
            assert waiter.result() == ("a", "tuple") and waiter.exception() is None
            with pytest.raises(asyncio.InvalidStateError):
                waiter.set_result(1)

        asyncio.run(main())

    def test_cancelled_through_the_task(self, accel: ModuleType) -> None:
        async def main() -> None:
            waiter = accel.Waiter(loop=asyncio.get_running_loop())

            async def wait() -> object:
                return await waiter

            task = asyncio.ensure_future(wait())
            await asyncio.sleep(0)
            task.cancel("why")
            with pytest.raises(asyncio.CancelledError):
                await task
            assert waiter.cancelled() and waiter.done()
            with pytest.raises(asyncio.CancelledError):
                waiter.result()
            assert waiter.cancel() is False

        asyncio.run(main())

    def test_exception_and_callbacks(self, accel: ModuleType) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            waiter = accel.Waiter(loop=loop)
            with pytest.raises(asyncio.InvalidStateError):
                waiter.result()
            with pytest.raises(asyncio.InvalidStateError):
                waiter.exception()
            calls: list[tuple[str, object]] = []
            first = lambda future: calls.append(("first", future))  # noqa: E731
            second = lambda future: calls.append(("second", future))  # noqa: E731
            waiter.add_done_callback(first)
            waiter.add_done_callback(second)
            waiter.add_done_callback(second)
            assert waiter.remove_done_callback(second) == 2
            stopped = accel.Waiter(loop=loop)
            if sys.version_info >= (3, 13):  # kept as a RuntimeError caused by it
                stopped.set_exception(StopIteration())
                assert isinstance(stopped.exception(), RuntimeError)
                assert isinstance(stopped.exception().__cause__, StopIteration)
            else:
                with pytest.raises(TypeError):
                    stopped.set_exception(StopIteration())
            waiter.set_exception(ValueError)
            assert calls == []  # queued for the loop
            await asyncio.sleep(0)
            assert calls == [("first", waiter)]
            assert isinstance(waiter.exception(), ValueError)
            with pytest.raises(ValueError):
                waiter.result()
            waiter.add_done_callback(second)  # done: queued at once
            await asyncio.sleep(0)
            assert calls == [("first", waiter), ("second", waiter)]

            async def wait() -> object:
                return await waiter

            with pytest.raises(ValueError):
                await wait()

        asyncio.run(main())

    def test_callback_context(self, accel: ModuleType) -> None:
        variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="")

        async def main() -> None:
            waiter = accel.Waiter(loop=asyncio.get_running_loop())
            context = contextvars.copy_context()
            context.run(variable.set, "theirs")
            seen: list[str] = []
            waiter.add_done_callback(lambda _: seen.append(variable.get()), context=context)
            waiter.add_done_callback(lambda _: seen.append(variable.get()))
            variable.set("ours")
            waiter.set_result(None)
            await asyncio.sleep(0)
            assert seen == ["theirs", ""]

        asyncio.run(main())


class TestDifferential:
    """The compiled implementation against its specification, on random inputs."""

    def test_random(self) -> None:
        rng = random.Random(6455)
        for _ in range(500):
            buf = rng.randbytes(rng.randrange(0, 3000))
            mask = rng.randbytes(4)
            start = rng.randrange(0, len(buf) + 1)
            stop = rng.randrange(start, len(buf) + 1)
            step = rng.choice([1, 1, 1, 2, 3, 7, -1])
            view = memoryview(buf)[start:stop:step]
            kind = rng.choice(["view", "bytes", "bytearray"])
            data: object = view
            if kind == "bytes":
                data = view.tobytes()
            elif kind == "bytearray":
                data = bytearray(view.tobytes())
            assert _speedups.apply_mask(data, mask) == _python.apply_mask(data, mask), (
                start, stop, step, kind
            )

    def test_same_exceptions(self) -> None:
        for data, mask in [(b"x", b"abc"), (b"", b""), ("s", b"abcd"), (None, b"abcd")]:
            errors = []
            for module in (_python, _speedups):
                try:
                    module.apply_mask(data, mask)
                except Exception as exc:  # noqa: BLE001 - comparing what each raises
                    errors.append(type(exc))
                else:
                    errors.append(None)
            assert errors[0] == errors[1], (data, mask, errors)

    def test_same_names(self) -> None:
        names = {"apply_mask", "parse_messages", "frame", "mask_inplace", "new_payload",
                 "take_payload", "parse_upgrade_head", "pack_fields", "fuse", "Waiter"}
        assert set(_python.__all__) == names
        assert all(hasattr(_speedups, name) for name in names)

    def test_parse_messages_random_streams(self) -> None:
        """Random runs of frames, valid and not, cut anywhere: same position, same events."""
        rng = random.Random(7692)
        for _ in range(400):
            masked = rng.random() < 0.7
            stream = b"".join(random_frame(rng, masked) for _ in range(rng.randrange(1, 6)))
            stream = stream[: rng.randrange(0, len(stream) + 1)]
            limit = rng.choice([None, 0, 100, 70000])
            buf: bytes | bytearray = rng.choice([stream, bytearray(stream)])
            results = []
            for module in (_python, _speedups):
                events: list[object] = []
                pos = module.parse_messages(buf, 0, masked, limit, events, Text, Binary)
                results.append((pos, [(type(e), e) for e in events]))
            assert results[0] == results[1], (stream, masked, limit)

    def test_parse_upgrade_head_random(self) -> None:
        """Random edits of upgrade requests, random limits: the same answer."""
        rng = random.Random(6455)
        pieces = [b" ", b"\t", b"\r", b"\n", b"\r\n", b":", b",", b"\x00", b"\x7f", b"\xe9",
                  b"A", b"upgrade", b"Upgrade:", b"Connection:", b"Content-Length:", b"GET",
                  b"/", b"HTTP/1.1", b"\r\n\r\n", b"x-y"]
        for _ in range(3000):
            data = bytearray(UPGRADE_HEAD)
            for _ in range(rng.randrange(0, 4)):
                at = rng.randrange(len(data) + 1)
                cut = rng.choice([0, 0, 1, 2])
                data[at:at + cut] = rng.choice(pieces)
            limits = (rng.choice([1, 9, 8192]), rng.choice([0, 5, 128]),
                      rng.choice([-5, 0, 60, len(data), 16384]))
            results = [module.parse_upgrade_head(bytes(data), *limits)
                       for module in (_python, _speedups)]
            assert results[0] == results[1], (bytes(data), limits)

    def test_mask_inplace_random(self) -> None:
        rng = random.Random(17)
        for _ in range(300):
            data = rng.randbytes(rng.randrange(0, 2000))
            start = rng.randrange(0, len(data) + 1)
            end = rng.randrange(start, len(data) + 1)
            mask = rng.randbytes(4)
            results = []
            for module in (_python, _speedups):
                buf = bytearray(data)
                module.mask_inplace(buf, start, end, mask)
                results.append(bytes(buf))
            assert results[0] == results[1], (start, end)

    def test_frame_random(self) -> None:
        rng = random.Random(13)
        for n in [0, 1, 125, 126, 127, 65535, 65536, 70000]:
            payload = rng.randbytes(n)
            first = rng.randrange(256)
            assert _speedups.frame(first, payload) == _python.frame(first, payload)


def _implementation_in_subprocess(env_value: str | None, block_speedups: bool = False) -> str:
    env = dict(os.environ)
    env.pop("TETHER_NO_EXTENSIONS", None)
    if env_value is not None:
        env["TETHER_NO_EXTENSIONS"] = env_value
    code = "import tether.accel as a; print(a.IMPLEMENTATION, a.apply_mask.__module__)"
    if block_speedups:
        code = "import sys; sys.modules['tether.accel._speedups'] = None; " + code
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


class TestSelection:
    """accel/__init__.py picks one implementation at import; TETHER_NO_EXTENSIONS forces
    Python."""

    def test_live_implementation(self) -> None:
        forced = os.environ.get("TETHER_NO_EXTENSIONS", "").lower() not in ("", "0", "false", "no")
        built = any(Path(tether.accel.__file__).parent.glob("_speedups*.so")) or any(
            Path(tether.accel.__file__).parent.glob("_speedups*.pyd")
        )
        if forced or not built:
            assert tether.accel.IMPLEMENTATION == "python"
            assert tether.accel.apply_mask is _python.apply_mask
        else:
            assert tether.accel.IMPLEMENTATION == "c"
            assert _speedups is not None
            assert tether.accel.apply_mask is _speedups.apply_mask

    @pytest.mark.parametrize("value", ["1", "yes", "true", "TRUE"])
    def test_forced_python(self, value: str) -> None:
        assert _implementation_in_subprocess(value) == "python tether.accel._python"

    @pytest.mark.skipif(_speedups is None, reason="tether.accel._speedups is not built")
    @pytest.mark.parametrize("value", [None, "", "0", "false", "no", "NO"])
    def test_c_by_default(self, value: str | None) -> None:
        assert _implementation_in_subprocess(value).startswith("c ")

    def test_fallback_when_not_built(self) -> None:
        assert _implementation_in_subprocess(None, block_speedups=True) == (
            "python tether.accel._python"
        )


