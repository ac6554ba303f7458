"""Pure helpers of the opening handshake shared by both sides, RFC 6455 §4."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from ..exceptions import HandshakeError
from .headers import parse_token_list
from .http11 import Headers, Request

__all__ = [
    "GUID",
    "accept_key",
    "generate_key",
    "check_request",
    "has_token",
    "error_response_headers",
]

# RFC 6455 §1.3: the globally unique identifier appended to the key.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


_GUID_BYTES = GUID.encode()
_sha1 = hashlib.sha1
_b2a_base64 = binascii.b2a_base64


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)), §4.2.2."""
    return _b2a_base64(_sha1(key.encode() + _GUID_BYTES).digest(), newline=False).decode()


def generate_key() -> str:
    """A fresh Sec-WebSocket-Key: base64 of 16 random bytes from ``secrets``, §4.1."""
    return base64.b64encode(secrets.token_bytes(16)).decode()


def has_token(headers: Headers, name: str, token: str) -> bool:
    """Whether the comma-separated header ``name`` holds ``token`` (case-insensitive).

    Raises:
        HandshakeError: the header is not a list of tokens.
    """
    return _has_token(headers._lookup().get(name.lower()), name, token)


def _has_token(values: list[str] | None, name: str, token: str) -> bool:
    if values is None:
        return False
    if len(values) == 1 and values[0].lower() == token:
        return True  # the common case, "Upgrade: websocket": a list of one token
    try:
        tokens = parse_token_list(values, f"{name} token")
    except HandshakeError as exc:
        raise HandshakeError(f"invalid {name} header: {exc}") from None
    return any(value.lower() == token for value in tokens)


# The base64 alphabet.
_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _check_key(key: str) -> None:
    """Raise unless ``key`` is base64 that decodes to 16 bytes."""
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise HandshakeError("Sec-WebSocket-Key is not valid base64") from None
    if len(raw) != 16:
        raise HandshakeError(f"Sec-WebSocket-Key must decode to 16 bytes, not {len(raw)}")


def check_request(request: Request) -> str:
    """Validate a client's opening handshake, §4.2.1; return its Sec-WebSocket-Key.

    Raises:
        HandshakeError: ``status_hint`` is 426 for a plain HTTP request or an unsupported
            version, 400 for anything else, and the message says what was wrong.
    """
    get = request.headers._lookup().get
    upgrade = get("upgrade")
    connection = get("connection")
    # The common case of each check first, inline; the general one in a helper.
    if upgrade is None and not _has_token(connection, "Connection", "upgrade"):
        # A plain HTTP request on a WebSocket endpoint.
        raise HandshakeError("this endpoint speaks WebSocket only; send an upgrade request", 426)
    # §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    method = request.method
    if method != "GET":
        raise HandshakeError(f"WebSocket upgrade requires GET, not {method}")
    version = request.http_version
    if version == "0.9" or version == "1.0":
        raise HandshakeError(f"WebSocket upgrade requires HTTP/1.1, not {version}")
    # Item 2: "A |Host| header field".
    host = get("host")
    if host is None:
        raise HandshakeError("missing Host header")
    if len(host) > 1:
        raise HandshakeError("more than one Host header")
    # Item 3: "An |Upgrade| header field containing the value "websocket"".
    if not (
        upgrade is not None and len(upgrade) == 1 and upgrade[0].lower() == "websocket"
    ) and not _has_token(upgrade, "Upgrade", "websocket"):
        raise HandshakeError("Upgrade header must include websocket")
    # Item 4: "A |Connection| header field that includes the token "Upgrade"".
    if not (
        connection is not None and len(connection) == 1 and connection[0].lower() == "upgrade"
    ) and not _has_token(connection, "Connection", "upgrade"):
        raise HandshakeError("Connection header must include Upgrade")
    # Item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded value that, when
    # decoded, is 16 bytes in length".
    keys = get("sec-websocket-key")
    if keys is None:
        raise HandshakeError("missing Sec-WebSocket-Key header")
    if len(keys) > 1:
        raise HandshakeError("more than one Sec-WebSocket-Key header")
    key = keys[0]
    # 16 bytes are 22 base64 characters and "==" (RFC 4648 §4).
    if not (len(key) == 24 and key[22:] == "==" and _BASE64_CHARS.issuperset(key[:22])):
        _check_key(key)
    # Item 6: "A |Sec-WebSocket-Version| header field, with a value of 13"; §4.2.2: otherwise
    # answer 426 with the versions we speak.
    versions = get("sec-websocket-version")
    if versions != ["13"]:
        found = ", ".join(versions) if versions else "none"
        raise HandshakeError(f"Sec-WebSocket-Version must be 13, not {found}", 426)
    return key


def error_response_headers(status: int, body: bytes) -> Headers:
    """The header fields of a plain-text error response that closes the connection."""
    headers = Headers()
    if status == 426:
        # RFC 9110 §15.5.22: a 426 MUST say which protocol to upgrade to; RFC 6455 §4.2.2:
        # and which WebSocket versions the server understands.
        headers.add("Upgrade", "websocket")
        headers.add("Sec-WebSocket-Version", "13")
    headers.add("Content-Type", "text/plain; charset=utf-8")
    headers.add("Content-Length", str(len(body)))
    headers.add("Connection", "Upgrade, close" if status == 426 else "close")
    return headers
