"""tether.protocol.extensions.permessage_deflate: negotiation and compression, RFC 7692."""

from __future__ import annotations

import os
import random
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.exceptions import ExtensionError, FrameError, HandshakeError, InvalidUTF8, MessageTooBig
from tether.protocol.connection import Connection, Side
from tether.protocol.events import BinaryMessage, Ping, TextMessage
from tether.protocol.extensions.permessage_deflate import (
    EMPTY_UNCOMPRESSED_BLOCK,
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from tether.protocol.headers import ExtensionParams, parse_extensions
from tether.protocol.server import ServerProtocol

from .conftest import (
    BINARY,
    CLOSE,
    CONT,
    KEY,
    PING,
    TEXT,
    assert_events,
    assert_failed,
    assert_not_failed,
    client_frame,
    feed,
    frame,
    handshake,
    output,
    parse_frames,
    request_bytes,
    server_handshake,
    transfer,
)


def params(offer: str) -> ExtensionParams:
    """The parameters of a single permessage-deflate offer or response, parsed."""
    [(name, result)] = parse_extensions([offer])
    assert name == "permessage-deflate"
    return result


def deflate(data: bytes, wbits: int = 15) -> bytes:
    """Compress one message as RFC 7692 §7.2.1 says: sync flush, then drop the tail."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(EMPTY_UNCOMPRESSED_BLOCK)
    return out[:-4]


def deflating_server(**options: Any) -> Connection:
    """An OPEN server that negotiated permessage-deflate with 15-bit windows both ways."""
    return Connection(Side.SERVER, extension=PerMessageDeflate(False, False, 15, 15), **options)


class TestServerNegotiation:
    """RFC 7692 §5 and §7.1: the server's answer to an offer."""

    @pytest.mark.parametrize(
        ("offer", "response", "local_bits", "remote_bits"),
        [
            # The browsers' offer: the server limits both windows to 12 bits.
            (
                "permessage-deflate; client_max_window_bits",
                "server_max_window_bits=12; client_max_window_bits=12",
                12,
                12,
            ),
            # §7.1.2.2: without client_max_window_bits in the offer, the response may not
            # carry it, and the client may use 15 bits.
            ("permessage-deflate", "server_max_window_bits=12", 12, 15),
            # §7.1.2.1: the response value is at most the offered one.
            (
                "permessage-deflate; server_max_window_bits=10",
                "server_max_window_bits=10",
                10,
                15,
            ),
            (
                "permessage-deflate; server_max_window_bits=14; client_max_window_bits=9",
                "server_max_window_bits=12; client_max_window_bits=9",
                12,
                9,
            ),
            (
                "permessage-deflate; client_max_window_bits=15",
                "server_max_window_bits=12; client_max_window_bits=12",
                12,
                12,
            ),
        ],
    )
    def test_window_bits(
        self, offer: str, response: str, local_bits: int, remote_bits: int
    ) -> None:
        accepted = ServerPerMessageDeflateFactory().accept(params(offer))
        assert accepted is not None
        response_params, extension = accepted
        assert response_params == params("permessage-deflate; " + response)
        assert isinstance(extension, PerMessageDeflate)
        assert extension.local_max_window_bits == local_bits
        assert extension.remote_max_window_bits == remote_bits
        assert extension.params() == response_params

    def test_full_windows(self) -> None:
        factory = ServerPerMessageDeflateFactory(server_max_window_bits=15, client_max_window_bits=15)
        response, extension = factory.accept(params("permessage-deflate"))  # type: ignore[misc]
        assert response == []  # nothing to say
        assert isinstance(extension, PerMessageDeflate)
        assert (extension.local_max_window_bits, extension.remote_max_window_bits) == (15, 15)

    def test_server_no_context_takeover_requested(self) -> None:
        response, extension = ServerPerMessageDeflateFactory().accept(  # type: ignore[misc]
            params("permessage-deflate; server_no_context_takeover")
        )
        assert ("server_no_context_takeover", None) in response
        assert isinstance(extension, PerMessageDeflate)
        assert extension.local_no_context_takeover and not extension.remote_no_context_takeover

    def test_server_no_context_takeover_by_choice(self) -> None:
        factory = ServerPerMessageDeflateFactory(server_no_context_takeover=True)
        response, extension = factory.accept(params("permessage-deflate"))  # type: ignore[misc]
        assert ("server_no_context_takeover", None) in response
        assert isinstance(extension, PerMessageDeflate) and extension.local_no_context_takeover

    @pytest.mark.parametrize(
        ("offer", "factory_option"),
        [("permessage-deflate; client_no_context_takeover", False), ("permessage-deflate", True)],
    )
    def test_client_no_context_takeover(self, offer: str, factory_option: bool) -> None:
        factory = ServerPerMessageDeflateFactory(client_no_context_takeover=factory_option)
        response, extension = factory.accept(params(offer))  # type: ignore[misc]
        assert ("client_no_context_takeover", None) in response
        assert isinstance(extension, PerMessageDeflate)
        assert extension.remote_no_context_takeover and not extension.local_no_context_takeover

    @pytest.mark.parametrize(
        "offer",
        [
            "permessage-deflate; unknown_param",
            "permessage-deflate; x=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=-9",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=09",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_no_context_takeover=1",
            'permessage-deflate; client_no_context_takeover="x"',
        ],
    )
    def test_invalid_offer_is_declined(self, offer: str) -> None:
        assert ServerPerMessageDeflateFactory().accept(params(offer)) is None

    @pytest.mark.parametrize(
        "first",
        [
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; foo",
            "permessage-deflate; client_no_context_takeover=yes",
        ],
    )
    def test_invalid_first_offer_then_valid_one(self, first: str) -> None:
        offers = f"{first}, permessage-deflate; client_max_window_bits"
        server = ServerProtocol()
        server_handshake(server, request_bytes(add=[("Sec-WebSocket-Extensions", offers)]))
        assert server.response is not None
        assert server.response.headers.get_all("Sec-WebSocket-Extensions") == [
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        ]
        assert server.extension is not None

    def test_only_invalid_offers(self) -> None:
        server = ServerProtocol()
        offers = "permessage-deflate; foo, permessage-deflate; server_max_window_bits=8x"
        server_handshake(server, request_bytes(add=[("Sec-WebSocket-Extensions", offers)]))
        assert server.extension is None
        assert "Sec-WebSocket-Extensions" not in server.response.headers  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        "options",
        [
            {"server_max_window_bits": 8},
            {"server_max_window_bits": 16},
            {"client_max_window_bits": 7},
            {"client_max_window_bits": 16},
        ],
    )
    def test_factory_arguments(self, options: dict[str, int]) -> None:
        with pytest.raises(ValueError):
            ServerPerMessageDeflateFactory(**options)


class TestClientOffer:
    """RFC 7692 §5.1 and §7.1: what the client offers."""

    def test_default(self) -> None:
        assert ClientPerMessageDeflateFactory().offer() == [("client_max_window_bits", None)]

    def test_everything(self) -> None:
        factory = ClientPerMessageDeflateFactory(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=10,
            client_max_window_bits=11,
        )
        assert factory.offer() == params(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10; client_max_window_bits=11"
        )

    @pytest.mark.parametrize("value", [False, None])
    def test_without_client_max_window_bits(self, value: bool | None) -> None:
        assert ClientPerMessageDeflateFactory(client_max_window_bits=value).offer() == []

    @pytest.mark.parametrize(
        "options",
        [
            {"server_max_window_bits": 7},
            {"server_max_window_bits": 16},
            {"client_max_window_bits": 7},
            {"client_max_window_bits": 16},
        ],
    )
    def test_factory_arguments(self, options: dict[str, int]) -> None:
        with pytest.raises(ValueError):
            ClientPerMessageDeflateFactory(**options)


class TestClientResponseValidation:
    """RFC 7692 §5 and §7.1: the client fails the handshake on a response its offer did not
    allow."""

    @pytest.mark.parametrize(
        ("options", "response", "message"),
        [
            ({}, "foo", "unknown parameter foo"),
            ({}, "server_no_context_takeover; server_no_context_takeover", "repeated"),
            ({}, "server_max_window_bits=16", "from 8 to 15"),
            ({}, "server_max_window_bits=7", "from 8 to 15"),
            ({}, "server_max_window_bits=09", "from 8 to 15"),
            ({}, "server_max_window_bits", "needs a value"),
            ({}, "client_no_context_takeover=1", "takes no value"),
            ({}, "client_max_window_bits", "without value"),
            ({"server_no_context_takeover": True}, "", "lacks server_no_context_takeover"),
            ({"server_max_window_bits": 10}, "", "lacks server_max_window_bits"),
            ({"server_max_window_bits": 10}, "server_max_window_bits=11", "raises server_max"),
            ({"client_max_window_bits": None}, "client_max_window_bits=10", "not offered"),
            ({"client_max_window_bits": False}, "client_max_window_bits=10", "not offered"),
            ({"client_max_window_bits": 10}, "client_max_window_bits=11", "raises client_max"),
        ],
    )
    def test_invalid(self, options: dict[str, Any], response: str, message: str) -> None:
        factory = ClientPerMessageDeflateFactory(**options)
        with pytest.raises(HandshakeError, match=message):
            factory.accept(params(f"permessage-deflate; {response}".rstrip("; ")))

    @pytest.mark.parametrize(
        ("options", "response", "expected"),
        [
            ({}, "", (False, False, 15, 15)),
            ({}, "client_max_window_bits=9", (False, False, 15, 9)),
            ({}, "server_max_window_bits=10", (False, False, 10, 15)),
            ({}, "server_no_context_takeover", (True, False, 15, 15)),
            ({}, "client_no_context_takeover", (False, True, 15, 15)),
            ({"client_no_context_takeover": True}, "", (False, True, 15, 15)),
            ({"client_max_window_bits": 11}, "", (False, False, 15, 11)),
            ({"client_max_window_bits": 11}, "client_max_window_bits=10", (False, False, 15, 10)),
            (
                {"server_max_window_bits": 10, "server_no_context_takeover": True},
                "server_no_context_takeover; server_max_window_bits=9",
                (True, False, 9, 15),
            ),
        ],
    )
    def test_valid(self, options: dict[str, Any], response: str, expected: tuple) -> None:
        extension = ClientPerMessageDeflateFactory(**options).accept(
            params(f"permessage-deflate; {response}".rstrip("; "))
        )
        assert isinstance(extension, PerMessageDeflate)
        assert (
            extension.remote_no_context_takeover,
            extension.local_no_context_takeover,
            extension.remote_max_window_bits,
            extension.local_max_window_bits,
        ) == expected

    def test_str(self) -> None:
        extension = ClientPerMessageDeflateFactory().accept(
            params("permessage-deflate; server_no_context_takeover; client_max_window_bits=10")
        )
        assert str(extension) == (
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
        )
        assert str(PerMessageDeflate(False, False, 15, 15)) == "permessage-deflate"


# -- round trips -----------------------------------------------------------------------------

MESSAGES: list[bytes] = [
    b"",
    b"a",
    b"Hello, Hello, Hello, Hello!",
    "κόσμε ✓ 😀 ".encode() * 50,
    bytes(range(256)) * 40,
    random.Random(7).randbytes(3000),
    b"x" * 100_000,
]


def _exchange(client: Connection, server: Connection, messages: list[bytes], text: bool) -> None:
    """Send ``messages`` both ways and check they arrive intact."""
    expected = [TextMessage(m.decode()) if text else BinaryMessage(m) for m in messages]
    for sender, receiver in ((client, server), (server, client)):
        for m in messages:
            (sender.send_text if text else sender.send_binary)(m)
        transfer(sender, receiver)
        assert_events(receiver.events_received(), expected)
        assert_not_failed(receiver)


def _deflate_pair(
    server_options: dict[str, Any] | None = None, client_options: dict[str, Any] | None = None
) -> tuple[Connection, Connection]:
    client, server = handshake(
        {"extensions": [ServerPerMessageDeflateFactory(**(server_options or {}))]},
        {"extensions": [ClientPerMessageDeflateFactory(**(client_options or {}))]},
    )
    assert client.extension is not None and server.extension is not None
    return client, server


class TestRoundTrips:
    """RFC 7692 §7.2: compressing and decompressing messages, client and server back-to-back."""

    @pytest.mark.parametrize("text", [True, False], ids=["text", "binary"])
    @pytest.mark.parametrize(
        ("server_options", "client_options"),
        [
            ({}, {}),
            ({"server_no_context_takeover": True, "client_no_context_takeover": True}, {}),
            ({}, {"server_no_context_takeover": True, "client_no_context_takeover": True}),
            ({"server_no_context_takeover": True}, {}),
            ({}, {"client_no_context_takeover": True}),
        ],
        ids=["takeover", "server-demands-none", "client-asks-none", "server-none", "client-none"],
    )
    def test_context_takeover(
        self, server_options: dict[str, Any], client_options: dict[str, Any], text: bool
    ) -> None:
        messages = [m for m in MESSAGES if not text or _is_utf8(m)]
        client, server = _deflate_pair(server_options, client_options)
        _exchange(client, server, messages * 2, text)

    @pytest.mark.parametrize("bits", range(9, 16))
    def test_window_bits(self, bits: int) -> None:
        client, server = _deflate_pair(
            {"server_max_window_bits": bits, "client_max_window_bits": bits}
        )
        for ext in (client.extension, server.extension):
            assert isinstance(ext, PerMessageDeflate)
            assert ext.local_max_window_bits == ext.remote_max_window_bits == bits
        data = random.Random(bits).randbytes(1 << bits)
        # Repeats at distances near the window size: a decoder with a smaller window breaks.
        _exchange(client, server, [data + data, data[: 1 << (bits - 1)] * 3, b"tail"], False)

    def test_window_bits_requested_by_client(self) -> None:
        client, server = _deflate_pair(
            {"server_max_window_bits": 15},
            {"server_max_window_bits": 10, "client_max_window_bits": 11},
        )
        assert isinstance(server.extension, PerMessageDeflate)
        assert server.extension.local_max_window_bits == 10
        assert server.extension.remote_max_window_bits == 11
        _exchange(client, server, MESSAGES, False)

    def test_frames_are_compressed(self) -> None:
        client, server = _deflate_pair()
        payload = b"repetitive data " * 1000
        server.send_binary(payload)
        client.send_binary(payload)
        for conn in (server, client):
            [f], _ = output(conn)
            assert f.rsv == 4  # RSV1
            assert len(f.payload) < len(payload) // 20
        server.send_text(b"")
        [f], _ = output(server)
        assert f.rsv == 4 and len(f.payload) <= 1  # b"" or an empty block's leftover bits

    def test_empty_message(self) -> None:
        client, server = _deflate_pair()
        _exchange(client, server, [b"", b"", b"x", b""], True)

    def test_context_takeover_shrinks_repeated_messages(self) -> None:
        payload = random.Random(1).randbytes(500)
        client, server = _deflate_pair()
        server.send_binary(payload)
        server.send_binary(payload)
        first, second = (f.payload for f in output(server)[0])
        assert len(second) < len(first) // 10  # a back-reference into the previous message

    def test_no_context_takeover_messages_are_independent(self) -> None:
        payload = random.Random(1).randbytes(500)
        client, server = _deflate_pair({"server_no_context_takeover": True})
        server.send_binary(payload)
        server.send_binary(payload)
        frames, _ = output(server)
        assert frames[0].payload == frames[1].payload
        for f in frames:  # each one inflates alone, with a fresh decompressor
            d = zlib.decompressobj(-12)
            assert d.decompress(f.payload + EMPTY_UNCOMPRESSED_BLOCK) == payload

    def test_8_bit_window_sends_uncompressed(self) -> None:
        # zlib cannot compress with an 8-bit window: the client sends without RSV1 (§6 allows).
        client, server = _deflate_pair({"client_max_window_bits": 8})
        assert isinstance(client.extension, PerMessageDeflate)
        assert client.extension.local_max_window_bits == 8
        client.send_binary(b"z" * 1000)
        [f], _ = output(client)
        assert (f.rsv, f.payload) == (0, b"z" * 1000)
        _exchange(client, server, MESSAGES, False)

    def test_8_bit_window_peer_compressing_with_9_bits(self) -> None:
        # zlib cannot compress raw deflate with 8 bits; Chromium then uses 9 bits, whose
        # back-references stay within 512 - 262 = 250 bytes and must inflate with 8 bits.
        payload = random.Random(3).randbytes(200) * 20 + bytes(range(256)) * 10
        c = zlib.compressobj(9, zlib.DEFLATED, -9)
        data = (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        server = Connection(Side.SERVER, extension=PerMessageDeflate(False, False, 8, 12))
        assert_events(
            feed(server, client_frame(BINARY, data, rsv1=True)), [BinaryMessage(payload)]
        )

    def test_server_window_8_requested(self) -> None:
        client, server = _deflate_pair({}, {"server_max_window_bits": 8})
        server.send_binary(b"z" * 1000)
        [f], _ = output(server)
        assert f.rsv == 0
        _exchange(client, server, MESSAGES, False)

    def test_min_size(self) -> None:
        client, server = _deflate_pair({"min_size": 100})
        server.send_binary(b"z" * 99)
        server.send_binary(b"z" * 100)
        small, big = output(server)[0]
        assert (small.rsv, big.rsv) == (0, 4)

    def test_fragmented_send_is_uncompressed(self) -> None:
        client, server = _deflate_pair()
        server.send_text(b"z" * 500, fin=False)
        server.send_continuation(b"z" * 500, fin=True)
        frames = transfer(server, client)
        assert [f.rsv for f in parse_frames(b"".join(frames))] == [0, 0]
        assert_events(client.events_received(), [TextMessage("z" * 1000)])

    def test_uncompressed_messages_are_accepted(self) -> None:
        server = deflating_server()
        stream = client_frame(TEXT, b"plain") + client_frame(BINARY, deflate(b"zip"), rsv1=True)
        assert_events(feed(server, stream), [TextMessage("plain"), BinaryMessage(b"zip")])


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class TestReceiving:
    """RFC 7692 §6.1 and §7.2.2: compressed frames from the peer."""

    @pytest.mark.parametrize("n", [2, 3, 7])
    def test_compressed_message_in_fragments(self, n: int) -> None:
        text = "compressed and fragmented, κόσμε " * 40
        data = deflate(text.encode())
        cuts = [len(data) * i // n for i in range(n + 1)]
        stream = b"".join(
            client_frame(
                TEXT if i == 0 else CONT,
                data[cuts[i] : cuts[i + 1]],
                fin=i == n - 1,
                rsv1=i == 0,  # §6.1: RSV1 on the first frame only
            )
            for i in range(n)
        )
        server = deflating_server()
        assert_events(feed(server, stream), [TextMessage(text)])

    def test_ping_between_compressed_fragments(self) -> None:
        data = deflate(b"abc" * 100)
        stream = client_frame(BINARY, data[:5], fin=False, rsv1=True)
        stream += client_frame(PING, b"p") + client_frame(CONT, data[5:])
        assert_events(feed(deflating_server(), stream), [Ping(b"p"), BinaryMessage(b"abc" * 100)])

    def test_stream_ended_with_bfinal(self) -> None:
        # A peer may finish its deflate stream (Z_FINISH) and start a new one per message.
        def finished(data: bytes) -> bytes:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            return c.compress(data) + c.flush(zlib.Z_FINISH)

        stream = client_frame(TEXT, finished(b"one"), rsv1=True)
        stream += client_frame(TEXT, finished(b"two"), rsv1=True)
        stream += client_frame(TEXT, deflate(b"three"), rsv1=True)
        events = feed(deflating_server(), stream)
        assert_events(events, [TextMessage("one"), TextMessage("two"), TextMessage("three")])

    def test_rsv1_on_continuation(self) -> None:
        server = deflating_server()
        server.receive_data(client_frame(TEXT, deflate(b"ab")[:2], fin=False, rsv1=True))
        server.receive_data(client_frame(CONT, deflate(b"ab")[2:], rsv1=True))
        assert_failed(server, 1002, FrameError)

    def test_rsv1_on_uncompressed_continuation(self) -> None:
        server = deflating_server()
        server.receive_data(client_frame(TEXT, b"a", fin=False))
        server.receive_data(client_frame(CONT, b"b", rsv1=True))
        assert_failed(server, 1002, FrameError)

    @pytest.mark.parametrize("opcode", [PING, 0xA, CLOSE])
    def test_rsv1_on_control_frame(self, opcode: int) -> None:
        server = deflating_server()
        server.receive_data(client_frame(opcode, b"", rsv1=True))
        assert_failed(server, 1002, FrameError)

    @pytest.mark.parametrize("rsv", [{"rsv2": True}, {"rsv3": True}, {"rsv1": True, "rsv2": True}])
    def test_other_reserved_bits(self, rsv: dict[str, bool]) -> None:
        server = deflating_server()
        server.receive_data(client_frame(BINARY, deflate(b"x"), **rsv))
        assert_failed(server, 1002, FrameError)

    @pytest.mark.parametrize(
        "payload",
        [
            b"\xff\xff\xff\xff",  # an invalid block type
            b"\x07",  # BTYPE=11, reserved
            deflate(b"hello")[:-1] + b"\xff",
            b"\x00\x05\x00\x00\x00",  # a stored block with a bad NLEN
        ],
    )
    def test_corrupt_data(self, payload: bytes) -> None:
        server = deflating_server()
        server.receive_data(client_frame(BINARY, payload, rsv1=True))
        assert_failed(server, 1002, ExtensionError)

    def test_corrupt_data_in_later_fragment(self) -> None:
        server = deflating_server()
        server.receive_data(client_frame(BINARY, deflate(b"fine" * 10), fin=False, rsv1=True))
        assert_not_failed(server)
        server.receive_data(client_frame(CONT, b"\xff\xff\xff\xff", fin=False))
        assert_failed(server, 1002, ExtensionError)

    @settings(max_examples=200, deadline=None)
    @given(payload=st.binary(max_size=200), text=st.booleans())
    def test_random_data_never_crashes(self, payload: bytes, text: bool) -> None:
        server = deflating_server(max_message_size=10_000)
        server.receive_data(client_frame(TEXT if text else BINARY, payload, rsv1=True))
        if server.receive_error is not None:
            assert isinstance(server.receive_error, (ExtensionError, InvalidUTF8, MessageTooBig))

    def test_invalid_utf8_after_inflating(self) -> None:
        server = deflating_server()
        server.receive_data(client_frame(TEXT, deflate(b"ok \xff"), rsv1=True))
        assert_failed(server, 1007, InvalidUTF8)

    def test_partial_compressed_text_is_not_checked_as_utf8(self) -> None:
        server = deflating_server()
        data = client_frame(TEXT, deflate("κόσμε".encode() * 50), rsv1=True)
        for i in range(len(data) - 1):
            server.receive_data(data[i : i + 1])
            assert_not_failed(server)
        assert_events(feed(server, data[-1:]), [TextMessage("κόσμε" * 50)])


def _zeros_deflated(mib: int) -> bytes:
    """``mib`` MiB of zeros, compressed at level 9 in 1 MiB chunks with Z_SYNC_FLUSH, the tail
    stripped (RFC 7692 §7.2.1).

    Once the window is full of zeros every chunk compresses to the same bytes, so the chunks
    after the second are copies: building a 1 GiB bomb takes milliseconds.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    first = c.compress(chunk) + c.flush(zlib.Z_SYNC_FLUSH)
    second = c.compress(chunk) + c.flush(zlib.Z_SYNC_FLUSH)
    assert c.compress(chunk) + c.flush(zlib.Z_SYNC_FLUSH) == second
    data = first + second * (mib - 1)
    assert data.endswith(EMPTY_UNCOMPRESSED_BLOCK)
    return data[:-4]


def _peak_during(conn: Connection, data: bytes) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        conn.receive_data(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class TestLimits:
    """RFC 7692 §8.2 and RFC 6455 §10.4: the size limit applies after decompression."""

    def test_deflate_bomb(self) -> None:
        # ~100 KiB on the wire that would inflate to 100 MiB (deflate's ratio is at most
        # ~1032:1, so 1 GiB needs ~1 MiB: see the next tests).
        data = _zeros_deflated(100)
        assert 90_000 < len(data) < 110_000
        server = deflating_server(max_message_size=2**20)
        stream = client_frame(BINARY, data, rsv1=True)
        peak = _peak_during(server, stream)
        assert_failed(server, 1009, MessageTooBig)
        assert peak < 8 * 2**20, f"peak allocation {peak} bytes"

    def test_deflate_bomb_of_1_gib_in_fragments(self) -> None:
        data = _zeros_deflated(1024)  # inflates to 1 GiB
        size = 64 * 1024
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        stream = b"".join(
            client_frame(
                TEXT if i == 0 else CONT, piece, fin=i == len(pieces) - 1, rsv1=i == 0
            )
            for i, piece in enumerate(pieces)
        )
        server = deflating_server(max_message_size=2**20)
        peak = _peak_during(server, stream)
        assert_failed(server, 1009, MessageTooBig)
        assert peak < 8 * 2**20, f"peak allocation {peak} bytes"

    def test_deflate_bomb_of_1_gib_in_one_frame(self) -> None:
        data = _zeros_deflated(1024)
        server = deflating_server(max_message_size=2**20)
        # Its compressed size alone passes the limit (plus deflate's slack): refused from the
        # header.
        server.receive_data(client_frame(BINARY, data, rsv1=True)[:14])
        assert_failed(server, 1009, MessageTooBig)

    def test_limit_after_inflating(self) -> None:
        server = deflating_server(max_message_size=1000)
        assert_events(
            feed(server, client_frame(BINARY, deflate(bytes(1000)), rsv1=True)),
            [BinaryMessage(bytes(1000))],
        )
        server.receive_data(client_frame(BINARY, deflate(bytes(1001)), rsv1=True))
        assert_failed(server, 1009, MessageTooBig)

    def test_limit_across_compressed_fragments(self) -> None:
        data = deflate(bytes(1500))
        server = deflating_server(max_message_size=1000)
        server.receive_data(client_frame(BINARY, data[:3], fin=False, rsv1=True))
        server.receive_data(client_frame(CONT, data[3:]))
        assert_failed(server, 1009, MessageTooBig)

    def test_incompressible_message_at_the_limit(self) -> None:
        # Random data is sent in stored blocks, a few bytes larger than the message: a
        # message of exactly max_message_size must still be accepted.
        payload = os.urandom(10_000)
        data = deflate(payload)
        assert len(data) > len(payload)
        server = deflating_server(max_message_size=10_000)
        assert_events(
            feed(server, client_frame(BINARY, data, rsv1=True)), [BinaryMessage(payload)]
        )

    def test_streamed_compression_under_the_limit(self) -> None:
        # A peer compressing as it streams (Z_SYNC_FLUSH per fragment, RFC 7692 §6.1) adds
        # ~10 bytes per fragment: the limit is on the inflated size, not the wire size.
        payload = random.Random(1).randbytes(99_900)
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        pieces = [
            c.compress(payload[i : i + 999]) + c.flush(zlib.Z_SYNC_FLUSH)
            for i in range(0, len(payload), 999)
        ]
        pieces[-1] = pieces[-1][:-4]  # §7.2.1: drop the final 00 00 ff ff
        assert sum(map(len, pieces)) > 100_112  # the wire size passes the header check
        stream = b"".join(
            client_frame(BINARY if i == 0 else CONT, p, fin=i == len(pieces) - 1, rsv1=i == 0)
            for i, p in enumerate(pieces)
        )
        server = deflating_server(max_message_size=100_000)
        events = feed(server, stream)
        assert server.receive_error is None, server.receive_error
        assert_events(events, [BinaryMessage(payload)])

    def test_no_limit(self) -> None:
        server = deflating_server(max_message_size=None)
        payload = bytes(5 * 2**20)
        assert_events(
            feed(server, client_frame(BINARY, deflate(payload), rsv1=True)),
            [BinaryMessage(payload)],
        )


# -- incremental parsing of compressed streams -----------------------------------------------


@st.composite
def _compressed_stream(draw: st.DrawFn) -> bytes:
    """Messages as a client with permessage-deflate sends them, some fragmented after
    compression, with pings between fragments, masked."""
    encoder = PerMessageDeflate(False, draw(st.booleans()), 15, 15)
    stream = []
    for _ in range(draw(st.integers(1, 6))):
        is_text = draw(st.booleans())
        data = draw(st.text(max_size=200)).encode() if is_text else draw(st.binary(max_size=300))
        if draw(st.booleans()):
            data *= draw(st.integers(1, 20))  # something worth compressing
        opcode = TEXT if is_text else BINARY
        if draw(st.booleans()):
            stream.append(frame(opcode, data, mask=KEY))  # uncompressed
            continue
        compressed = encoder.encode(data)
        assert compressed is not None
        cuts = sorted(draw(st.lists(st.integers(0, len(compressed)), max_size=3)))
        pieces = [compressed[a:b] for a, b in zip([0, *cuts], [*cuts, len(compressed)])]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            stream.append(
                frame(opcode if i == 0 else CONT, piece, fin=last, rsv1=i == 0, mask=KEY)
            )
            if not last and draw(st.booleans()):
                stream.append(frame(PING, b"between", mask=KEY))
    return b"".join(stream)


def _receive(chunks: list[bytes]) -> tuple[list[tuple[str, object]], list[tuple], bool]:
    server = deflating_server()
    for chunk in chunks:
        server.receive_data(chunk)
    assert_not_failed(server)
    frames, eof = output(server)
    return [(type(e).__name__, e) for e in server.events_received()], frames, eof


class TestIncrementalParsing:
    """Any split of a compressed stream gives the same events and output."""

    @settings(max_examples=100, deadline=None)
    @given(stream=_compressed_stream(), cuts=st.lists(st.integers(0, 10**6), max_size=20))
    def test_any_split(self, stream: bytes, cuts: list[int]) -> None:
        points = sorted({c % (len(stream) + 1) for c in cuts})
        chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
        assert _receive(chunks) == _receive([stream])
