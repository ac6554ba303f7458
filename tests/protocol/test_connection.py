"""tether.protocol.connection: frames in, events and frames out, RFC 6455 §5-§8 and §10.4."""

from __future__ import annotations

import codecs
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.exceptions import FrameError, InvalidState, InvalidUTF8, MessageTooBig
from tether.protocol.connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Side, State
from tether.protocol.events import BinaryMessage, CloseFrame, Ping, Pong, TextMessage
from tether.protocol.extensions.base import Extension
from tether.protocol.headers import ExtensionParams

from .conftest import (
    BINARY,
    CLOSE,
    CONT,
    KEY,
    PING,
    PONG,
    TEXT,
    assert_events,
    assert_failed,
    assert_not_failed,
    client_frame,
    close_frame_sent,
    close_payload,
    feed,
    frame,
    output,
    parse_frames,
    server_frame,
    transfer,
)

INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000]
VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]

# Autobahn 6.4.1's payload: "κόσμε" then U+110000 encoded as f4 90 80 80, which is invalid at
# its second byte (0x90), byte 12 of the payload.
KOSME_INVALID = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80"

INVALID_UTF8 = [
    b"\xff",
    b"\x80",
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # a surrogate, U+D800
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"hello\xce",  # truncated at the end of the message
    KOSME_INVALID,
]


def pair() -> tuple[Connection, Connection]:
    """An OPEN (client, server) pair of bare connections, no handshake, no extension."""
    return Connection(Side.CLIENT), Connection(Side.SERVER)


class TestRFCExamples:
    """RFC 6455 §5.7: the example frames, byte for byte."""

    def test_single_frame_unmasked_text(self, client: Connection) -> None:
        assert_events(feed(client, b"\x81\x05\x48\x65\x6c\x6c\x6f"), [TextMessage("Hello")])

    def test_single_frame_masked_text(self, server: Connection) -> None:
        data = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        assert_events(feed(server, data), [TextMessage("Hello")])

    def test_fragmented_unmasked_text(self, client: Connection) -> None:
        assert feed(client, b"\x01\x03\x48\x65\x6c") == []
        assert_events(feed(client, b"\x80\x02\x6c\x6f"), [TextMessage("Hello")])

    def test_unmasked_ping_and_masked_pong(self, client: Connection, server: Connection) -> None:
        assert_events(feed(client, b"\x89\x05\x48\x65\x6c\x6c\x6f"), [Ping(b"Hello")])
        frames, _ = output(client)
        assert frames == [(True, 0, PONG, b"Hello", frames[0].mask)]
        assert frames[0].mask is not None
        data = b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        assert_events(feed(server, data), [Pong(b"Hello")])

    def test_256_bytes_binary_in_one_unmasked_frame(self, client: Connection) -> None:
        payload = bytes(range(256))
        assert_events(feed(client, b"\x82\x7e\x01\x00" + payload), [BinaryMessage(payload)])

    def test_64_kib_binary_in_one_unmasked_frame(self, client: Connection) -> None:
        payload = bytes(range(256)) * 256
        data = b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + payload
        assert_events(feed(client, data), [BinaryMessage(payload)])


class TestFraming:
    """RFC 6455 §5.2: base framing protocol: opcodes, lengths, reserved bits."""

    @pytest.mark.parametrize(
        ("opcode", "payload", "event"),
        [
            (TEXT, "café".encode(), TextMessage("café")),
            (BINARY, b"\x00\xff", BinaryMessage(b"\x00\xff")),
            (PING, b"p", Ping(b"p")),
            (PONG, b"q", Pong(b"q")),
            (CLOSE, close_payload(1000, b"ok"), CloseFrame(1000, "ok")),
        ],
    )
    def test_every_opcode(self, opcode: int, payload: bytes, event: object) -> None:
        client, server = pair()
        assert_events(feed(server, client_frame(opcode, payload)), [event])  # type: ignore[list-item]
        assert_events(feed(client, server_frame(opcode, payload)), [event])  # type: ignore[list-item]

    @pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
    def test_payload_lengths(self, length: int) -> None:
        payload = bytes(i & 0xFF for i in range(length))
        client, server = pair()
        assert_events(feed(server, client_frame(BINARY, payload)), [BinaryMessage(payload)])
        assert_events(feed(client, server_frame(BINARY, payload)), [BinaryMessage(payload)])

    @pytest.mark.parametrize(
        ("length", "header_size"), [(125, 2), (126, 4), (65535, 4), (65536, 10)]
    )
    def test_minimal_length_encoding_on_output(self, length: int, header_size: int) -> None:
        client, server = pair()
        server.send_binary(bytes(length))
        assert len(b"".join(server.data_to_send())) == header_size + length
        client.send_binary(bytes(length))
        assert len(b"".join(client.data_to_send())) == header_size + 4 + length

    @pytest.mark.parametrize(
        ("length", "bits", "header_size"),
        [(0, 16, 4), (125, 16, 4), (0, 64, 10), (125, 64, 10), (126, 64, 10), (65535, 64, 10)],
    )
    def test_non_minimal_length_is_rejected(
        self, server: Connection, length: int, bits: int, header_size: int
    ) -> None:
        # "the minimal number of bytes MUST be used to encode the length": the header alone
        # is enough to fail.
        data = client_frame(BINARY, bytes(length), length_bits=bits)
        server.receive_data(data[:header_size])
        assert_failed(server, 1002, FrameError)

    def test_64_bit_length_with_most_significant_bit(self, server: Connection) -> None:
        server.receive_data(b"\x82\xff" + struct.pack("!Q", 2**63 + 5) + KEY)
        assert_failed(server, 1002, FrameError)

    def test_64_bit_length_with_most_significant_bit_client(self, client: Connection) -> None:
        client.receive_data(b"\x82\x7f" + struct.pack("!Q", 2**63))
        assert_failed(client, 1002, FrameError)

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
    def test_reserved_opcodes(self, opcode: int) -> None:
        client, server = pair()
        server.receive_data(client_frame(opcode, b"x")[:2])
        assert_failed(server, 1002, FrameError)
        client.receive_data(server_frame(opcode, b"x"))
        assert_failed(client, 1002, FrameError)

    @pytest.mark.parametrize("rsv", ["rsv1", "rsv2", "rsv3"])
    @pytest.mark.parametrize("opcode", [TEXT, BINARY, PING, CLOSE])
    def test_reserved_bits_without_extension(self, rsv: str, opcode: int) -> None:
        client, server = pair()
        server.receive_data(client_frame(opcode, b"", **{rsv: True}))
        assert_failed(server, 1002, FrameError)
        client.receive_data(server_frame(opcode, b"", **{rsv: True}))
        assert_failed(client, 1002, FrameError)

    def test_extended_length_incomplete(self, client: Connection) -> None:
        data = server_frame(BINARY, bytes(300))
        client.receive_data(data[:3])  # 126 announces a 16-bit length; one byte of it here
        assert client.events_received() == [] and client.data_to_send() == []
        client.receive_data(data[3:9])  # 64-bit length cases are in the property tests
        assert_events(feed(client, data[9:]), [BinaryMessage(bytes(300))])

    def test_header_delivered_byte_by_byte(self, server: Connection) -> None:
        data = client_frame(BINARY, bytes(70_000)) + client_frame(TEXT, b"after")
        events = feed(server, data, sizes=[1] * 20)
        assert_events(events, [BinaryMessage(bytes(70_000)), TextMessage("after")])

    def test_many_frames_in_one_chunk(self, server: Connection) -> None:
        data = b"".join(client_frame(TEXT, str(i).encode()) for i in range(100))
        assert_events(feed(server, data), [TextMessage(str(i)) for i in range(100)])

    def test_empty_receive_data_is_ignored(self, server: Connection) -> None:
        server.receive_data(b"")
        assert server.events_received() == [] and server.data_to_send() == []
        assert server.state is State.OPEN


class TestMasking:
    """RFC 6455 §5.1 and §5.3: clients mask every frame, servers never do."""

    def test_server_rejects_unmasked_frame(self, server: Connection) -> None:
        server.receive_data(server_frame(TEXT, b"hello")[:2])
        assert_failed(server, 1002, FrameError)

    def test_server_rejects_unmasked_frame_with_long_length(self, server: Connection) -> None:
        server.receive_data(server_frame(BINARY, bytes(300))[:4])
        assert_failed(server, 1002, FrameError)

    def test_client_rejects_masked_frame(self, client: Connection) -> None:
        client.receive_data(client_frame(TEXT, b"hello"))
        assert_failed(client, 1002, FrameError)

    def test_client_masks_with_fresh_keys(self, client: Connection) -> None:
        client.send_binary(b"same payload")
        client.send_binary(b"same payload")
        first, second = client.data_to_send()
        assert first != second
        frames = parse_frames(first + second)
        assert [f.payload for f in frames] == [b"same payload"] * 2
        assert frames[0].mask != frames[1].mask
        assert b"same payload" not in first

    @pytest.mark.parametrize("size", [0, 1, 5, 126, 4097, 70_000])
    def test_client_output_decodes(self, size: int) -> None:
        client, server = pair()
        payload = bytes(i % 251 for i in range(size))
        client.send_binary(payload)
        client.send_text(b"t\xc3\xa9")
        client.send_ping(b"ping")
        client.send_pong(b"pong")
        frames, eof = output(client)
        assert not eof
        assert all(f.mask is not None for f in frames)
        assert [(f.opcode, f.payload) for f in frames] == [
            (BINARY, payload), (TEXT, "té".encode()), (PING, b"ping"), (PONG, b"pong")
        ]
        client.send_binary(payload)
        transfer(client, server)
        assert_events(server.events_received(), [BinaryMessage(payload)])

    def test_server_output_is_unmasked(self, server: Connection) -> None:
        server.send_text(b"hi")
        assert server.data_to_send() == [b"\x81\x02hi"]


class TestFragmentation:
    """RFC 6455 §5.4: fragmented messages, and control frames between their fragments."""

    @pytest.mark.parametrize("n", [2, 3, 10])
    def test_text_in_n_fragments(self, server: Connection, n: int) -> None:
        text = "fragments: κόσμε ✓ 😀 " * 5
        data = text.encode()
        # Cut at byte offsets, which splits multi-byte characters between fragments.
        cuts = [len(data) * i // n for i in range(n + 1)]
        stream = b"".join(
            client_frame(TEXT if i == 0 else CONT, data[cuts[i] : cuts[i + 1]], fin=i == n - 1)
            for i in range(n)
        )
        assert_events(feed(server, stream), [TextMessage(text)])

    @pytest.mark.parametrize("n", [2, 3, 10])
    def test_binary_in_n_fragments(self, client: Connection, n: int) -> None:
        data = bytes(range(256)) * 3
        cuts = [len(data) * i // n for i in range(n + 1)]
        for i in range(n - 1):
            piece = data[cuts[i] : cuts[i + 1]]
            assert feed(client, server_frame(BINARY if i == 0 else CONT, piece, fin=False)) == []
        last = server_frame(CONT, data[cuts[n - 1] :])
        assert_events(feed(client, last), [BinaryMessage(data)])

    def test_empty_fragments(self, server: Connection) -> None:
        stream = client_frame(TEXT, b"", fin=False) + client_frame(CONT, b"", fin=False)
        stream += client_frame(CONT, b"")
        assert_events(feed(server, stream), [TextMessage("")])

    def test_ping_between_fragments(self, server: Connection) -> None:
        stream = (
            client_frame(TEXT, b"Hel", fin=False)
            + client_frame(PING, b"are you there")
            + client_frame(CONT, b"lo", fin=False)
            + client_frame(PONG, b"unsolicited")
            + client_frame(CONT, b"!")
        )
        assert_events(
            feed(server, stream),
            [Ping(b"are you there"), Pong(b"unsolicited"), TextMessage("Hello!")],
        )
        assert server.data_to_send() == [b"\x8a\x0dare you there"]

    def test_close_between_fragments(self, server: Connection) -> None:
        stream = client_frame(BINARY, b"part", fin=False) + client_frame(
            CLOSE, close_payload(1001)
        )
        assert_events(feed(server, stream), [CloseFrame(1001, "")])
        assert close_frame_sent(server) == (1001, b"")

    def test_next_message_after_fragmented_one(self, server: Connection) -> None:
        stream = client_frame(TEXT, b"a", fin=False) + client_frame(CONT, b"b")
        stream += client_frame(BINARY, b"c", fin=False) + client_frame(CONT, b"d")
        stream += client_frame(TEXT, b"e", fin=False) + client_frame(CONT, b"f")
        assert_events(
            feed(server, stream), [TextMessage("ab"), BinaryMessage(b"cd"), TextMessage("ef")]
        )

    def test_continuation_without_start(self, server: Connection) -> None:
        server.receive_data(client_frame(CONT, b"orphan"))
        assert_failed(server, 1002, FrameError)

    def test_continuation_after_complete_message(self, client: Connection) -> None:
        client.receive_data(server_frame(TEXT, b"done") + server_frame(CONT, b"more"))
        assert_events(client.events_received(), [TextMessage("done")])
        assert_failed(client, 1002, FrameError)

    @pytest.mark.parametrize("opcode", [TEXT, BINARY])
    def test_new_data_frame_while_fragmented(self, server: Connection, opcode: int) -> None:
        server.receive_data(client_frame(TEXT, b"first", fin=False))
        server.receive_data(client_frame(opcode, b"second")[:2])  # the header is enough
        assert_failed(server, 1002, FrameError)
        assert server.events_received() == []

    def test_send_fragmented(self) -> None:
        client, server = pair()
        server.send_text(b"He", fin=False)
        server.send_ping(b"between")
        server.send_continuation(b"ll", fin=False)
        server.send_continuation(b"o", fin=True)
        server.send_binary(b"\x01", fin=False)
        server.send_continuation(bytearray(b"\x02"), fin=True)
        frames, _ = output(server)
        assert [(f.fin, f.opcode, f.payload) for f in frames] == [
            (False, TEXT, b"He"),
            (True, PING, b"between"),
            (False, CONT, b"ll"),
            (True, CONT, b"o"),
            (False, BINARY, b"\x01"),
            (True, CONT, b"\x02"),
        ]
        server.send_text(b"He", fin=False)
        server.send_continuation(b"llo", fin=True)
        transfer(server, client)
        assert_events(client.events_received(), [TextMessage("Hello")])

    def test_send_continuation_without_message(self, server: Connection) -> None:
        with pytest.raises(InvalidState, match="no fragmented message"):
            server.send_continuation(b"x", fin=True)

    def test_send_new_message_while_fragmenting(self, server: Connection) -> None:
        server.send_binary(b"x", fin=False)
        with pytest.raises(InvalidState, match="in progress"):
            server.send_text(b"y")
        with pytest.raises(InvalidState, match="in progress"):
            server.send_binary(b"y", fin=False)


class TestControlFrames:
    """RFC 6455 §5.5: control frames are short, never fragmented; ping gets a pong."""

    @pytest.mark.parametrize("payload", [b"", b"x", bytes(range(125))])
    def test_ping_gets_identical_pong(self, payload: bytes) -> None:
        client, server = pair()
        assert_events(feed(server, client_frame(PING, payload)), [Ping(payload)])
        assert output(server) == ([(True, 0, PONG, payload, None)], False)
        assert_events(feed(client, server_frame(PING, payload)), [Ping(payload)])
        [pong], _ = output(client)
        assert (pong.opcode, pong.payload) == (PONG, payload) and pong.mask is not None

    def test_pong_gets_no_answer(self, server: Connection) -> None:
        assert_events(feed(server, client_frame(PONG, b"beat")), [Pong(b"beat")])
        assert server.data_to_send() == []

    @pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
    def test_control_payload_of_126_bytes(self, server: Connection, opcode: int) -> None:
        data = client_frame(opcode, close_payload(1000, bytes(124)))
        server.receive_data(data[:4])  # rejected from the header
        assert_failed(server, 1002, FrameError)

    @pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
    def test_fragmented_control_frame(self, client: Connection, opcode: int) -> None:
        client.receive_data(server_frame(opcode, b"", fin=False))
        assert_failed(client, 1002, FrameError)
        assert client.events_received() == []

    def test_send_ping_and_pong_limits(self, server: Connection) -> None:
        server.send_ping(bytes(125))
        server.send_pong(bytes(125))
        with pytest.raises(ValueError, match="126 bytes exceeds 125"):
            server.send_ping(bytes(126))
        with pytest.raises(ValueError, match="126 bytes exceeds 125"):
            server.send_pong(bytes(126))
        frames, _ = output(server)
        assert [(f.opcode, len(f.payload)) for f in frames] == [(PING, 125), (PONG, 125)]

    def test_default_ping_payload_is_empty(self, server: Connection) -> None:
        server.send_ping()
        server.send_pong()
        assert server.data_to_send() == [b"\x89\x00", b"\x8a\x00"]

    def test_no_pong_after_close_sent(self, server: Connection) -> None:
        server.send_close(1000)
        server.data_to_send()
        assert_events(feed(server, client_frame(PING, b"late")), [Ping(b"late")])
        assert server.data_to_send() == []


class TestUTF8:
    """RFC 6455 §5.6 and §8.1: text messages are UTF-8; fail with 1007 on invalid data."""

    @pytest.mark.parametrize("payload", INVALID_UTF8)
    def test_invalid_in_single_frame(self, payload: bytes) -> None:
        client, server = pair()
        server.receive_data(client_frame(TEXT, payload))
        assert_failed(server, 1007, InvalidUTF8)
        client.receive_data(server_frame(TEXT, payload))
        assert_failed(client, 1007, InvalidUTF8)

    def test_binary_is_not_checked(self, server: Connection) -> None:
        assert_events(feed(server, client_frame(BINARY, b"\xff")), [BinaryMessage(b"\xff")])

    def test_invalid_in_a_middle_fragment(self, server: Connection) -> None:
        server.receive_data(client_frame(TEXT, b"valid ", fin=False))
        assert_not_failed(server)
        server.receive_data(client_frame(CONT, b"\xc3\x28", fin=False))
        # Failed at this fragment; the final one has not arrived yet.
        assert_failed(server, 1007, InvalidUTF8)
        server.receive_data(client_frame(CONT, b"end"))
        assert server.events_received() == []

    @pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
    def test_fail_fast_inside_a_partial_frame(self, side: Side) -> None:
        conn = Connection(side)
        build = client_frame if side is Side.SERVER else server_frame
        data = build(TEXT, KOSME_INVALID + b"x" * 1000)
        header = 8 if side is Side.SERVER else 4  # 16-bit length, plus the mask key
        # Everything up to f4 is a valid prefix.
        conn.receive_data(data[: header + 12])
        assert_not_failed(conn)
        # 0x90 cannot follow f4: fail now, ~1000 bytes before the frame ends.
        conn.receive_data(data[header + 12 : header + 13])
        assert_failed(conn, 1007, InvalidUTF8)

    @pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
    def test_fail_fast_with_odd_chunk_sizes(self, size: int) -> None:
        # Chunks that leave the masking key at every offset: each byte is checked once, with
        # the right mask byte, and the failure comes with the chunk holding byte 12 (0x90).
        conn = Connection(Side.SERVER)
        data = client_frame(TEXT, KOSME_INVALID + b"x" * 200)
        conn.receive_data(data[:8])
        for start in range(0, 200, size):
            conn.receive_data(data[8 + start : 8 + start + size])
            if start + size <= 12:
                assert_not_failed(conn)
            else:
                assert_failed(conn, 1007, InvalidUTF8)
                break

    @settings(max_examples=150, deadline=None)
    @given(
        prefix=st.text(max_size=30),
        tail=st.binary(max_size=8),
        side=st.sampled_from([Side.SERVER, Side.CLIENT]),
        cuts=st.lists(st.integers(0, 10**6), max_size=8),
    )
    def test_fail_fast_is_exact(
        self, prefix: str, tail: bytes, side: Side, cuts: list[int]
    ) -> None:
        # Fails as soon as the bytes received so far cannot start valid UTF-8, never before.
        payload = prefix.encode() + tail
        bad_at = None  # the shortest invalid prefix
        for i in range(1, len(payload) + 1):
            try:
                codecs.getincrementaldecoder("utf-8")().decode(payload[:i], False)
            except UnicodeDecodeError:
                bad_at = i
                break
        try:
            payload.decode()
            valid = True
        except UnicodeDecodeError:
            valid = False
        data = frame(TEXT, payload, mask=KEY if side is Side.SERVER else None)
        header = len(data) - len(payload)
        received = 0
        conn = Connection(side)
        for chunk in _splits(data, cuts):
            received += len(chunk)
            conn.receive_data(chunk)
            available = max(received - header, 0)
            if available == len(payload) and received == len(data):
                expected_failure = not valid
            else:
                expected_failure = bad_at is not None and available >= bad_at
            assert (conn.receive_error is not None) == expected_failure, (available, bad_at)
            if expected_failure:
                break

    def test_fail_fast_whole_vector_then_rest(self, server: Connection) -> None:
        data = client_frame(TEXT, KOSME_INVALID + b"tail")
        server.receive_data(data[: 6 + len(KOSME_INVALID)])
        assert_failed(server, 1007, InvalidUTF8)
        server.receive_data(data[6 + len(KOSME_INVALID) :])
        assert server.events_received() == [] and server.data_to_send() == []

    def test_fail_fast_in_partial_continuation(self, client: Connection) -> None:
        client.receive_data(server_frame(TEXT, b"\xce", fin=False))  # first byte of κ
        assert_not_failed(client)
        data = server_frame(CONT, b"\xba ok \xff" + bytes(100))
        client.receive_data(data[:5])  # \xba completes κ: still valid
        assert_not_failed(client)
        client.receive_data(data[5:9])  # \xff is never valid
        assert_failed(client, 1007, InvalidUTF8)

    def test_fail_fast_in_partial_first_fragment(self, server: Connection) -> None:
        data = client_frame(TEXT, b"ok\xe0\x80" + bytes(50), fin=False)
        server.receive_data(data[:10])
        assert_failed(server, 1007, InvalidUTF8)

    def test_character_split_across_fragments(self, server: Connection) -> None:
        smiley = "😀".encode()
        stream = client_frame(TEXT, b"a" + smiley[:1], fin=False)
        stream += client_frame(CONT, smiley[1:3], fin=False)
        stream += client_frame(CONT, smiley[3:] + b"b")
        # Byte by byte, so the partial-frame check runs at every step.
        assert_events(feed(server, stream, sizes=[1] * len(stream)), [TextMessage("a😀b")])

    def test_partial_frame_valid_so_far(self, server: Connection) -> None:
        data = client_frame(TEXT, "κόσμε".encode() * 10)
        for i in range(len(data) - 1):
            server.receive_data(data[i : i + 1])
            assert_not_failed(server)
        assert_events(feed(server, data[-1:]), [TextMessage("κόσμε" * 10)])

    def test_partial_frame_with_incomplete_mask_key(self, server: Connection) -> None:
        server.receive_data(client_frame(TEXT, b"\xff")[:4])
        assert_not_failed(server)

    def test_incomplete_character_at_message_end(self, server: Connection) -> None:
        stream = client_frame(TEXT, b"abc\xe2\x82", fin=False) + client_frame(CONT, b"")
        server.receive_data(stream)
        assert_failed(server, 1007, InvalidUTF8)

    def test_partial_binary_and_control_frames_are_not_checked(self, server: Connection) -> None:
        server.receive_data(client_frame(BINARY, b"\xff" * 10)[:10])
        assert_not_failed(server)
        server.receive_data(client_frame(BINARY, b"\xff" * 10)[10:])
        server.receive_data(client_frame(BINARY, b"\xff", fin=False))
        server.receive_data(client_frame(CONT, b"\xff\xfe\xfd")[:8])
        server.receive_data(client_frame(CONT, b"\xff\xfe\xfd")[8:])
        server.receive_data(client_frame(PING, b"\xff\xfe")[:7])
        assert_not_failed(server)

    def test_partial_text_frame_is_not_rescanned(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The fail-fast check must stay linear: re-checking the whole partial payload on every
        # read made a 1 MiB text frame in 1460-byte reads cost ~0.5 s of CPU (2 s in Python).
        import tether.protocol.connection as connection_module

        unmasked = 0
        real_apply_mask = connection_module.apply_mask

        def counting_apply_mask(data: bytes, mask: bytes) -> bytes:
            nonlocal unmasked
            result = real_apply_mask(data, mask)
            unmasked += len(result)
            return result

        monkeypatch.setattr(connection_module, "apply_mask", counting_apply_mask)
        payload = ("κ" * 2**17).encode()  # 256 KiB
        data = client_frame(TEXT, payload)
        conn = Connection(Side.SERVER)
        for i in range(0, len(data), 1460):  # one TCP segment at a time
            conn.receive_data(data[i : i + 1460])
        assert_events(conn.events_received(), [TextMessage("κ" * 2**17)])
        # Each payload byte should be unmasked (and UTF-8 checked) a bounded number of times.
        assert unmasked <= 4 * len(payload), f"{unmasked / len(payload):.0f}x the payload"

    def test_invalid_close_reason(self, client: Connection) -> None:
        client.receive_data(server_frame(CLOSE, close_payload(1000, b"\xff")))
        assert_failed(client, 1007, InvalidUTF8)


class TestClosing:
    """RFC 6455 §5.5.1 and §7: the closing handshake."""

    def test_server_receives_close(self, server: Connection) -> None:
        assert_events(
            feed(server, client_frame(CLOSE, close_payload(1000, b"bye"))),
            [CloseFrame(1000, "bye")],
        )
        assert server.close_rcvd == CloseFrame(1000, "bye")
        assert server.close_sent == CloseFrame(1000, "")
        assert server.close_rcvd_then_sent is True
        frames, eof = output(server)
        # The reply echoes the code; the server then closes TCP first (§7.1.1).
        assert frames == [(True, 0, CLOSE, b"\x03\xe8", None)] and eof
        assert server.state is State.CLOSING
        assert server.input_closed and server.close_expected()
        assert not server.close_reply_pending()
        server.receive_eof()
        assert server.state is State.CLOSED
        assert server.data_to_send() == []

    def test_client_receives_close_and_waits_for_server_eof(self, client: Connection) -> None:
        assert_events(
            feed(client, server_frame(CLOSE, close_payload(1001, b"restart"))),
            [CloseFrame(1001, "restart")],
        )
        frames, eof = output(client)
        assert [(f.opcode, f.payload) for f in frames] == [(CLOSE, b"\x03\xe9")]
        assert frames[0].mask is not None
        assert not eof  # the client lets the server close TCP first
        assert client.state is State.CLOSING
        client.receive_eof()
        assert client.state is State.CLOSED
        assert client.data_to_send() == [b""]

    def test_client_initiates(self) -> None:
        client, server = pair()
        client.send_close(1000, "done")
        assert client.close_sent == CloseFrame(1000, "done")
        assert client.close_rcvd_then_sent is False
        assert client.state is State.CLOSING and client.close_expected()
        assert not client.input_closed  # still reading until the reply arrives
        transfer(client, server)
        assert_events(server.events_received(), [CloseFrame(1000, "done")])
        assert server.close_rcvd_then_sent is True
        chunks = transfer(server, client)
        assert chunks[-1] == b""  # the server wrote its close frame and then EOF
        assert_events(client.events_received(), [CloseFrame(1000, "")])
        assert client.state is State.CLOSED
        assert client.close_rcvd_then_sent is False
        transfer(client, server)
        assert server.state is State.CLOSED

    def test_server_initiates(self) -> None:
        client, server = pair()
        server.send_close(4000, "app")
        chunks = server.data_to_send()
        assert chunks == [b"\x88\x05\x0f\xa0app"]  # no EOF yet: wait for the reply
        server.send_close(4000, "app")  # second time: nothing
        assert server.data_to_send() == []
        client.receive_data(chunks[0])
        assert_events(client.events_received(), [CloseFrame(4000, "app")])
        transfer(client, server)  # the client's echo
        assert_events(server.events_received(), [CloseFrame(4000, "")])
        assert server.data_to_send() == [b""]  # the server now closes TCP

    def test_empty_close(self, server: Connection) -> None:
        assert_events(feed(server, client_frame(CLOSE, b"")), [CloseFrame(1005, "")])
        assert server.close_rcvd is not None and server.close_rcvd.code == 1005
        # The reply is an empty close frame: 1005 must never go on the wire.
        assert close_frame_sent(server) == (None, b"")

    def test_one_byte_close_payload(self, server: Connection) -> None:
        server.receive_data(client_frame(CLOSE, b"\x03"))
        assert_failed(server, 1002, FrameError)
        assert server.events_received() == []

    @pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
    def test_invalid_codes(self, server: Connection, code: int) -> None:
        server.receive_data(client_frame(CLOSE, close_payload(code)))
        assert_failed(server, 1002, FrameError)
        assert server.close_rcvd is None

    @pytest.mark.parametrize("code", VALID_CLOSE_CODES)
    def test_valid_codes(self, server: Connection, code: int) -> None:
        assert_events(feed(server, client_frame(CLOSE, close_payload(code))), [CloseFrame(code, "")])
        assert close_frame_sent(server) == (code, b"")

    def test_reason_not_utf8(self, server: Connection) -> None:
        server.receive_data(client_frame(CLOSE, close_payload(1000, b"\xc3")))
        assert_failed(server, 1007, InvalidUTF8)

    def test_send_close_with_long_reason(self, server: Connection) -> None:
        with pytest.raises(ValueError, match="124 bytes"):
            server.send_close(1000, "x" * 124)
        assert server.close_sent is None and server.data_to_send() == []
        server.send_close(1000, "x" * 123)
        assert close_frame_sent(server) == (1000, b"x" * 123)

    @pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 5000])
    def test_send_close_with_invalid_code(self, server: Connection, code: int) -> None:
        with pytest.raises(ValueError):
            server.send_close(code, "why")
        assert server.close_sent is None and server.state is State.OPEN

    def test_send_close_1005_sends_empty_payload(self, server: Connection) -> None:
        server.send_close(1005)
        assert server.data_to_send() == [b"\x88\x00"]

    def test_data_after_close_is_ignored(self, server: Connection) -> None:
        stream = client_frame(CLOSE, close_payload(1000)) + client_frame(TEXT, b"late")
        stream += b"\xff\xff garbage"
        assert_events(feed(server, stream), [CloseFrame(1000, "")])
        server.receive_data(client_frame(TEXT, b"later still"))
        server.receive_data(b"\x00garbage")
        assert server.events_received() == []
        assert server.receive_error is None
        close_frame_sent(server)

    def test_messages_before_close_are_delivered(self, client: Connection) -> None:
        stream = server_frame(TEXT, b"one") + server_frame(BINARY, b"two")
        stream += server_frame(CLOSE, close_payload(1000))
        assert_events(
            feed(client, stream),
            [TextMessage("one"), BinaryMessage(b"two"), CloseFrame(1000, "")],
        )

    def test_no_sending_after_close_sent(self, server: Connection) -> None:
        server.send_close()
        for send in (
            lambda: server.send_text(b"x"),
            lambda: server.send_binary(b"x"),
            lambda: server.send_ping(),
            lambda: server.send_pong(),
        ):
            with pytest.raises(InvalidState, match="CLOSING"):
                send()

    def test_sending_allowed_after_close_received_until_reply(self) -> None:
        conn = Connection(Side.SERVER, auto_close_reply=False)
        conn.receive_data(client_frame(CLOSE, close_payload(1000)))
        conn.send_text(b"still here")
        assert conn.data_to_send() == [b"\x81\x0astill here"]

    def test_close_while_closing_from_peer_no_second_frame(self, client: Connection) -> None:
        client.send_close(1000)
        client.data_to_send()
        client.receive_data(server_frame(CLOSE, close_payload(1000)))
        assert client.data_to_send() == []  # no reply to the reply; no EOF from the client
        assert client.close_rcvd_then_sent is False


class TestDeferredCloseReply:
    """RFC 6455 §5.5.1 ("as soon as practical") with ``auto_close_reply=False``."""

    def test_close_reply_waits_for_send_close(self) -> None:
        conn = Connection(Side.SERVER, auto_close_reply=False)
        assert not conn.close_reply_pending()
        assert_events(
            feed(conn, client_frame(CLOSE, close_payload(1001, b"away"))), [CloseFrame(1001, "away")]
        )
        assert conn.data_to_send() == []
        assert conn.close_reply_pending()
        assert conn.input_closed and not conn.close_expected()
        assert conn.state is State.CLOSING
        conn.send_close(1000, "ignored: the reply echoes the peer's code")
        frames, eof = output(conn)
        assert frames == [(True, 0, CLOSE, b"\x03\xe9", None)] and eof
        assert not conn.close_reply_pending()
        assert conn.close_rcvd_then_sent is True

    def test_client_deferred_reply_has_no_eof(self) -> None:
        conn = Connection(Side.CLIENT, auto_close_reply=False)
        conn.receive_data(server_frame(CLOSE, b""))
        assert conn.close_reply_pending()
        conn.send_close()
        frames, eof = output(conn)
        assert [(f.opcode, f.payload) for f in frames] == [(CLOSE, b"")] and not eof

    @pytest.mark.parametrize(
        ("data", "code", "error"),
        [
            (client_frame(CONT, b"x"), 1002, FrameError),
            (client_frame(TEXT, b"\xff"), 1007, InvalidUTF8),
            (client_frame(BINARY, bytes(2000)), 1009, MessageTooBig),
        ],
    )
    def test_protocol_error_is_deferred(self, data: bytes, code: int, error: type) -> None:
        conn = Connection(Side.SERVER, auto_close_reply=False, max_message_size=1000)
        stream = client_frame(TEXT, b"before") + data + client_frame(TEXT, b"after")
        assert_events(feed(conn, stream), [TextMessage("before")])
        assert isinstance(conn.receive_error, error)
        assert conn.input_closed
        assert conn.data_to_send() == []  # nothing yet: the application reads "before" first
        assert conn.close_reply_pending()
        assert conn.state is State.CLOSING
        conn.send_close(1000, "ignored")
        assert_failed(conn, code, error)
        assert not conn.close_reply_pending()
        conn.send_close()  # idempotent
        assert conn.data_to_send() == []

    def test_protocol_error_after_close_sent_fails_at_once(self) -> None:
        conn = Connection(Side.SERVER, auto_close_reply=False)
        conn.send_close(1000)
        conn.data_to_send()
        conn.receive_data(client_frame(CONT, b"x"))
        assert isinstance(conn.receive_error, FrameError)
        assert conn.data_to_send() == [b""]  # our close frame is already out: just EOF

    def test_eof_while_reply_pending(self) -> None:
        conn = Connection(Side.SERVER, auto_close_reply=False)
        conn.receive_data(client_frame(CLOSE, close_payload(1000)))
        conn.receive_eof()
        assert not conn.close_reply_pending()
        assert conn.data_to_send() == [b""]
        conn.send_close()
        assert conn.data_to_send() == []


class TestLimits:
    """RFC 6455 §10.4: "implementations SHOULD impose limits on frame sizes"; 1009."""

    @pytest.mark.parametrize("opcode", [TEXT, BINARY])
    def test_frame_refused_from_header_alone(self, opcode: int) -> None:
        conn = Connection(Side.SERVER, max_message_size=1000)
        data = client_frame(opcode, b"x" * 1001)
        conn.receive_data(data[:4])  # 2 bytes + 16-bit length; no mask key, no payload
        assert_failed(conn, 1009, MessageTooBig)
        assert "1001" in str(conn.receive_error) and "1000" in str(conn.receive_error)

    def test_client_frame_refused_from_header_alone(self) -> None:
        conn = Connection(Side.CLIENT, max_message_size=1000)
        conn.receive_data(server_frame(BINARY, length=2**40)[:10])
        assert_failed(conn, 1009, MessageTooBig)

    def test_exactly_the_limit(self) -> None:
        conn = Connection(Side.SERVER, max_message_size=1000)
        assert_events(feed(conn, client_frame(BINARY, bytes(1000))), [BinaryMessage(bytes(1000))])

    def test_fragments_adding_up_past_the_limit(self) -> None:
        conn = Connection(Side.SERVER, max_message_size=1000)
        conn.receive_data(client_frame(TEXT, b"x" * 400, fin=False))
        conn.receive_data(client_frame(CONT, b"x" * 400, fin=False))
        assert_not_failed(conn)
        conn.receive_data(client_frame(CONT, b"x" * 201)[:4])
        assert_failed(conn, 1009, MessageTooBig)
        assert conn.events_received() == []

    def test_fragments_up_to_the_limit(self) -> None:
        conn = Connection(Side.SERVER, max_message_size=1000)
        stream = client_frame(BINARY, bytes(500), fin=False) + client_frame(CONT, bytes(500))
        stream += client_frame(BINARY, bytes(1000))  # the count starts over
        assert_events(feed(conn, stream), [BinaryMessage(bytes(1000))] * 2)

    def test_control_frames_do_not_count(self) -> None:
        conn = Connection(Side.SERVER, max_message_size=10)
        stream = client_frame(TEXT, b"x" * 10, fin=False) + client_frame(PING, bytes(100))
        stream += client_frame(CONT, b"")
        assert_events(feed(conn, stream), [Ping(bytes(100)), TextMessage("x" * 10)])

    def test_empty_fragments_do_not_accumulate(self) -> None:
        import tracemalloc

        conn = Connection(Side.SERVER, max_message_size=1000)
        conn.receive_data(client_frame(BINARY, b"x", fin=False))
        chunk = client_frame(CONT, b"", fin=False) * 10_000
        tracemalloc.start()
        try:
            for _ in range(5):  # 50,000 empty fragments
                conn.receive_data(chunk)
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert_not_failed(conn)
        assert held < 128 * 1024, f"{held} bytes held for a 1-byte message"

    def test_no_limit(self) -> None:
        conn = Connection(Side.SERVER, max_message_size=None)
        payload = bytes(3 * 2**20)
        stream = client_frame(BINARY, payload, fin=False) + client_frame(CONT, payload)
        assert_events(feed(conn, stream), [BinaryMessage(payload * 2)])

    def test_default_limit(self) -> None:
        assert DEFAULT_MAX_MESSAGE_SIZE == 2**20
        conn = Connection(Side.CLIENT)
        conn.receive_data(server_frame(BINARY, length=2**20 + 1)[:10])
        assert_failed(conn, 1009, MessageTooBig)


class _BrokenExtension(Extension):
    """An extension whose decoder has a bug: anything but a ProtocolError escapes it."""

    name = "broken"

    def params(self) -> ExtensionParams:
        return []

    def decode(self, payload: bytes, fin: bool, max_length: int | None) -> bytes:
        raise RuntimeError("bug in the decoder")

    def encode(self, payload: bytes) -> bytes | None:
        return None


class TestFailing:
    """RFC 6455 §7.1.7: fail the WebSocket connection; one place maps errors to codes."""

    def test_fail(self, server: Connection) -> None:
        server.fail(1008, "policy")
        frames, eof = output(server)
        assert frames == [(True, 0, CLOSE, b"\x03\xf0policy", None)] and eof
        assert server.state is State.CLOSING and server.input_closed
        assert server.close_rcvd_then_sent is False
        server.fail(1011)
        assert server.data_to_send() == []

    def test_fail_default_code(self, client: Connection) -> None:
        client.fail()
        frames, eof = output(client)
        assert [(f.opcode, f.payload) for f in frames] == [(CLOSE, b"\x03\xea")] and eof

    def test_fail_after_eof(self, server: Connection) -> None:
        server.receive_eof()
        server.data_to_send()
        server.fail(1002)
        assert server.data_to_send() == []
        assert server.state is State.CLOSED

    def test_fail_after_close_sent(self, server: Connection) -> None:
        server.send_close(1000)
        server.data_to_send()
        server.fail(1002)
        assert server.data_to_send() == [b""]
        assert server.close_sent == CloseFrame(1000, "")

    def test_unexpected_exception_becomes_1011(self) -> None:
        conn = Connection(Side.SERVER, extension=_BrokenExtension())
        stream = client_frame(TEXT, b"first") + client_frame(TEXT, b"boom", rsv1=True)
        assert_events(feed(conn, stream), [TextMessage("first")])
        assert isinstance(conn.receive_error, RuntimeError)
        frames, eof = output(conn)
        assert frames == [(True, 0, CLOSE, b"\x03\xf3internal error", None)] and eof

    def test_reason_is_the_error_message(self, server: Connection) -> None:
        server.receive_data(client_frame(7, b""))
        code, reason = close_frame_sent(server)
        assert (code, reason) == (1002, b"reserved opcode 7")

    def test_messages_before_the_error_are_delivered(self, server: Connection) -> None:
        stream = client_frame(TEXT, b"a") + client_frame(PING, b"b") + client_frame(CONT, b"c")
        assert_events(feed(server, stream), [TextMessage("a"), Ping(b"b")])
        pong, *_ = assert_failed(server, 1002, FrameError)
        assert pong.opcode == PONG


class TestEOF:
    """RFC 6455 §7.1.1: the TCP connection ends."""

    def test_receive_eof(self, server: Connection) -> None:
        server.receive_eof()
        assert server.state is State.CLOSED
        assert server.eof_received and server.input_closed
        assert server.data_to_send() == [b""]  # close our side too
        server.receive_eof()
        assert server.data_to_send() == []
        server.receive_data(client_frame(TEXT, b"ignored"))
        assert server.events_received() == []

    def test_eof_in_the_middle_of_a_frame(self, client: Connection) -> None:
        client.receive_data(server_frame(TEXT, b"hello")[:4])
        client.receive_eof()
        assert client.events_received() == []
        assert client.receive_error is None
        assert client.close_rcvd is None

    def test_no_sending_after_eof(self, client: Connection) -> None:
        client.receive_eof()
        with pytest.raises(InvalidState, match="CLOSED"):
            client.send_text(b"x")
        client.send_close()  # nothing to do: the TCP connection is gone
        assert client.data_to_send() == [b""]


class TestSending:
    """RFC 6455 §5.6: data frames; the sending API and its states."""

    def test_payload_types(self, server: Connection) -> None:
        server.send_binary(bytearray(b"ba"))
        server.send_binary(memoryview(b"xmvx")[1:3])
        server.send_text("é".encode())
        assert server.data_to_send() == [b"\x82\x02ba", b"\x82\x02mv", b"\x81\x02\xc3\xa9"]

    def test_large_payload_is_not_copied_on_the_server(self, server: Connection) -> None:
        payload = bytes(5000)
        server.send_binary(payload)
        header, body = server.data_to_send()
        assert header == b"\x82\x7e\x13\x88"
        assert body is payload

    def test_small_payload_is_one_chunk(self, server: Connection) -> None:
        server.send_binary(bytes(4096))
        assert len(server.data_to_send()) == 1

    def test_client_large_memoryview(self, client: Connection) -> None:
        payload = bytes(range(256)) * 40
        client.send_binary(memoryview(payload))
        [(fin, rsv, opcode, data, mask)] = parse_frames(b"".join(client.data_to_send()))
        assert (fin, opcode, data) == (True, BINARY, payload)

    def test_connecting_state_refuses_everything(self) -> None:
        conn = Connection(Side.SERVER, state=State.CONNECTING)
        with pytest.raises(InvalidState, match="CONNECTING"):
            conn.send_text(b"x")
        with pytest.raises(InvalidState, match="CONNECTING"):
            conn.send_ping()
        with pytest.raises(InvalidState, match="before the handshake"):
            conn.send_close()

    def test_initial_attributes(self, server: Connection) -> None:
        assert server.state is State.OPEN and server.side is Side.SERVER
        assert server.close_rcvd is None and server.close_sent is None
        assert server.close_rcvd_then_sent is None and server.receive_error is None
        assert not server.eof_received and not server.input_closed
        assert not server.close_expected() and not server.close_reply_pending()
        assert server.events_received() == [] and server.data_to_send() == []


class TestRoundTrip:
    """Client and server back-to-back: every kind of message in both directions."""

    def test_both_directions(self) -> None:
        client, server = pair()
        messages = [b"", b"x", bytes(125), bytes(126), bytes(70_000)]
        for payload in messages:
            client.send_binary(payload)
            server.send_binary(payload)
        client.send_text("κόσμε".encode())
        server.send_text("κόσμε".encode())
        transfer(client, server)
        transfer(server, client)
        expected = [BinaryMessage(p) for p in messages] + [TextMessage("κόσμε")]
        assert_events(server.events_received(), expected)
        assert_events(client.events_received(), expected)

    def test_ping_pong(self) -> None:
        client, server = pair()
        client.send_ping(b"1")
        transfer(client, server)
        transfer(server, client)
        assert_events(server.events_received(), [Ping(b"1")])
        assert_events(client.events_received(), [Pong(b"1")])


# -- incremental parsing ---------------------------------------------------------------------

_payloads = st.binary(max_size=300)
_texts = st.text(max_size=100)


@st.composite
def _messages(draw: st.DrawFn) -> list[tuple[int, bytes, bool]]:
    """A sequence of (opcode, payload, fin) frames: whole and fragmented messages, with pings
    and pongs between fragments."""
    frames: list[tuple[int, bytes, bool]] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["text", "binary", "fragmented", "ping", "pong"]))
        if kind == "text":
            frames.append((TEXT, draw(_texts).encode(), True))
        elif kind == "binary":
            frames.append((BINARY, draw(_payloads), True))
        elif kind in ("ping", "pong"):
            frames.append((PING if kind == "ping" else PONG, draw(st.binary(max_size=125)), True))
        else:
            is_text = draw(st.booleans())
            data = draw(_texts).encode() if is_text else draw(_payloads)
            cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
            for i, piece in enumerate(pieces):
                opcode = (TEXT if is_text else BINARY) if i == 0 else CONT
                frames.append((opcode, piece, i == len(pieces) - 1))
                if i < len(pieces) - 1 and draw(st.booleans()):
                    frames.append((PING, draw(st.binary(max_size=20)), True))
    if draw(st.booleans()):
        frames.append((CLOSE, close_payload(1000, b"end"), True))
    return frames


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def _run(side: Side, chunks: list[bytes]) -> tuple[list[tuple[str, object]], list[tuple]]:
    conn = Connection(side)
    for chunk in chunks:
        conn.receive_data(chunk)
    events = [(type(e).__name__, e) for e in conn.events_received()]
    frames, eof = output(conn)
    # Client output is masked with random keys: compare what the frames say, not their bytes.
    return events, [(f.fin, f.rsv, f.opcode, f.payload) for f in frames] + [("eof", eof)]


class TestIncrementalParsing:
    """Any split of a byte stream gives the same events and output as the whole stream."""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frames=_messages(), cuts=st.lists(st.integers(0, 10**6), max_size=30), masks=st.data())
    def test_server(self, frames: list[tuple[int, bytes, bool]], cuts: list[int],
                    masks: st.DataObject) -> None:
        stream = b"".join(
            frame(op, p, fin=fin, mask=masks.draw(st.binary(min_size=4, max_size=4)))
            for op, p, fin in frames
        )
        whole = _run(Side.SERVER, [stream])
        assert whole[0], "the stream produced no events"
        assert _run(Side.SERVER, _splits(stream, cuts)) == whole

    @settings(max_examples=150, deadline=None)
    @given(frames=_messages(), cuts=st.lists(st.integers(0, 10**6), max_size=30))
    def test_client(self, frames: list[tuple[int, bytes, bool]], cuts: list[int]) -> None:
        stream = b"".join(frame(op, p, fin=fin) for op, p, fin in frames)
        whole = _run(Side.CLIENT, [stream])
        assert _run(Side.CLIENT, _splits(stream, cuts)) == whole

    @settings(max_examples=50, deadline=None)
    @given(frames=_messages())
    def test_byte_by_byte(self, frames: list[tuple[int, bytes, bool]]) -> None:
        stream = b"".join(frame(op, p, fin=fin, mask=KEY) for op, p, fin in frames)
        whole = _run(Side.SERVER, [stream])
        byte_by_byte = _run(Side.SERVER, [stream[i : i + 1] for i in range(len(stream))])
        assert byte_by_byte == whole


class TestLargeFrames:
    """Frames past 64 KiB that arrive in many reads are received in place, into a payload of
    the frame's size: the same events as at once, the limits still apply from the header,
    and text still fails on its first invalid byte."""

    @settings(max_examples=40, deadline=None)
    @given(cuts=st.lists(st.integers(0, 10**6), min_size=1, max_size=40), data=st.data())
    def test_any_split_of_large_frames(self, cuts: list[int], data: st.DataObject) -> None:
        big = bytes(range(256)) * 400  # 100 KiB
        stream = b"".join([
            frame(BINARY, big, mask=KEY),
            frame(TEXT, b"small", mask=KEY),
            frame(BINARY, big[:70_000], fin=False, mask=KEY),
            frame(PING, b"between", mask=KEY),
            frame(CONT, big[:90_000], mask=KEY),
            frame(TEXT, "é".encode() * 40_000, mask=KEY),
            frame(BINARY, big, mask=KEY),
        ])
        whole = _run(Side.SERVER, [stream])
        assert [name for name, _ in whole[0]] == [
            "BinaryMessage", "TextMessage", "Ping", "BinaryMessage", "TextMessage",
            "BinaryMessage"]
        assert _run(Side.SERVER, _splits(stream, cuts)) == whole

    def test_the_limit_applies_from_the_header(self) -> None:
        server = Connection(Side.SERVER, max_message_size=100_000)
        stream = frame(BINARY, bytes(100_001), mask=KEY)
        server.receive_data(stream[:20])
        assert isinstance(server.receive_error, MessageTooBig)

    def test_an_error_after_a_large_frame_is_still_found(self) -> None:
        server = Connection(Side.SERVER)
        stream = frame(BINARY, bytes(80_000), mask=KEY) + frame(TEXT, b"\xff", mask=KEY)
        for i in range(0, len(stream), 7_000):
            server.receive_data(stream[i : i + 7_000])
        assert_events(server.events_received(), [BinaryMessage(bytes(80_000))])
        assert isinstance(server.receive_error, InvalidUTF8)

    def test_invalid_utf8_fails_before_a_large_text_frame_ends(self) -> None:
        server = Connection(Side.SERVER)
        payload = b"a" * 50_000 + b"\xff" + b"a" * 50_000
        stream = frame(TEXT, payload, mask=KEY)
        server.receive_data(stream[:40_000])
        assert server.receive_error is None
        server.receive_data(stream[40_000:60_000])  # holds the invalid byte
        assert_failed(server, 1007, InvalidUTF8)

    def test_invalid_utf8_in_a_large_continuation_frame(self) -> None:
        """The probe starts from the message decoder's state: a character split across the
        frames is valid, an invalid byte in the continuation fails before it ends."""
        server = Connection(Side.SERVER)
        euro = "€".encode()
        first = frame(TEXT, b"x" * 10 + euro[:1], fin=False, mask=KEY)
        rest = euro[1:] + b"y" * 70_000 + b"\xc0\xaf" + b"y" * 30_000
        stream = first + frame(CONT, rest, mask=KEY)
        server.receive_data(stream[:60_000])
        assert server.receive_error is None
        server.receive_data(stream[60_000:90_000])
        assert_failed(server, 1007, InvalidUTF8)

    def test_valid_large_continuation_text(self) -> None:
        server = Connection(Side.SERVER)
        euro = "€".encode()
        stream = frame(TEXT, b"x" + euro[:2], fin=False, mask=KEY)
        stream += frame(CONT, euro[2:] + "é".encode() * 40_000, mask=KEY)
        events = feed(server, stream, sizes=[1000] * 50)
        assert_events(events, [TextMessage("x€" + "é" * 40_000)])

    @pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
    def test_read_into_the_receive_buffer(self, side: Side) -> None:
        """An I/O layer that reads into a buffer gets the rest of the payload to read into;
        reads never go past the frame, and what follows comes through receive_data."""
        conn = Connection(side)
        mask = KEY if side is Side.SERVER else None
        big = bytes(range(256)) * 1000
        stream = frame(BINARY, big, mask=mask)
        after = frame(TEXT, b"after", mask=mask)
        assert conn.receive_buffer() is None
        conn.receive_data(stream[:5000])
        pos = 5000
        sizes = iter([1, 3, 4096, 65536, 7, 10**9])
        while (view := conn.receive_buffer()) is not None:
            assert len(view) == len(stream) - pos  # exactly the rest of the frame
            n = min(next(sizes), len(view))
            view[:n] = stream[pos : pos + n]
            view.release()
            conn.receive_into(n)
            pos += n
        assert pos == len(stream)
        conn.receive_data(after)
        assert_events(conn.events_received(), [BinaryMessage(big), TextMessage("after")])
        assert_not_failed(conn)

    def test_receive_into_more_than_the_buffer(self) -> None:
        server = Connection(Side.SERVER)
        server.receive_data(frame(BINARY, bytes(100_000), mask=KEY)[:100])
        view = server.receive_buffer()
        assert view is not None
        with pytest.raises(ValueError):
            server.receive_into(len(view) + 1)

    def test_no_receive_buffer_after_a_failure(self) -> None:
        server = Connection(Side.SERVER)
        server.receive_data(frame(TEXT, b"\xff" * 100_000, mask=KEY)[:1000])
        assert_failed(server, 1007, InvalidUTF8)
        assert server.receive_buffer() is None
        server.receive_into(10)  # ignored, as receive_data is after a failure

    def test_a_payload_too_large_to_reserve(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from tether.protocol import connection as module

        def refuse(size: int) -> object:
            raise MemoryError

        monkeypatch.setattr(module, "new_payload", refuse)
        server = Connection(Side.SERVER, max_message_size=None)
        server.receive_data(frame(BINARY, bytes(100_000), mask=KEY)[:100])
        assert_failed(server, 1009, MessageTooBig)

    def test_large_compressed_frames_in_pieces(self) -> None:
        import random as _random
        import zlib

        from tether.protocol.extensions.permessage_deflate import PerMessageDeflate

        data = _random.Random(1).randbytes(200_000)  # incompressible: a large frame
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        server = Connection(Side.SERVER, extension=PerMessageDeflate(False, False, 15, 15))
        stream = frame(BINARY, body, rsv1=True, mask=KEY)
        events = feed(server, stream, sizes=[7000] * 40)
        assert_events(events, [BinaryMessage(data)])
        assert_not_failed(server)


class TestFrameMessage:
    """frame_message(): a server's small whole message framed in one call, exactly what
    send_text/send_binary would queue; None whenever the general path is needed."""

    def test_same_bytes_as_the_general_path(self) -> None:
        for opcode, data in [(TEXT, "héllo".encode()), (BINARY, b"\x00\xff" * 100),
                             (BINARY, b""), (TEXT, b"x" * 4096)]:
            server = Connection(Side.SERVER)
            framed = server.frame_message(opcode, data)
            (server.send_text if opcode == TEXT else server.send_binary)(data)
            assert framed == b"".join(server.data_to_send())

    def test_none_when_the_general_path_is_needed(self) -> None:
        from tether.protocol.extensions.permessage_deflate import PerMessageDeflate

        assert Connection(Side.CLIENT).frame_message(TEXT, b"x") is None  # masked
        assert Connection(Side.SERVER).frame_message(BINARY, bytes(4097)) is None
        deflating = Connection(Side.SERVER, extension=PerMessageDeflate(False, False, 15, 15))
        assert deflating.frame_message(TEXT, b"x") is None
        fragmenting = Connection(Side.SERVER)
        fragmenting.send_text(b"part", fin=False)
        assert fragmenting.frame_message(TEXT, b"x") is None  # output waiting, and in progress
        fragmenting.data_to_send()
        assert fragmenting.frame_message(TEXT, b"x") is None  # a fragmented message in progress
        closing = Connection(Side.SERVER)
        closing.send_close()
        closing.data_to_send()
        assert closing.frame_message(TEXT, b"x") is None
        with pytest.raises(InvalidState):
            closing.send_text(b"x")  # where the general path says why
