"""The asyncio client: ``connect(uri)``, awaitable and an async context manager."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Generator, Sequence
from typing import Any

from ..exceptions import HandshakeError, InvalidURI
from ..protocol.client import ClientProtocol, parse_uri
from ..protocol.connection import DEFAULT_MAX_MESSAGE_SIZE
from ..protocol.extensions.base import ClientExtensionFactory
from ..protocol.http11 import Response
from .connection import WebSocket

__all__ = ["connect", "ClientConnection"]


class ClientConnection(WebSocket):
    """The client's side of one connection."""

    protocol: ClientProtocol

    def __init__(self, protocol: ClientProtocol, **options: Any) -> None:
        super().__init__(protocol, **options)
        self.handshake_done: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        request = self.protocol.connect()
        self.request = request
        self.protocol.send_request(request)
        self._write(self.protocol.data_to_send())

    def _process_other_event(self, event: Any) -> None:
        if isinstance(event, Response):
            self.response = event
            self.opened_at = self.loop.time()
            if not self.handshake_done.done():
                self.handshake_done.set_result(None)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._check_handshake()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._check_handshake(exc)

    def _check_handshake(self, exc: Exception | None = None) -> None:
        if self.handshake_done.done():
            return
        error = self.protocol.handshake_error
        if error is None and self._lost:
            error = HandshakeError(f"connection closed during the opening handshake: {exc}")
        if error is not None:
            self.handshake_done.set_exception(error)


class connect:
    """Open a WebSocket connection: ``async with connect(uri) as ws:`` or
    ``ws = await connect(uri)``.

    Args:
        uri: ``ws://`` or ``wss://``.
        origin: the Origin header to send.
        subprotocols: subprotocols to offer, most preferred first.
        headers: extra request header fields, as (name, value) pairs or a dict.
        compression: "deflate" (default) or None.
        extensions: extension factories, instead of ``compression``.
        ssl: an SSLContext for wss:// (default: the system's trust store, verified).
        server_hostname: the name to verify the certificate against.
        open_timeout: the bound on TCP connect + TLS + opening handshake.
        max_size, max_queue, write_limit, close_timeout: see :class:`WebSocket`.

    Raises (when awaited):
        InvalidURI, OSError, TimeoutError, HandshakeError (InvalidStatus for a non-101 answer,
        with ``.response.status`` and ``.response.body``).
    """

    def __init__(
        self,
        uri: str,
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        headers: Sequence[tuple[str, str]] | dict[str, str] = (),
        compression: str | None = "deflate",
        extensions: Sequence[ClientExtensionFactory] | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 10.0,
        max_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        max_queue: int = 32,
        write_limit: int = 65536,
    ) -> None:
        if compression not in ("deflate", None):
            raise ValueError(f"unsupported compression {compression!r}: use 'deflate' or None")
        self.uri = uri
        self.origin = origin
        self.subprotocols = list(subprotocols)
        self.headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        self.extensions = [] if compression is None and extensions is None else extensions
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.open_timeout = open_timeout
        self.options = dict(
            max_queue=max_queue, write_limit=write_limit, close_timeout=close_timeout
        )
        self.max_size = max_size
        self.connection: ClientConnection | None = None

    async def _connect(self) -> ClientConnection:
        wsuri = parse_uri(self.uri)
        ssl_context = self.ssl
        if wsuri.secure:
            if ssl_context is None or ssl_context is True:
                ssl_context = ssl_module.create_default_context()
        elif ssl_context:
            raise InvalidURI(f"{self.uri} is ws://; use wss:// for TLS")
        else:
            ssl_context = None
        protocol = ClientProtocol(
            wsuri,
            origin=self.origin,
            subprotocols=self.subprotocols,
            extensions=self.extensions,
            headers=self.headers,
            max_message_size=self.max_size,
            auto_close_reply=False,
        )
        loop = asyncio.get_running_loop()

        async def open_connection() -> ClientConnection:
            _, connection = await loop.create_connection(
                lambda: ClientConnection(protocol, **self.options),
                wsuri.host,
                wsuri.port,
                ssl=ssl_context or None,
                server_hostname=(self.server_hostname or wsuri.host) if ssl_context else None,
            )
            await connection.handshake_done
            return connection

        task = asyncio.ensure_future(open_connection())
        try:
            connection = await asyncio.wait_for(task, self.open_timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"timed out opening {self.uri}") from None
        self.connection = connection
        return connection

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._connect().__await__()

    async def __aenter__(self) -> ClientConnection:
        return await self._connect()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.connection is not None:
            await self.connection.close()
