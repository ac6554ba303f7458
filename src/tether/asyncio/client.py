"""The asyncio client: ``connect(uri)``, awaitable, an async context manager, and an async
iterator that reconnects with backoff.

Reconnecting (``async for ws in connect(uri)``) retries what may heal by itself and raises what
will not:

============================================  =====================================
retried                                       raised, ending the iteration
============================================  =====================================
OSError: refused, reset, unreachable, DNS     InvalidURI (also a bad ``proxy=`` URL)
TimeoutError (``open_timeout``)               TLS certificate verification failure
InvalidStatus/ProxyError 5xx, 408, 429        InvalidStatus/ProxyError: other status
InvalidMessage (no or garbled response)       other HandshakeError (bad Accept, ...)
ProxyError without a valid HTTP answer        an exception raised by ``on_reconnect``
a close from the peer with any other code     a close from the peer in ``no_reconnect_codes``
                                              (default 1008 and 4000-4999)
============================================  =====================================
"""

from __future__ import annotations

import asyncio
import inspect
import random
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Generator, Sequence
from typing import Any

from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    ProxyError,
)
from ..protocol.client import ClientProtocol, parse_uri, redact_uri
from ..protocol.connection import DEFAULT_MAX_MESSAGE_SIZE
from ..protocol.extensions.base import ClientExtensionFactory
from ..protocol.http11 import Response
from .connection import Listener, WebSocket, logger
from .proxy import ProxyURI, open_tunnel, parse_proxy_uri

__all__ = [
    "connect",
    "ClientConnection",
    "OnReconnect",
    "backoff_delay",
    "is_retryable",
    "BACKOFF_INITIAL",
    "BACKOFF_FACTOR",
    "BACKOFF_MAX",
    "BACKOFF_RESET_AFTER",
    "NO_RECONNECT_CODES",
    "RETRY_STATUSES",
    "redact_uri",
]

BACKOFF_INITIAL = 3.0
"""Seconds: the first retry waits a random time below this."""
BACKOFF_FACTOR = 1.618
"""Each further retry may wait this much longer than the one before."""
BACKOFF_MAX = 60.0
"""Seconds: no retry waits longer (a ``Retry-After`` above it is cut to it too)."""
BACKOFF_RESET_AFTER = 10.0
"""Seconds: a connection that stayed open this long starts the backoff over."""
NO_RECONNECT_CODES: frozenset[int] = frozenset({1008, *range(4000, 5000)})
"""Close codes from the server that end the iteration instead of reconnecting: 1008 (policy
violation: authentication, authorization, rate policy) and the private-use range, which
applications use for "do not come back" (e.g. 4001 unauthorized)."""
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, *range(500, 600)})
"""HTTP statuses (from the server or the proxy) that are retried: 408 Request Timeout,
429 Too Many Requests (waiting at least its Retry-After), and every 5xx. Any other status is
the server saying no (401, 403, 404, ...), or a misconfiguration (3xx, 200): raised."""

OnReconnect = Callable[[int, float, Exception], "Awaitable[None] | None"]
"""``on_reconnect(attempt, delay, cause)``, sync or async: called before each wait."""


class ClientConnection(WebSocket):
    """The client's side of one connection."""

    __slots__ = ("handshake_done", "handshake_listener")

    protocol: ClientProtocol

    def __init__(
        self, protocol: ClientProtocol, listener: Listener | None = None, **options: Any
    ) -> None:
        super().__init__(protocol, **options)
        self.handshake_done: asyncio.Future[None] = self.loop.create_future()
        self.handshake_listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        request = self.protocol.connect()
        self.request = request
        self.protocol.send_request(request)
        self._write(self.protocol.data_to_send())
        self._flush()  # the request goes out now

    def _process_other_event(self, event: Any) -> None:
        if isinstance(event, Response):
            self.response = event
            self.opened_at = self.loop.time()
            self.start_keepalive()
            if not self.handshake_done.done():
                self.handshake_done.set_result(None)
            listener = self.handshake_listener
            if listener is not None:
                # From here on, messages go to the listener (frames that came with the 101
                # response too: they are processed after this event).
                self._listener = listener
                try:
                    listener.on_open(self)
                except Exception:
                    self._listener_failed("on_open")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._check_handshake()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._check_handshake(exc)

    def closed_error(self) -> ConnectionClosed:
        """How the connection closed, as ``recv()`` raises it: ConnectionClosedOK or
        ConnectionClosedError, with ``.code`` and ``.reason``."""
        return self._closed_error()

    def _check_handshake(self, exc: Exception | None = None) -> None:
        if self.handshake_done.done():
            return
        error = self.protocol.handshake_error
        if error is None and self._lost:
            error = InvalidMessage(f"connection closed during the opening handshake: {exc}")
        if error is not None:
            self.handshake_done.set_exception(error)


class connect:
    """Open a WebSocket connection: ``async with connect(uri) as ws:`` or
    ``ws = await connect(uri)``; or keep one open: ``async for ws in connect(uri):``, also
    spelled ``async for ws in connect(uri, reconnect=True):``.

    Awaited or used with ``async with``, one attempt is made and its failure raised. A
    connection that closes stays closed: only the iteration reconnects, so ``reconnect=True``
    with ``await`` or ``async with`` raises TypeError instead of quietly not reconnecting.

    Iterated, each step yields an open connection. When the loop body asks for the next one,
    the current connection is closed (1000) if it is not closed yet, and a new one is opened
    after a wait: exponential backoff with full jitter, a random time in
    ``[0, min(backoff_max, backoff_initial * backoff_factor ** (attempt - 1))]``. Failed
    attempts are retried the same way; the module docstring lists what is retried and what
    is raised. The attempt count starts over after a connection that stayed open for
    ``backoff_reset_after`` seconds. Breaking out of the loop closes the current connection
    (1000) when the iterator is finalized: at once in CPython; ``await ws.close()`` before
    ``break`` makes it explicit. Typical use::

        async for ws in connect(uri):
            try:
                async for message in ws:
                    ...
            except ConnectionClosed:
                continue  # reconnect; the iteration raises if the close code says not to

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
        ping_interval, ping_timeout: the heartbeat, as on the server (20 s and 20 s; None
            turns it off).
        proxy: an HTTP proxy, ``http://[user:password@]host[:port]``, to tunnel through with
            CONNECT (credentials go in ``Proxy-Authorization: Basic``). ``None`` (the default):
            connect directly; environment variables such as ``HTTPS_PROXY`` are not read.
        backoff_initial: the first retry waits up to this many seconds.
        backoff_factor: how much the longest wait grows with each further attempt.
        backoff_max: the cap on the longest wait, in seconds.
        backoff_reset_after: a connection open this many seconds starts the count over.
        no_reconnect_codes: close codes that end the iteration when the server closes with
            one (raising ConnectionClosedError; 1000 or 1001 end it without an error).
        reconnect: how iterating behaves. None (the default) or True: reconnect, as above;
            True also makes awaiting a mistake (TypeError). False: the iteration yields one
            connection, and a failure to open it is raised, never retried.
        on_reconnect: ``on_reconnect(attempt, delay, cause)``, sync or async, called before
            each wait. ``attempt`` is 1 for the first retry since the last reset, then 2, 3...;
            ``delay`` the seconds about to be waited; ``cause`` the exception that failed the
            attempt, or the :class:`ConnectionClosed` that describes how the previous
            connection closed (``.code``, ``.reason``). An exception it raises ends the
            iteration.
        listener: a :class:`~tether.asyncio.connection.Listener` that gets every message
            through its callbacks (``on_open``, ``on_message``, ``on_close``) instead of
            ``recv()``; the connection is still returned, to send and close with.

    Raises (when awaited, or from the iteration for failures not retried):
        InvalidURI, OSError, TimeoutError, HandshakeError (InvalidStatus for a non-101 answer,
        with ``.response.status`` and ``.response.body``; ProxyError when the proxy did not
        open the tunnel, with ``.response.status``), ssl.SSLCertVerificationError.
        The iteration also raises ConnectionClosedError for a close code in
        ``no_reconnect_codes``.
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
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        proxy: str | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_factor: float = BACKOFF_FACTOR,
        backoff_max: float = BACKOFF_MAX,
        backoff_reset_after: float = BACKOFF_RESET_AFTER,
        no_reconnect_codes: Collection[int] = NO_RECONNECT_CODES,
        reconnect: bool | None = None,
        on_reconnect: OnReconnect | None = None,
        listener: Listener | None = None,
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
        self.options: dict[str, Any] = dict(
            max_queue=max_queue,
            write_limit=write_limit,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        self.max_size = max_size
        self.proxy = proxy
        self.backoff_initial = backoff_initial
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.backoff_reset_after = backoff_reset_after
        self.no_reconnect_codes = frozenset(no_reconnect_codes)
        self.reconnect = reconnect
        self.on_reconnect = on_reconnect
        self.listener = listener
        self.connection: ClientConnection | None = None

    async def _connect(self) -> ClientConnection:
        shown = redact_uri(self.uri)  # what messages and logs may say: no token, no password
        try:
            wsuri = parse_uri(self.uri)
        except InvalidURI as exc:
            raise InvalidURI(str(exc).replace(self.uri, shown)) from None
        ssl_context = self.ssl
        if wsuri.secure:
            if ssl_context is False:
                raise InvalidURI(f"{shown} is wss://, which needs TLS; ssl=False refuses it")
            if ssl_context is None or ssl_context is True:
                ssl_context = ssl_module.create_default_context()
        elif ssl_context:
            raise InvalidURI(f"{shown} is ws://; use wss:// for TLS")
        else:
            ssl_context = None
        proxy = None
        if self.proxy is not None:
            try:
                proxy = parse_proxy_uri(self.proxy)
            except InvalidURI as exc:
                raise InvalidURI(str(exc).replace(self.proxy, redact_uri(self.proxy))) from None
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

        server_hostname = (self.server_hostname or wsuri.host) if ssl_context else None

        def factory() -> ClientConnection:
            return ClientConnection(protocol, self.listener, **self.options)

        async def open_connection() -> ClientConnection:
            if proxy is None:
                _, connection = await loop.create_connection(
                    factory,
                    wsuri.host,
                    wsuri.port,
                    ssl=ssl_context or None,
                    server_hostname=server_hostname,
                )
            else:
                connection = await self._connect_through(proxy, factory, wsuri.host,
                                                         wsuri.port, ssl_context or None,
                                                         server_hostname)
            try:
                await connection.handshake_done
            except BaseException:  # open_timeout, cancelled, or refused: never leak the socket
                if connection.transport is not None:
                    connection.transport.abort()
                raise
            return connection

        task = asyncio.ensure_future(open_connection())
        try:
            connection = await asyncio.wait_for(task, self.open_timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"timed out opening {shown}") from None
        self.connection = connection
        return connection

    @staticmethod
    async def _connect_through(
        proxy: ProxyURI,
        factory: Callable[[], ClientConnection],
        host: str,
        port: int,
        ssl_context: ssl_module.SSLContext | None,
        server_hostname: str | None,
    ) -> ClientConnection:
        """Open a tunnel to host:port through ``proxy``; run TLS (if any) over it."""
        sock = await open_tunnel(proxy, host, port)
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                factory, sock=sock, ssl=ssl_context, server_hostname=server_hostname
            )
        except BaseException:
            sock.close()  # the transport closed it already if it was made; harmless then
            raise
        return connection

    async def __aiter__(self) -> AsyncIterator[ClientConnection]:
        if self.reconnect is False:
            connection = await self._connect()
            try:
                yield connection
            finally:
                await connection.close()
            return
        attempt = 0
        while True:
            try:
                connection = await self._connect()
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                cause: Exception = exc
            else:
                try:
                    yield connection
                finally:
                    # The body asks for the next connection, or the loop was left (break,
                    # exception): either way this one is done.
                    await connection.close()
                cause = connection.closed_error()
                if _peer_closed_with(connection, self.no_reconnect_codes):
                    if isinstance(cause, ConnectionClosedOK):
                        return
                    raise cause
                if connection.loop.time() - connection.opened_at >= self.backoff_reset_after:
                    attempt = 0
            attempt += 1
            delay = backoff_delay(
                attempt, self.backoff_initial, self.backoff_factor, self.backoff_max
            )
            retry_after = _retry_after(cause)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.backoff_max))
            # Without query and user:password: a ?token= must never reach the log. The
            # cause's message was built from the same redacted URI.
            logger.info("event=reconnect url=%s cause=%s delay=%.1fs attempt=%d",
                        redact_uri(self.uri), _describe(cause), delay, attempt)
            if self.on_reconnect is not None:
                result = self.on_reconnect(attempt, delay, cause)
                if inspect.isawaitable(result):
                    await result
            await asyncio.sleep(delay)

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        self._check_single()
        return self._connect().__await__()

    async def __aenter__(self) -> ClientConnection:
        self._check_single()
        return await self._connect()

    def _check_single(self) -> None:
        if self.reconnect:
            raise TypeError(
                "connect(..., reconnect=True) reconnects only when iterated: "
                "async for ws in connect(...); await it or use async with without "
                "reconnect=True for a single connection"
            )

    async def __aexit__(self, *exc_info: object) -> None:
        if self.connection is not None:
            await self.connection.close()


def backoff_delay(
    attempt: int,
    initial: float = BACKOFF_INITIAL,
    factor: float = BACKOFF_FACTOR,
    maximum: float = BACKOFF_MAX,
) -> float:
    """How long to wait before retry number ``attempt`` (1, 2, ...): exponential backoff with
    full jitter, uniformly random in ``[0, min(maximum, initial * factor ** (attempt - 1))]``.
    Randomness spreads the clients of a restarted server over the whole window."""
    try:
        ceiling = min(maximum, initial * factor ** (attempt - 1))
    except OverflowError:  # far past the cap
        ceiling = maximum
    return random.uniform(0.0, ceiling)


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed connection attempt may succeed later (see the module docstring)."""
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return False  # an OSError, but the certificate will not change by itself
    if isinstance(exc, (InvalidStatus, ProxyError)):
        response = exc.response
        return response is None or response.status in RETRY_STATUSES
    return isinstance(exc, (InvalidMessage, OSError))


def _peer_closed_with(connection: ClientConnection, codes: frozenset[int]) -> bool:
    """Whether the server started the closing handshake with one of ``codes``. A close this
    side started (e.g. by leaving the loop body) never stops the reconnecting."""
    protocol = connection.protocol
    rcvd = protocol.close_rcvd
    if rcvd is None or rcvd.code not in codes:
        return False
    return protocol.close_sent is None or bool(protocol.close_rcvd_then_sent)


def _retry_after(cause: Exception) -> float | None:
    """Seconds from a 429 or 503 response's Retry-After (delay-seconds form only)."""
    response: Response | None = None
    if isinstance(cause, (InvalidStatus, ProxyError)):
        response = cause.response
    if response is None or response.status not in (429, 503):
        return None
    value = (response.headers.get("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None


def _describe(cause: Exception) -> str:
    if isinstance(cause, ConnectionClosed):
        return f"connection closed ({cause})"
    return f"connect failed ({type(cause).__name__}: {cause})"
