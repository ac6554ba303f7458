"""The asyncio server: ``serve(handler, host, port)``.

The opening handshake runs inside ``data_received`` (no task until it succeeds); then one task
per connection runs ``handler(ws)``. When the handler returns, the connection closes with 1000;
when it raises, with 1011 and the traceback in the log. ``Server.close()`` refuses new
connections and closes every open one with 1001.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

from ..exceptions import ConnectionClosed
from ..protocol.connection import DEFAULT_MAX_MESSAGE_SIZE, State
from ..protocol.extensions.base import ServerExtensionFactory
from ..protocol.http11 import Request, Response
from ..protocol.server import SelectSubprotocol, ServerProtocol
from .connection import WebSocket, logger

__all__ = ["serve", "Server", "ServerConnection", "Handler", "ProcessRequest"]

Handler = Callable[[WebSocket], Awaitable[None]]
ProcessRequest = Callable[
    ["ServerConnection", Request], "Response | None | Awaitable[Response | None]"
]
"""Sees the upgrade request first; returns a Response to answer with instead of upgrading,
or None to go on with the handshake. May be sync or async."""


class ServerConnection(WebSocket):
    """The server's side of one connection: handshake, then the handler."""

    protocol: ServerProtocol

    def __init__(self, server: Server, protocol: ServerProtocol) -> None:
        super().__init__(
            protocol,
            max_queue=server.max_queue,
            write_limit=server.write_limit,
            close_timeout=server.close_timeout,
        )
        self.server = server
        self.handler_task: asyncio.Task[None] | None = None
        self._open_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.server.closing:
            assert self.transport is not None
            self.transport.abort()
            return
        self.server.connections.add(self)
        self._open_timer = self.loop.call_later(self.server.open_timeout, self._open_timed_out)

    def _open_timed_out(self) -> None:
        # A client that never finishes its request (slowloris) is dropped.
        self._open_timer = None
        if self.protocol.state is State.CONNECTING and self.transport is not None:
            logger.info("%s handshake timed out", self.remote_address)
            self.transport.abort()

    def _process_other_event(self, event: Any) -> None:
        if isinstance(event, Request):
            self.request = event
            process = self.server.process_request
            if process is None:
                self._respond(self.protocol.accept(event))
                return
            result = process(self, event)
            if inspect.isawaitable(result):
                self.loop.create_task(self._respond_later(event, result))
            else:
                self._respond(result if result is not None else self.protocol.accept(event))

    async def _respond_later(
        self, request: Request, pending: Awaitable[Response | None]
    ) -> None:
        try:
            response = await pending
        except Exception:
            logger.exception("process_request failed")
            response = self.protocol.reject(500, "internal server error")
        if self.protocol.state is State.CONNECTING and not self._lost:
            self._respond(response if response is not None else self.protocol.accept(request))

    def _respond(self, response: Response) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        self.protocol.send_response(response)
        self.response = response
        # Frames pipelined after the request were parsed by send_response().
        events = self.protocol.events_received()
        self._write(self.protocol.data_to_send())
        if response.status == 101:
            self.opened_at = self.loop.time()
            self.handler_task = self.loop.create_task(self._run_handler())
            if events:
                self._process_events(events)
        else:
            logger.info(
                "%s %s rejected %d: %s",
                self.remote_address,
                self.request.path if self.request else "-",
                response.status,
                self.protocol.handshake_error,
            )

    def data_received(self, data: bytes) -> None:
        if self.protocol.state is State.CONNECTING and self.protocol.handshake_error is None:
            self.bytes_received += len(data)
            self.protocol.receive_data(data)
            if self.protocol.handshake_error is not None:  # unparseable request, answered
                self._write(self.protocol.data_to_send())
                logger.info("%s bad request: %s", self.remote_address,
                            self.protocol.handshake_error)
                return
            self._process_events(self.protocol.events_received())
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        super().connection_lost(exc)
        self.server.connections.discard(self)

    async def _run_handler(self) -> None:
        try:
            await self.server.handler(self)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection handler failed")
            if self.protocol.state is State.OPEN:
                await self.close(1011, "internal error")
        finally:
            if not self._lost:
                await self.close(1000)


class Server:
    """A WebSocket server. Use ``async with serve(...) as server`` or ``await serve(...)``.

    Attributes:
        connections: every connection currently open (or opening).
    """

    def __init__(
        self,
        handler: Handler,
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        ssl: ssl_module.SSLContext | None = None,
        process_request: ProcessRequest | None = None,
        subprotocols: Sequence[str] = (),
        select_subprotocol: SelectSubprotocol | None = None,
        compression: str | None = "deflate",
        extensions: Sequence[ServerExtensionFactory] | None = None,
        max_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        max_queue: int = 32,
        write_limit: int = 65536,
        open_timeout: float = 10.0,
        close_timeout: float = 10.0,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> None:
        if compression not in ("deflate", None):
            raise ValueError(f"unsupported compression {compression!r}: use 'deflate' or None")
        self.handler = handler
        self.host = host
        self.port = port
        self.sock = sock
        self.ssl = ssl
        self.process_request = process_request
        self.subprotocols = list(subprotocols)
        self.select_subprotocol = select_subprotocol
        self.extensions = (
            [] if compression is None and extensions is None else extensions
        )
        self.max_size = max_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backlog = backlog
        self.reuse_port = reuse_port
        self.connections: set[ServerConnection] = set()
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._closed: asyncio.Event | None = None

    def _make_connection(self) -> ServerConnection:
        protocol = ServerProtocol(
            subprotocols=self.subprotocols,
            select_subprotocol=self.select_subprotocol,
            extensions=self.extensions,
            max_message_size=self.max_size,
            auto_close_reply=False,
        )
        return ServerConnection(self, protocol)

    async def start(self) -> Server:
        """Start listening."""
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        if self.sock is not None:
            self._server = await loop.create_server(
                self._make_connection, sock=self.sock, ssl=self.ssl, backlog=self.backlog
            )
        else:
            self._server = await loop.create_server(
                self._make_connection,
                self.host,
                self.port or 0,
                ssl=self.ssl,
                backlog=self.backlog,
                reuse_port=self.reuse_port or None,
            )
        return self

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port_number(self) -> int:
        """The port of the first listening socket (useful with ``port=0``)."""
        return int(self.sockets[0].getsockname()[1])

    async def close(
        self, code: int = 1001, reason: str = "server shutting down", timeout: float = 10.0
    ) -> None:
        """Refuse new connections, close open ones with ``code``, wait up to ``timeout``
        seconds for them to finish, then abort the rest."""
        if self.closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self.closing = True
        if self._server is not None:
            self._server.close()
        connections = list(self.connections)
        for ws in connections:
            if ws.protocol.state is State.CONNECTING:
                ws._abort()
            else:
                ws.protocol.send_close(code, reason)
                ws._write(ws.protocol.data_to_send())
                ws._start_close_timer()
        tasks = [ws.handler_task for ws in connections if ws.handler_task is not None]
        waits = [asyncio.ensure_future(ws.wait_closed()) for ws in connections]
        if tasks or waits:
            done, pending = await asyncio.wait(tasks + waits, timeout=timeout)
            for ws in connections:
                ws._abort()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        if self._closed is not None:
            self._closed.set()

    async def serve_forever(self) -> None:
        """Wait until the server is closed."""
        assert self._closed is not None, "the server is not started"
        await self._closed.wait()

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, Server]:
        return self.start().__await__()


def serve(
    handler: Handler, host: str | Sequence[str] | None = None, port: int | None = None,
    **options: Any,
) -> Server:
    """Create a WebSocket server running ``handler(ws)`` for each connection.

    ``async with serve(handler, "127.0.0.1", 8765) as server: await server.serve_forever()``

    Options: ``ssl``, ``process_request``, ``subprotocols``, ``select_subprotocol``,
    ``compression`` ("deflate" or None), ``max_size``, ``max_queue``, ``write_limit``,
    ``open_timeout``, ``close_timeout``, ``backlog``, ``reuse_port``, ``sock``.
    """
    return Server(handler, host, port, **options)


logging.getLogger("tether").addHandler(logging.NullHandler())
