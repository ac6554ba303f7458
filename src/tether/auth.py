"""Handshake policies: who may open a WebSocket (tokens) and from which pages (Origin).

Both run before the upgrade: a refused request gets an HTTP answer (401, 403) and no WebSocket
is ever opened. Never accept and then close; the browser learns nothing useful from that, and
the server has already spent a connection.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .protocol.headers import parse_token_list
from .protocol.http11 import Request

__all__ = [
    "TokenAuth",
    "OriginPolicy",
    "SUBPROTOCOL_TOKEN_PREFIX",
    "is_generated_principal",
    "origin_matches_host",
    "is_loopback_host",
]

SUBPROTOCOL_TOKEN_PREFIX = "bearer."
"""Browsers cannot set headers on a WebSocket; they can offer subprotocols. A page sends its
token as ``new WebSocket(url, ["chat", "bearer." + token])``: the server authenticates with it
and never selects it (it selects "chat")."""

_SOURCES = ("header", "query", "cookie", "subprotocol")

_GENERATED_PRINCIPAL = re.compile(r"token-(?:line-)?[0-9]+")
"""The principals made up for tokens given without a name: "token-2" (the second of an
iterable of tokens; also what ``tether … --token`` gives) and "token-line-7" (a line of a
token file without a NAME)."""


def is_generated_principal(principal: object) -> bool:
    """Whether ``principal`` is a name made up for a token given without one ("token-1",
    "token-line-3"). Such a principal says which token was used, not who uses it: an
    application that shows names (the chat) lets the user pick one instead. A token file
    that names a token literally "token-5" is taken for a made-up name too."""
    return isinstance(principal, str) and _GENERATED_PRINCIPAL.fullmatch(principal) is not None


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
        same_host: also allow an Origin whose host and port are those of the request's Host
            header (see :func:`origin_matches_host` and :meth:`same_origin`).
    """

    def __init__(
        self, allowed: Iterable[str], *, require_origin: bool = False, same_host: bool = False
    ) -> None:
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
        self.same_host = same_host

    @classmethod
    def same_origin(
        cls, host: str | None, port: int, *, tls: bool = False, also: Iterable[str] = ()
    ) -> OriginPolicy:
        """The pages a server at ``host:port`` serves itself, plus the origins in ``also``.

        - Bound to a loopback address or ``localhost``: the origins of the page on every
          loopback name at ``port`` (``http://127.0.0.1:P``, ``http://localhost:P``,
          ``http://[::1]:P``). The Host header is not consulted: a site that points its own
          name at 127.0.0.1 (DNS rebinding) gets nowhere.
        - Bound to every interface (``0.0.0.0``, ``::``, empty), a LAN address or a host
          name: any Origin whose host and port are those of the request's Host header, as
          they are when the page came from this server (whatever name or address the browser
          used to reach it); a page from anywhere else is still refused. A site that points
          its own name at this server (DNS rebinding) passes this check, though without the
          user's cookies or tokens: require a token, or list the origins in ``also`` and use
          :class:`OriginPolicy` itself, where that matters.

        Args:
            host: the address the server listens on, as given to ``serve()``.
            port: its port.
            tls: whether it serves https/wss.
            also: more allowed origins (exact or with ``*``), in addition to the above.
        """
        scheme = "https" if tls else "http"
        name = (host or "").strip().lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if is_loopback_host(name):
            hosts = ["127.0.0.1", "localhost", "[::1]"]
            same_host = False
        elif _is_unspecified(name):
            hosts = []
            same_host = True
        else:
            hosts = [f"[{name}]" if ":" in name else name]
            same_host = True
        origins = [f"{scheme}://{h}:{port}" for h in hosts]
        if port == _DEFAULT_PORTS[scheme]:  # browsers leave the default port out
            origins += [f"{scheme}://{h}" for h in hosts]
        return cls([*origins, *also], same_host=same_host)

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
        if self.same_host:
            hosts = request.headers.get_all("Host")
            if len(hosts) == 1 and origin_matches_host(origin, hosts[0]):
                return None
        return "origin not allowed"


_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN = re.compile(r"(https?)://(\[[0-9a-f:.]+\]|[^\[\]/:@?#\s]+)(?::([0-9]{1,5}))?")
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[^\[\]/:@?#\s]+)(?::([0-9]{1,5}))?")


def origin_matches_host(origin: str, host: str) -> bool:
    """Whether a page of ``origin`` is on the host and port named by ``host`` (a Host
    header): ``http://[::1]:8765`` matches ``[::1]:8765``; ``https://chat.example.com``
    matches ``chat.example.com`` and ``chat.example.com:443``. Case is ignored; an opaque
    (``null``) or malformed origin matches nothing.
    """
    found = _ORIGIN.fullmatch(origin.strip().lower())
    target = _HOST.fullmatch(host.strip().lower())
    if found is None or target is None:
        return False
    scheme, origin_host, origin_port = found.groups()
    target_host, target_port = target.groups()
    default = _DEFAULT_PORTS[scheme]
    return origin_host == target_host and (
        int(origin_port or default) == int(target_port or default))


def _is_unspecified(host: str) -> bool:
    try:
        return host == "" or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or a name, without brackets) stays on this machine:
    a loopback address, ``localhost`` or a ``*.localhost`` name."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
