"""Handshake policies: who may open a WebSocket (tokens) and from which pages (Origin).

Both run before the upgrade: a refused request gets an HTTP answer (401, 403) and no WebSocket
is ever opened. Never accept and then close; the browser learns nothing useful from that, and
the server has already spent a connection.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .protocol.headers import parse_token_list
from .protocol.http11 import Request

__all__ = ["TokenAuth", "OriginPolicy", "SUBPROTOCOL_TOKEN_PREFIX"]

SUBPROTOCOL_TOKEN_PREFIX = "bearer."
"""Browsers cannot set headers on a WebSocket; they can offer subprotocols. A page sends its
token as ``new WebSocket(url, ["chat", "bearer." + token])``: the server authenticates with it
and never selects it (it selects "chat")."""

_SOURCES = ("header", "query", "cookie", "subprotocol")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuth:
    """Bearer-token authentication for the handshake; call it with the request.

    Tokens are kept only as SHA-256 digests and compared by digest lookup, so neither the
    tokens nor timing differences between them are exposed. The principal (``ws.user``) is the
    name given to a token, never the token itself.

    Args:
        tokens: the valid tokens: a mapping token -> principal name, or an iterable of tokens
            (principal "token-1", "token-2", ... in order).
        sources: where to look, in order: "header" (``Authorization: Bearer …``, for
            non-browser clients), "query" (``?token=…``), "cookie" (``token=…``), "subprotocol"
            (an offered ``bearer.…`` subprotocol).
        query_param, cookie_name: the names used in the query string and the cookie.
    """

    def __init__(
        self,
        tokens: Mapping[str, str] | Iterable[str],
        *,
        sources: Iterable[str] = _SOURCES,
        query_param: str = "token",
        cookie_name: str = "token",
    ) -> None:
        if isinstance(tokens, Mapping):
            pairs = list(tokens.items())
        else:
            pairs = [(token, f"token-{i}") for i, token in enumerate(tokens, 1)]
        self._principals: dict[bytes, str] = {
            _digest(token): str(name) for token, name in pairs if token
        }
        if not self._principals:
            raise ValueError("TokenAuth needs at least one non-empty token")
        self.sources = tuple(sources)
        for source in self.sources:
            if source not in _SOURCES:
                raise ValueError(f"unknown token source {source!r}; use {', '.join(_SOURCES)}")
        self.query_param = query_param
        self.cookie_name = cookie_name

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> TokenAuth:
        """Read tokens from a file: one per line, ``TOKEN`` or ``TOKEN NAME``; blank lines and
        lines starting with # are skipped.

        Raises:
            OSError: the file cannot be read.
            ValueError: it holds no token.
        """
        tokens: dict[str, str] = {}
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            token, _, name = line.partition(" ")
            tokens[token] = name.strip() or f"token-line-{number}"
        return cls(tokens, **options)

    def candidates(self, request: Request) -> list[str]:
        """Every token the request carries, from the configured sources, in order."""
        found: list[str] = []
        headers = request.headers
        for source in self.sources:
            if source == "header":
                for value in headers.get_all("Authorization"):
                    scheme, _, credentials = value.strip().partition(" ")
                    if scheme.lower() == "bearer" and credentials.strip():
                        found.append(credentials.strip())
            elif source == "query":
                found.extend(request.query_params.get(self.query_param, []))
            elif source == "cookie":
                token = request.cookies.get(self.cookie_name)
                if token:
                    found.append(token)
            else:
                found.extend(subprotocol_tokens(request))
        return found

    def __call__(self, request: Request) -> str | None:
        """The principal for the request's token, or None when it has no valid token."""
        for candidate in self.candidates(request):
            principal = self._principals.get(_digest(candidate))
            if principal is not None:
                return principal
        return None


def subprotocol_tokens(request: Request) -> list[str]:
    """The tokens offered as ``bearer.<token>`` subprotocols."""
    try:
        offered = parse_token_list(request.headers.get_all("Sec-WebSocket-Protocol"))
    except Exception:  # a malformed header is the handshake's to refuse, with a 400
        return []
    n = len(SUBPROTOCOL_TOKEN_PREFIX)
    return [p[n:] for p in offered if p.startswith(SUBPROTOCOL_TOKEN_PREFIX) and len(p) > n]


class OriginPolicy:
    """An Origin allow-list against cross-site WebSocket hijacking (CSWSH).

    A browser always sends the page's origin on a WebSocket upgrade, and cookies go along with
    it: without this check, any site a logged-in user visits can open a socket to you *as
    that user*. Requests without Origin come from non-browser clients and are allowed unless
    ``require_origin`` is set.

    Args:
        allowed: exact origins (``https://chat.example.com``) and patterns with ``*``
            (``https://*.example.com``, which does not match ``https://example.com``).
            Comparison ignores case; ``null`` (sandboxed pages, file://) must be listed
            explicitly to be allowed.
        require_origin: refuse requests without an Origin header.
    """

    def __init__(self, allowed: Iterable[str], *, require_origin: bool = False) -> None:
        self.exact: set[str] = set()
        self.patterns: list[re.Pattern[str]] = []
        for origin in allowed:
            origin = origin.strip().lower().rstrip("/")
            if not origin:
                continue
            if "*" in origin:
                # "*" stands for host characters only: never a port, a scheme or a path.
                regex = ".*".join(re.escape(part) for part in origin.split("*"))
                self.patterns.append(re.compile(regex.replace(".*", "[a-z0-9.-]*")))
            else:
                self.exact.add(origin)
        self.require_origin = require_origin

    def allows(self, origin: str | None) -> bool:
        """Whether a request with this Origin header (None: absent) may connect."""
        if origin is None:
            return not self.require_origin
        origin = origin.strip().lower()
        if origin in self.exact:
            return True
        return any(pattern.fullmatch(origin) for pattern in self.patterns)

    def check(self, request: Request) -> str | None:
        """None when allowed, else why not (for the 403 body)."""
        values = request.headers.get_all("Origin")
        if len(values) > 1:
            return "more than one Origin header"
        origin = values[0] if values else None
        if self.allows(origin):
            return None
        if origin is None:
            return "Origin header required"
        return "origin not allowed"
