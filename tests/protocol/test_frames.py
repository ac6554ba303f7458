"""tether.protocol.frames: opcodes, close codes, header serialization and close payloads."""

from __future__ import annotations

import pytest

from tether.exceptions import FrameError, InvalidUTF8
from tether.protocol.frames import (
    CONTROL_OPCODES,
    DATA_OPCODES,
    MAX_CLOSE_REASON,
    MAX_CONTROL_PAYLOAD,
    CloseCode,
    Opcode,
    is_valid_close_code,
    parse_close,
    serialize_close,
    serialize_header,
    truncate_reason,
)

from .conftest import close_payload

INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
VALID_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]


class TestOpcodes:
    """RFC 6455 §5.2: opcodes 0x0-0x2 are data frames, 0x8-0xA control; the rest reserved."""

    def test_values(self) -> None:
        assert [int(op) for op in Opcode] == [0x0, 0x1, 0x2, 0x8, 0x9, 0xA]

    def test_data_and_control_sets(self) -> None:
        assert DATA_OPCODES == {Opcode.CONT, Opcode.TEXT, Opcode.BINARY}
        assert CONTROL_OPCODES == {Opcode.CLOSE, Opcode.PING, Opcode.PONG}
        assert all(op >= 8 for op in CONTROL_OPCODES)

    def test_control_payload_limits(self) -> None:
        assert MAX_CONTROL_PAYLOAD == 125
        assert MAX_CLOSE_REASON == 123


class TestCloseCodes:
    """RFC 6455 §7.4: which status codes may appear in a close frame."""

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_valid(self, code: int) -> None:
        assert is_valid_close_code(code)

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_invalid(self, code: int) -> None:
        assert not is_valid_close_code(code)

    def test_never_sent_codes_are_registered(self) -> None:
        # §7.4.1: 1005, 1006 and 1015 are registered but "MUST NOT be set as a status code".
        for code in (CloseCode.NO_STATUS_RCVD, CloseCode.ABNORMAL_CLOSURE, CloseCode.TLS_HANDSHAKE):
            assert code in CloseCode.__members__.values()
            assert not is_valid_close_code(code)


class TestSerializeHeader:
    """RFC 6455 §5.2: FIN, RSV1, opcode, MASK and the minimal payload length encoding."""

    @pytest.mark.parametrize(
        ("length", "expected"),
        [
            (0, b"\x82\x00"),
            (125, b"\x82\x7d"),
            (126, b"\x82\x7e\x00\x7e"),
            (65535, b"\x82\x7e\xff\xff"),
            (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
            (2**32, b"\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x00"),
        ],
    )
    def test_length_encodings(self, length: int, expected: bytes) -> None:
        assert serialize_header(True, False, Opcode.BINARY, length, False) == expected

    def test_bits(self) -> None:
        assert serialize_header(False, False, Opcode.TEXT, 5, False) == b"\x01\x05"
        assert serialize_header(True, True, Opcode.TEXT, 5, False) == b"\xc1\x05"
        assert serialize_header(True, False, Opcode.PING, 5, True) == b"\x89\x85"
        assert serialize_header(False, False, Opcode.CONT, 300, True) == b"\x00\xfe\x01\x2c"

    def test_rfc_examples(self) -> None:
        # §5.7: a single-frame unmasked text message "Hello" and a 256-byte binary message.
        assert serialize_header(True, False, Opcode.TEXT, 5, False) == b"\x81\x05"
        assert serialize_header(True, False, Opcode.BINARY, 256, False) == b"\x82\x7e\x01\x00"


class TestParseClose:
    """RFC 6455 §5.5.1 and §7.4: the close frame's body."""

    def test_empty_means_no_status(self) -> None:
        assert parse_close(b"") == (CloseCode.NO_STATUS_RCVD, "")

    def test_one_byte_is_an_error(self) -> None:
        with pytest.raises(FrameError, match="1-byte"):
            parse_close(b"\x03")

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_valid_code(self, code: int) -> None:
        assert parse_close(close_payload(code, b"bye")) == (code, "bye")

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_invalid_code(self, code: int) -> None:
        with pytest.raises(FrameError, match=f"invalid close code {code}"):
            parse_close(close_payload(code))

    def test_utf8_reason(self) -> None:
        assert parse_close(close_payload(1000, "κόσμε".encode())) == (1000, "κόσμε")

    def test_reason_not_utf8(self) -> None:
        with pytest.raises(InvalidUTF8):
            parse_close(close_payload(1000, b"\xff\xfe"))


class TestSerializeClose:
    """RFC 6455 §5.5.1: code, then a UTF-8 reason; the whole payload ≤ 125 bytes."""

    def test_code_and_reason(self) -> None:
        assert serialize_close(1001, "going") == b"\x03\xe9going"

    def test_no_status_is_empty(self) -> None:
        assert serialize_close(CloseCode.NO_STATUS_RCVD, "") == b""

    def test_no_status_with_reason(self) -> None:
        with pytest.raises(ValueError, match="without a code"):
            serialize_close(CloseCode.NO_STATUS_RCVD, "why")

    @pytest.mark.parametrize("code", [c for c in INVALID_CODES if c != 1005])
    def test_invalid_code(self, code: int) -> None:
        with pytest.raises(ValueError, match="invalid close code"):
            serialize_close(code, "")

    def test_reason_limit(self) -> None:
        assert len(serialize_close(1000, "x" * 123)) == 125
        with pytest.raises(ValueError, match="124 bytes exceeds 123"):
            serialize_close(1000, "x" * 124)
        with pytest.raises(ValueError):
            serialize_close(1000, "é" * 62)  # 124 bytes in 62 characters

    def test_round_trip(self) -> None:
        assert parse_close(serialize_close(4321, "π")) == (4321, "π")


class TestTruncateReason:
    """Close reasons are cut to 123 UTF-8 bytes on a character boundary (STYLE.md)."""

    def test_short_unchanged(self) -> None:
        assert truncate_reason("short") == b"short"
        assert truncate_reason("x" * 123) == b"x" * 123

    def test_ascii_cut(self) -> None:
        assert truncate_reason("x" * 500) == b"x" * 123

    @pytest.mark.parametrize(
        ("char", "kept"),
        [("é", 61), ("€", 41), ("😀", 30)],  # 2, 3 and 4-byte characters
    )
    def test_cut_on_character_boundary(self, char: str, kept: int) -> None:
        result = truncate_reason(char * 100)
        assert len(result) <= 123
        assert result.decode() == char * kept

    def test_cut_after_ascii_prefix(self) -> None:
        # 122 ASCII bytes, then a 2-byte character straddling the limit: it is dropped whole.
        result = truncate_reason("a" * 122 + "é" + "tail")
        assert result == b"a" * 122
