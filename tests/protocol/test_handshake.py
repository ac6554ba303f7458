"""tether.protocol.handshake: the key/accept token, token checks and request validation."""

from __future__ import annotations

import base64

import pytest

from tether.exceptions import HandshakeError
from tether.protocol.handshake import (
    GUID,
    accept_key,
    check_request,
    error_response_headers,
    generate_key,
    has_token,
)
from tether.protocol.http11 import Headers, Request

from .conftest import SAMPLE_ACCEPT, SAMPLE_KEY


def request(*, method: str = "GET", version: str = "1.1", **overrides: str | None) -> Request:
    """RFC 6455 §1.2's sample request; keyword arguments replace (or, with None, drop) headers
    named with underscores for dashes."""
    fields = {
        "Host": "server.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": SAMPLE_KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        fields[name.replace("_", "-")] = value  # type: ignore[assignment]
    headers = Headers([(k, v) for k, v in fields.items() if v is not None])
    return Request(method, "/chat", headers, version)


class TestAcceptKey:
    """RFC 6455 §1.3 and §4.2.2 item 5.4: base64(SHA-1(key + GUID))."""

    def test_rfc_example(self) -> None:
        assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert accept_key(SAMPLE_KEY) == SAMPLE_ACCEPT

    def test_guid(self) -> None:
        assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class TestGenerateKey:
    """RFC 6455 §4.1: "a randomly selected 16-byte value that has been base64-encoded"."""

    def test_sixteen_random_bytes(self) -> None:
        keys = {generate_key() for _ in range(50)}
        assert len(keys) == 50
        for key in keys:
            assert len(key) == 24
            assert len(base64.b64decode(key, validate=True)) == 16


class TestHasToken:
    """RFC 9110 §5.6.1 lists and §7.6.1 Connection: tokens are case-insensitive."""

    @pytest.mark.parametrize(
        "values",
        [["Upgrade"], ["upgrade"], ["UPGRADE"], ["keep-alive, Upgrade"], ["keep-alive", "upgrade"],
         [" , keep-alive ,, Upgrade , "]],
    )
    def test_found(self, values: list[str]) -> None:
        assert has_token(Headers([("Connection", v) for v in values]), "Connection", "upgrade")

    @pytest.mark.parametrize("values", [[], ["keep-alive"], ["upgrades"], ["close, keep-alive"]])
    def test_not_found(self, values: list[str]) -> None:
        assert not has_token(Headers([("Connection", v) for v in values]), "Connection", "upgrade")

    def test_invalid_list(self) -> None:
        with pytest.raises(HandshakeError, match="invalid Connection header"):
            has_token(Headers([("Connection", "up grade")]), "Connection", "upgrade")


class TestCheckRequest:
    """RFC 6455 §4.2.1: what the server reads in the client's opening handshake."""

    def test_valid(self) -> None:
        assert check_request(request()) == SAMPLE_KEY

    def test_key_variants(self) -> None:
        # Any 22 base64 characters and "==" decode to 16 bytes (the unused bits are ignored).
        for key in ("AAAAAAAAAAAAAAAAAAAAAA==", "////////////////////////"[:22] + "==",
                    "dGhlIHNhbXBsZSBub25jZR=="):
            assert check_request(request(Sec_WebSocket_Key=key)) == key

    def test_token_variants(self) -> None:
        assert check_request(request(Upgrade="WebSocket", Connection="keep-alive, Upgrade"))
        assert check_request(request(Upgrade="h2c, websocket", Connection="UPGRADE"))
        assert check_request(request(version="2"))

    @pytest.mark.parametrize(
        ("req", "status", "message"),
        [
            (request(Upgrade=None, Connection=None), 426, "speaks WebSocket only"),
            (request(Upgrade=None, Connection="keep-alive"), 426, "speaks WebSocket only"),
            (request(method="POST"), 400, "requires GET, not POST"),
            (request(version="1.0"), 400, "requires HTTP/1.1, not 1.0"),
            (request(version="0.9"), 400, "requires HTTP/1.1, not 0.9"),
            (request(Host=None), 400, "missing Host"),
            (request(Upgrade="h2c"), 400, "Upgrade header must include websocket"),
            (request(Upgrade=None), 400, "Upgrade header must include websocket"),
            (request(Connection="keep-alive"), 400, "Connection header must include Upgrade"),
            (request(Connection=None), 400, "Connection header must include Upgrade"),
            (request(Sec_WebSocket_Key=None), 400, "missing Sec-WebSocket-Key"),
            (request(Sec_WebSocket_Key="not base64!"), 400, "not valid base64"),
            (request(Sec_WebSocket_Key="é" * 24), 400, "not valid base64"),
            (request(Sec_WebSocket_Key=base64.b64encode(bytes(15)).decode()), 400, "not 15"),
            (request(Sec_WebSocket_Key=base64.b64encode(bytes(17)).decode()), 400, "not 17"),
            (request(Sec_WebSocket_Key=""), 400, "not 0"),
            # 24 characters ending in "==", the shape of a 16-byte key, but not base64.
            (request(Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZ*=="), 400, "not valid base64"),
            (request(Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25j=Q=="), 400, "not valid base64"),
            (request(Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZé=="), 400, "not valid base64"),
            (request(Sec_WebSocket_Version="8"), 426, "must be 13, not 8"),
            (request(Sec_WebSocket_Version=None), 426, "must be 13, not none"),
            (request(Sec_WebSocket_Version="13, 8"), 426, "must be 13, not 13, 8"),
        ],
    )
    def test_invalid(self, req: Request, status: int, message: str) -> None:
        with pytest.raises(HandshakeError, match=message) as info:
            check_request(req)
        assert info.value.status_hint == status

    def test_two_keys(self) -> None:
        req = request()
        req.headers.add("Sec-WebSocket-Key", SAMPLE_KEY)
        with pytest.raises(HandshakeError, match="more than one Sec-WebSocket-Key") as info:
            check_request(req)
        assert info.value.status_hint == 400

    def test_two_hosts(self) -> None:
        req = request()
        req.headers.add("Host", "other.example.com")
        with pytest.raises(HandshakeError, match="more than one Host"):
            check_request(req)

    def test_two_versions(self) -> None:
        req = request()
        req.headers.add("Sec-WebSocket-Version", "13")
        with pytest.raises(HandshakeError, match="must be 13, not 13, 13") as info:
            check_request(req)
        assert info.value.status_hint == 426

    def test_invalid_upgrade_list(self) -> None:
        with pytest.raises(HandshakeError, match="invalid Upgrade header"):
            check_request(request(Upgrade="web socket"))


class TestErrorResponseHeaders:
    """RFC 9110 §15.5.22 (426) and RFC 6455 §4.2.2: a plain-text error that closes the
    connection."""

    def test_plain_error(self) -> None:
        headers = error_response_headers(400, b"bad\n")
        assert list(headers) == [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", "4"),
            ("Connection", "close"),
        ]

    def test_426_says_what_to_upgrade_to(self) -> None:
        headers = error_response_headers(426, b"upgrade\n")
        assert headers.get_all("Upgrade") == ["websocket"]
        assert headers.get_all("Sec-WebSocket-Version") == ["13"]
        # RFC 9110 §7.8: "A server that sends an Upgrade header field MUST also send an
        # "Upgrade" connection option in the Connection header field".
        assert "upgrade" in headers.get("Connection", "").lower()  # type: ignore[union-attr]

    def test_426_keeps_content_length(self) -> None:
        # Regression: the 426 once lost Content-Length and carried two Connection fields.
        headers = error_response_headers(426, b"upgrade\n")
        assert headers.get_all("Content-Length") == ["8"]
        assert headers.get_all("Connection") == ["Upgrade, close"]
