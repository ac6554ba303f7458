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


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)), §4.2.2."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def generate_key() -> str:
    """A fresh Sec-WebSocket-Key: base64 of 16 random bytes from ``secrets``, §4.1."""
    return base64.b64encode(secrets.token_bytes(16)).decode()


def has_token(headers: Headers, name: str, token: str) -> bool:
    """Whether the comma-separated header ``name`` holds ``token`` (case-insensitive).

    Raises:
        HandshakeError: the header is not a list of tokens.
    """
    try:
        values = parse_token_list(headers.get_all(name), f"{name} token")
    except HandshakeError as exc:
        raise HandshakeError(f"invalid {name} header: {exc}") from None
    return any(value.lower() == token for value in values)


def _single(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    if len(values) > 1:
        raise HandshakeError(f"more than one {name} header")
    return values[0] if values else None


def check_request(request: Request) -> str:
    """Validate a client's opening handshake, §4.2.1; return its Sec-WebSocket-Key.

    Raises:
        HandshakeError: ``status_hint`` is 426 for a plain HTTP request or an unsupported
            version, 400 for anything else, and the message says what was wrong.
    """
    headers = request.headers
    has_upgrade_header = "Upgrade" in headers
    if not has_upgrade_header and not has_token(headers, "Connection", "upgrade"):
        # A plain HTTP request on a WebSocket endpoint.
        raise HandshakeError("this endpoint speaks WebSocket only; send an upgrade request", 426)
    # §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if request.method != "GET":
        raise HandshakeError(f"WebSocket upgrade requires GET, not {request.method}")
    if request.http_version in ("0.9", "1.0"):
        raise HandshakeError(f"WebSocket upgrade requires HTTP/1.1, not {request.http_version}")
    # Item 2: "A |Host| header field".
    if _single(headers, "Host") is None:
        raise HandshakeError("missing Host header")
    # Item 3: "An |Upgrade| header field containing the value "websocket"".
    if not has_token(headers, "Upgrade", "websocket"):
        raise HandshakeError("Upgrade header must include websocket")
    # Item 4: "A |Connection| header field that includes the token "Upgrade"".
    if not has_token(headers, "Connection", "upgrade"):
        raise HandshakeError("Connection header must include Upgrade")
    # Item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded value that, when
    # decoded, is 16 bytes in length".
    key = _single(headers, "Sec-WebSocket-Key")
    if key is None:
        raise HandshakeError("missing Sec-WebSocket-Key header")
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise HandshakeError("Sec-WebSocket-Key is not valid base64") from None
    if len(raw) != 16:
        raise HandshakeError(f"Sec-WebSocket-Key must decode to 16 bytes, not {len(raw)}")
    # Item 6: "A |Sec-WebSocket-Version| header field, with a value of 13"; §4.2.2: otherwise
    # answer 426 with the versions we speak.
    version = headers.get_all("Sec-WebSocket-Version")
    if version != ["13"]:
        found = ", ".join(version) if version else "none"
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
