"""HTTP proxies for the client: a tunnel opened with ``CONNECT host:port`` (RFC 9110 §9.3.6).

The tunnel is set up on a plain non-blocking socket with the event loop's ``sock_*`` calls;
the connected socket then goes to ``loop.create_connection(sock=...)``, which runs TLS (for
wss://) and the WebSocket handshake over it as over any other socket.

Only ``http://`` proxies are supported (the hop to the proxy is not encrypted; what goes
through the tunnel to a wss:// server is). Credentials in the proxy URL are sent as
``Proxy-Authorization: Basic``. Environment variables (``HTTPS_PROXY``, ...) are never read:
a proxy is used only when given.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..exceptions import InvalidURI, ProxyError
from ..protocol.http11 import MAX_HEADER_BYTES, MAX_HEADERS, Headers, Response

__all__ = ["ProxyURI", "parse_proxy_uri", "open_tunnel"]


@dataclass(frozen=True)
class ProxyURI:
    """A parsed ``http://[user:password@]host[:port]`` proxy URL."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def authority(self) -> str:
        """host:port, as written in messages."""
        return _authority(self.host, self.port)


def parse_proxy_uri(uri: str) -> ProxyURI:
    """Parse a proxy URL: ``http://`` with a host; the port defaults to 80.

    Raises:
        InvalidURI: another scheme, no host, a bad port, or a path other than ``/``.
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"proxy {uri} is not a valid URI: {exc}") from None
    if parts.scheme != "http":
        raise InvalidURI(f"proxy {uri} is not an http:// URL (the only kind supported)")
    if not parts.hostname:
        raise InvalidURI(f"proxy {uri} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidURI(f"proxy {uri} has a path, query or fragment")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return ProxyURI(parts.hostname, port or 80, username, password)


def connect_request(proxy: ProxyURI, host: str, port: int) -> bytes:
    """The CONNECT request for ``host:port``, with Basic credentials if the URL had any."""
    target = _authority(host, port)
    headers = Headers([("Host", target)])
    if proxy.username is not None:
        credentials = f"{proxy.username}:{proxy.password or ''}".encode()
        headers.add("Proxy-Authorization", "Basic " + base64.b64encode(credentials).decode())
    return f"CONNECT {target} HTTP/1.1\r\n".encode("latin-1") + headers.serialize() + b"\r\n"


def parse_connect_response(head: bytes) -> Response:
    """Parse a response's header block (status line to the blank line, included).

    Raises:
        ProxyError: not an HTTP/1.x response.
    """
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.0", "HTTP/1.1") or len(status) != 3 or not status.isdigit():
        raise ProxyError(f"proxy sent an invalid status line: {lines[0][:80]!r}")
    headers = Headers()
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if len(headers) >= MAX_HEADERS:
            raise ProxyError(f"proxy sent more than {MAX_HEADERS} header fields")
        try:
            if not colon or not name or name != name.strip():
                raise ValueError
            headers.add(name, value.strip())
        except ValueError:
            raise ProxyError(f"proxy sent an invalid header line: {line[:80]!r}") from None
    return Response(int(status), headers, reason=reason.strip())


async def open_tunnel(proxy: ProxyURI, host: str, port: int) -> socket.socket:
    """Connect to the proxy, ask it for a tunnel to ``host:port`` and return the socket,
    connected and non-blocking, at the first byte of the tunnel.

    Raises:
        OSError: the proxy cannot be reached (every address it resolves to was tried).
        ProxyError: the proxy answered with a status other than 2xx, or not with HTTP.
    """
    loop = asyncio.get_running_loop()
    sock = await _connect_socket(proxy.host, proxy.port)
    try:
        await loop.sock_sendall(sock, connect_request(proxy, host, port))
        head, after = await _read_head(sock)
        response = parse_connect_response(head)
        if not 200 <= response.status < 300:
            hint = ""
            if response.status == 407:
                hint = " (bad credentials)" if proxy.username is not None else (
                    " (the proxy URL has no credentials)"
                )
            raise ProxyError(
                f"proxy {proxy.authority} refused CONNECT {_authority(host, port)}: "
                f"HTTP {response.status} {response.reason}{hint}",
                response,
            )
        if after:
            # Both TLS and the WebSocket handshake start with the client: nothing may come
            # through the tunnel before we send.
            raise ProxyError(f"proxy {proxy.authority} sent data after its {response.status}")
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket, trying each address ``host`` resolves to."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if len(errors) == 1:
        raise errors[0]
    details = "; ".join(str(exc) for exc in errors)
    raise OSError(f"cannot connect to proxy {_authority(host, port)}: {details}")


async def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read a response's header block, at most MAX_HEADER_BYTES; return it (blank line
    included) and any bytes read past it."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) >= MAX_HEADER_BYTES:
            raise ProxyError(f"proxy response header block exceeds {MAX_HEADER_BYTES} bytes")
        chunk = await loop.sock_recv(sock, MAX_HEADER_BYTES - len(data))
        if not chunk:
            raise ProxyError("proxy closed the connection before answering CONNECT")
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
