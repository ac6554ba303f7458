"""The asyncio server: ``serve(handler, host, port)``.

The opening handshake runs inside ``data_received`` (no task until it needs to wait for an async
hook); then one task per connection runs ``handler(ws)``. When the handler returns, the
connection closes with 1000; when it raises, with 1011 and the traceback in the log.
``Server.close()`` refuses new connections and closes every open one with 1001.

Each request goes through these steps, and the first that answers ends the handshake:

====================  ======  =============================================================
step                  answer  when
====================  ======  =============================================================
health                200/503 ``GET /healthz``, ``/readyz`` (``health_checks``; an HTTP
                              route of the application for the same path wins, a static
                              directory does not)
capacity              503     ``max_connections`` connections are open already
routing               404     no route for the path; an HTTP route answers plain requests
upgrade validation    426/400 plain HTTP on a WebSocket path / a malformed upgrade
origin                403     ``allowed_origins`` is set and the Origin is not in it
authentication        401     ``authenticate`` returns None (sync or async)
process_request       any     the application's own hook returns a Response (sync or async)
upgrade               101     the handler runs
====================  ======  =============================================================

Connections still in the opening handshake do not count toward ``max_connections``: a
slowloris holds sockets, never the capacity. They have their own cap,
``max_pending_handshakes``; each connection past it drops the oldest pending handshake (the
slowest client, while a good client's handshake completes in a round trip), and each is dropped
anyway after ``open_timeout``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from types import CoroutineType
from typing import Any, Union

from ..auth import OriginPolicy
from ..exceptions import ConnectionClosed
from ..logformat import log_event
from ..protocol.connection import DEFAULT_MAX_MESSAGE_SIZE, State
from ..protocol.extensions.base import ServerExtensionFactory
from ..protocol.http11 import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Headers,
    Request,
    Response,
)
from ..protocol.server import SelectSubprotocol, ServerProtocol
from .connection import Listener, TurnEnd, WebSocket, format_address, logger
from .router import RouteGuards, Router, WebSocketHandler, text_response
from .stats import ServerStats

__all__ = [
    "serve",
    "Server",
    "ServerConnection",
    "Handler",
    "ProcessRequest",
    "Authenticate",
    "DEFAULT_MAX_PENDING_HANDSHAKES",
    "HEALTH_PATH",
    "READY_PATH",
]

HEALTH_PATH = "/healthz"
"""Liveness: 200 ``ok`` while the process serves requests at all."""
READY_PATH = "/readyz"
"""Readiness: 200 ``ready``, or 503 with the reason (shutting down, at capacity, a
``ready_checks`` function's answer such as an unreachable Redis)."""

DEFAULT_MAX_PENDING_HANDSHAKES = 2048
"""Connections a server keeps in the opening handshake at once; past it, the oldest is dropped.
Each holds a socket and at most one partial request (``max_header_bytes``)."""

Handler = WebSocketHandler
ProcessRequest = Callable[
    ["ServerConnection", Request], Union[Response, None, Awaitable[Union[Response, None]]]
]
"""Sees the upgrade request after the built-in policies; returns a Response to answer with
instead of upgrading, or None to go on. May be sync or async."""
Authenticate = Callable[[Request], Union[Any, Awaitable[Any]]]
"""Returns the principal (put on ``ws.user``) or None to refuse with 401. Sync or async."""


class ServerConnection(WebSocket):
    """The server's side of one connection: handshake, then the handler.

    Attributes:
        user: what ``authenticate`` returned for this connection (None without it).
    """

    __slots__ = ("server", "user", "handler", "handler_task", "route")

    protocol: ServerProtocol

    def __init__(self, server: Server, protocol: ServerProtocol) -> None:
        super().__init__(
            protocol,
            max_queue=server.max_queue,
            write_limit=server.write_limit,
            close_timeout=server.close_timeout,
            ping_interval=server.ping_interval,
            ping_timeout=server.ping_timeout,
            turn_end=server._turn_end,
        )
        self.server = server
        self.user: Any = None
        self.handler: WebSocketHandler | None = None
        self.handler_task: asyncio.Task[None] | None = None
        self.route = ""  # the route that took it: its path, or "*" (see Server.route_websocket)

    # -- the opening handshake -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self.server
        if server.closing:
            assert self.transport is not None
            self.transport.abort()
            return
        server.connections.add(self)
        handshakes = server.handshakes
        handshakes[self] = None
        limit = server.max_pending_handshakes
        if limit is not None and len(handshakes) > limit:
            next(iter(handshakes))._drop_pending(len(handshakes))
        if server._open_timer is None:  # one timer for every handshake (see _time_out_handshakes)
            server._open_timer = self.loop.call_at(
                self.opened_at + server.open_timeout, server._time_out_handshakes)

    def _drop_pending(self, pending: int) -> None:
        """Make room for a new connection: this one is the oldest still in the handshake."""
        logger.info("event=drop remote=%s reason=too-many-handshakes pending=%d",
                    format_address(self.remote_address), pending)
        server = self.server
        server.stats.handshakes["dropped", 0] += 1
        del server.handshakes[self]
        server.connections.discard(self)
        if self.transport is not None:
            self.transport.abort()

    def _waits_for_request(self) -> bool:
        """Whether the handshake still waits for the client's request, or for the answer to it
        (the timeout bounds both); False once answered, failed or dropped."""
        transport = self.transport
        return (self.response is None and self.protocol.state is State.CONNECTING
                and self.protocol.handshake_error is None
                and transport is not None and not transport.is_closing())

    def _open_timed_out(self) -> None:
        # A client that never finishes its request (slowloris) is dropped.
        logger.info("event=timeout remote=%s reason=handshake", format_address(
            self.remote_address))
        self.server.stats.handshakes["timeout", 0] += 1
        assert self.transport is not None
        self.transport.abort()

    def _handshake_received(self, data: bytes) -> bool:
        protocol = self.protocol
        if protocol.handshake_error is not None:
            return False
        self.bytes_received += len(data)
        protocol.receive_data(data)
        if protocol.handshake_error is not None:  # unparseable request, answered
            self._write(protocol.data_to_send())
            status = protocol.handshake_error.status_hint
            self.server.stats.handshakes["refused", status] += 1
            self._log_rejected(status)
            return True
        # Before the response, the only event is the request.
        for event in protocol.events_received():
            self._process_other_event(event)
        return True

    def _process_other_event(self, event: Any) -> None:
        if isinstance(event, Request):
            event.remote_address = self.remote_address
            self.request = event
            response = self._check_request(event)
            if response is not None:
                self._respond(response)
            elif self.handler is not None:
                self._run_hooks(event)

    def _check_request(self, request: Request) -> Response | None:
        """The synchronous steps: capacity, routing, upgrade validation, origin. Returns the
        answer, or None with ``self.handler`` set to go on with the upgrade (or unset when an
        HTTP route took the request)."""
        server = self.server
        if (server.health_checks and request.path in (HEALTH_PATH, READY_PATH)
                and not self._upgrade_requested()
                and (server.router is None or request.path not in server.router.http_routes)):
            # Before the capacity check: a full server is alive, and says it is not ready.
            return server.health_response(request)
        max_connections = server.max_connections
        # Only connections past their handshake count (this one is still in it).
        if max_connections is not None and (
            len(server.connections) - len(server.handshakes) >= max_connections
        ):
            return text_response(503, "server at capacity; try again later",
                                 Headers([("Retry-After", "5")]))
        handler, self.route = server.route_websocket_of(request.path)
        if handler is None or "upgrade" not in request.headers._lookup():
            http_handler = server.router.resolve_http(request) if server.router else None
            if http_handler is not None:
                self.loop.create_task(self._answer_http(http_handler, request))
                return None
            if handler is None:
                return text_response(404, "not found")
        self.handler = handler
        invalid = self.protocol.validate(request)
        if invalid is not None:
            return invalid
        guards = server.guards(self.route)
        if guards.subprotocols is not None:
            self.protocol.subprotocols = guards.subprotocols
        origin_policy = guards.origins
        if origin_policy is not None:
            refusal = origin_policy.check(request)
            if refusal is not None:
                return self.protocol.reject(403, refusal)
        return None

    async def _answer_http(self, http_handler: Any, request: Request) -> None:
        try:
            result = http_handler(request)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.exception("HTTP handler for %s failed", request.path)
            result = text_response(500, "internal server error")
        if self.protocol.state is State.CONNECTING and not self._lost:
            headers = result.headers
            if "Connection" not in headers:
                headers.add("Connection", "close")
            self._respond(result)

    def _run_hooks(self, request: Request) -> None:
        """The hooks that may be async: authentication, then process_request. The common
        case, no hook or sync hooks, completes here without a task."""
        try:
            server = self.server
            if server.guards(self.route)[0] is None and server.process_request is None:
                self._respond(self.protocol.accept(request))
            else:
                self._run_hooks_sync(request)
        except Exception:
            logger.exception("handshake hook failed")
            self._respond(self.protocol.reject(500, "internal server error"))

    def _run_hooks_sync(self, request: Request) -> None:
        server = self.server
        authenticate = server.guards(self.route)[0]
        if authenticate is not None:
            user = authenticate(request)
            if inspect.isawaitable(user):
                self.loop.create_task(self._run_hooks_later(request, user))
                return
            if user is None:
                self._respond(self._unauthorized())
                return
            self.user = user
        if server.process_request is not None:
            result = server.process_request(self, request)
            if inspect.isawaitable(result):
                self.loop.create_task(self._run_hooks_later(request, None, result))
                return
            if result is not None:
                self._respond(result)
                return
        self._respond(self.protocol.accept(request))

    async def _run_hooks_later(
        self,
        request: Request,
        pending_user: Awaitable[Any] | None,
        pending_response: Awaitable[Response | None] | None = None,
    ) -> None:
        try:
            if pending_user is not None:
                self.user = await pending_user
                if self.user is None:
                    response: Response | None = self._unauthorized()
                elif self.server.process_request is not None:
                    result = self.server.process_request(self, request)
                    response = await result if inspect.isawaitable(result) else result
                else:
                    response = None
            else:
                assert pending_response is not None
                response = await pending_response
        except Exception:
            logger.exception("handshake hook failed")
            response = self.protocol.reject(500, "internal server error")
        if self.protocol.state is State.CONNECTING and not self._lost:
            self._respond(response if response is not None else self.protocol.accept(request))

    def _unauthorized(self) -> Response:
        return self.protocol.reject(
            401, "missing or invalid token", Headers([("WWW-Authenticate", "Bearer")])
        )

    def _respond(self, response: Response) -> None:
        self.protocol.send_response(response)
        self.response = response
        stats = self.server.stats
        if response.status == 101:
            stats.handshakes["upgraded", 101] += 1
        elif self.handler is None and not self._upgrade_requested():
            stats.http_requests[response.status] += 1  # a page, a health check, a 404
        else:
            stats.handshakes["refused", response.status] += 1
        # Frames pipelined after the request were parsed by send_response().
        events = self.protocol.events_received()
        self._write(self.protocol.data_to_send())
        self._flush()  # the response goes out now
        if response.status == 101:
            self.server.handshakes.pop(self, None)  # open now: counts toward max_connections
            # Kept for the connection's life as ws.request / ws.response: without their
            # lookup indexes (rebuilt on demand), an idle connection is 1 KiB smaller.
            response.headers.compact()
            if self.request is not None:
                self.request.headers.compact()
            self.opened_at = self.loop.time()
            self._log_open()
            self.start_keepalive()
            handler = self.handler
            if isinstance(handler, Listener):
                self._listener = handler
                try:
                    handler.on_open(self)
                except Exception:
                    self._listener_failed("on_open")
            else:
                self._start_handler()
            if events:
                self._process_events(events)
        else:
            self._log_rejected(response.status)

    def _log_open(self) -> None:
        if logger.isEnabledFor(logging.INFO):
            log_event(
                logger,
                "event=open remote=%s path=%s user=%s subprotocol=%s compression=%s",
                self._remote(),
                self.request.path if self.request else "-",
                self.user if self.user is not None else "-",
                self.subprotocol or "-",
                "on" if self.protocol.extension is not None else "off",
            )

    def _upgrade_requested(self) -> bool:
        request = self.request
        return request is not None and "upgrade" in request.headers._lookup()

    def _log_rejected(self, status: int) -> None:
        if logger.isEnabledFor(logging.INFO):
            error = self.protocol.handshake_error
            reason = f' reason="{error}"' if error is not None and status >= 400 else ""
            logger.info(
                "event=http remote=%s path=%s status=%d%s",
                format_address(self.remote_address),
                self.request.path if self.request else "-",
                status,
                reason,
            )

    # -- after the handshake -------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        server = self.server
        server.connections.discard(self)
        server.handshakes.pop(self, None)
        if self.response is not None and self.response.status == 101:
            self._count_closed(server.stats)

    def _count_closed(self, stats: ServerStats) -> None:
        """Add this connection's counts to its server's, now that it is closed."""
        protocol = self.protocol
        if protocol.close_rcvd_then_sent is None:
            initiator = "none"
        else:
            initiator = "client" if protocol.close_rcvd_then_sent else "server"
        stats.count_close(self.close_code or 1006, initiator)
        stats.messages_received += self.messages_received
        stats.messages_sent += self.messages_sent
        stats.bytes_received += self.bytes_received
        stats.bytes_sent += self.bytes_sent
        if self.cut_off_by is not None:
            stats.slow_consumers[self.cut_off_by] += 1

    def _pong_received(self, latency: float) -> None:
        self.server.stats.ping_rtt.observe(latency)

    def _start_handler(self) -> None:
        """Run the coroutine handler as the connection's task: the handler's own coroutine, with
        a done callback rather than a wrapping coroutine (one frame less per connection)."""
        handler = self.handler
        assert handler is not None and not isinstance(handler, Listener)
        try:
            coroutine = handler(self)
        except Exception:  # e.g. a handler with the wrong signature
            logger.exception("connection handler failed")
            self.close_nowait(1011, "internal error")
            return
        if type(coroutine) is CoroutineType:  # the usual case: skip ensure_future's checks
            task = self.loop.create_task(coroutine)
        else:
            task = asyncio.ensure_future(coroutine, loop=self.loop)
        self.handler_task = task
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            error: BaseException | None = None
        else:
            error = task.exception()
        if error is not None and not isinstance(error, ConnectionClosed):
            logger.error("connection handler failed", exc_info=error)
            if self.protocol.state is State.OPEN:
                self.close_nowait(1011, "internal error")
        if not self._lost:
            self.close_nowait(1000)  # the handler is done: so is the connection


class Server:
    """A WebSocket server. Use ``async with serve(...) as server`` or ``await serve(...)``.

    Attributes:
        connections: every connection currently open or opening.
        handshakes: the connections still in the opening handshake (or answered with
            something other than 101 and not closed yet), oldest first. The others in
            ``connections`` are the ones ``max_connections`` counts.
    """

    def __init__(
        self,
        handler: WebSocketHandler | Router,
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        ssl: ssl_module.SSLContext | None = None,
        authenticate: Authenticate | None = None,
        allowed_origins: Iterable[str] | OriginPolicy | None = None,
        process_request: ProcessRequest | None = None,
        subprotocols: Sequence[str] = (),
        select_subprotocol: SelectSubprotocol | None = None,
        compression: str | None = "deflate",
        extensions: Sequence[ServerExtensionFactory] | None = None,
        max_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        max_request_line: int = MAX_REQUEST_LINE,
        max_headers: int = MAX_HEADERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_queue: int = 32,
        write_limit: int = 65536,
        max_connections: int | None = None,
        max_pending_handshakes: int | None = DEFAULT_MAX_PENDING_HANDSHAKES,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 10.0,
        backlog: int = 1024,
        reuse_port: bool = False,
        health_checks: bool = True,
    ) -> None:
        if compression not in ("deflate", None):
            raise ValueError(f"unsupported compression {compression!r}: use 'deflate' or None")
        if max_pending_handshakes is not None and max_pending_handshakes < 1:
            raise ValueError("max_pending_handshakes must be at least 1 (or None: no cap)")
        if isinstance(handler, Router):
            self.router: Router | None = handler
            self.handler: WebSocketHandler | None = None
        else:
            self.router = None
            self.handler = handler
        self.host = host
        self.port = port
        self.sock = sock
        self.ssl = ssl
        self.authenticate = authenticate
        if allowed_origins is None or isinstance(allowed_origins, OriginPolicy):
            self.origin_policy = allowed_origins
        else:
            self.origin_policy = OriginPolicy(allowed_origins)
        self._default_guards: RouteGuards | None = None  # guards(): the server's own
        self.process_request = process_request
        self.subprotocols = list(subprotocols)
        self.select_subprotocol = select_subprotocol
        self.extensions = [] if compression is None and extensions is None else extensions
        self.max_size = max_size
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.max_connections = max_connections
        self.max_pending_handshakes = max_pending_handshakes
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backlog = backlog
        self.reuse_port = reuse_port
        self.health_checks = health_checks
        self.draining = False  # set before a graceful stop: readiness fails, serving goes on
        # Functions answering why the server is not ready (e.g. "redis unreachable"), or None.
        self.ready_checks: list[Callable[[], str | None]] = []
        self.stats = ServerStats()
        self.connections: set[ServerConnection] = set()
        self.handshakes: dict[ServerConnection, None] = {}  # insertion order: oldest first
        self.closing = False
        self._open_timer: asyncio.TimerHandle | None = None
        self._turn_end: TurnEnd | None = None  # shared by the connections, see _make_connection
        self._server: asyncio.base_events.Server | None = None
        self._closed: asyncio.Event | None = None

    def _time_out_handshakes(self) -> None:
        """Drop the connections whose request is still incomplete after ``open_timeout``.

        One timer serves every handshake, instead of one per connection: ``handshakes`` is in
        the order connections arrived, so its first unanswered entry has the earliest deadline,
        and the timer is always set for that one.
        """
        self._open_timer = None
        now = asyncio.get_running_loop().time()
        expired = []
        for ws in self.handshakes:  # oldest first: stops at the first one still in time
            if not ws._waits_for_request():
                continue  # answered (not with 101), or closing: connection_lost will tell
            deadline = ws.opened_at + self.open_timeout
            if deadline > now:
                self._open_timer = ws.loop.call_at(deadline, self._time_out_handshakes)
                break
            expired.append(ws)
        for ws in expired:  # after the loop: dropping one may change handshakes
            ws._open_timed_out()

    def route_websocket(self, path: str) -> WebSocketHandler | None:
        """The WebSocket handler for a path: the single handler serves every path."""
        return self.route_websocket_of(path)[0]

    def route_websocket_of(self, path: str) -> tuple[WebSocketHandler | None, str]:
        """The WebSocket handler for a path, and the route it is counted under in the
        metrics: the path of an exact route, ``"*"`` for a handler of every path (bounded:
        never the raw path of a catch-all)."""
        router = self.router
        if router is None:
            return self.handler, "*"
        handler = router.websocket_routes.get(path)
        if handler is not None:
            return handler, path
        return router.default, "*"

    def guards(self, route: str) -> RouteGuards:
        """The authentication, origin policy and subprotocols of a route: its own (see
        ``Router.add_websocket``), else the server's."""
        router = self.router
        if router is not None and router.guards:
            guards = router.guards.get(route)
            if guards is not None:
                return guards
        default = self._default_guards
        if (default is None or default.authenticate is not self.authenticate
                or default.origins is not self.origin_policy):  # (both may be set any time)
            default = self._default_guards = RouteGuards(self.authenticate, self.origin_policy,
                                                         None)
        return default

    def not_ready(self) -> str | None:
        """Why the server should get no new traffic now, or None when it is ready: shutting
        down, at ``max_connections``, or the first ``ready_checks`` function that answers."""
        if self.closing or self.draining:
            return "shutting down"
        if self.max_connections is not None and (
                len(self.connections) - len(self.handshakes) >= self.max_connections):
            return "at capacity"
        for check in self.ready_checks:
            reason = check()
            if reason:
                return reason
        return None

    def health_response(self, request: Request) -> Response:
        """The answer to ``GET /healthz`` (200 ``ok``) or ``GET /readyz`` (200 ``ready``, or
        503 and the reason). No token and no Origin check: they say nothing secret, and load
        balancers and Kubernetes probes send neither."""
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "method not allowed", Headers([("Allow", "GET, HEAD")]))
        if request.path == HEALTH_PATH:
            response = text_response(200, "ok\n")
        else:
            reason = self.not_ready()
            response = (text_response(200, "ready\n") if reason is None
                        else text_response(503, f"not ready: {reason}\n"))
        response.headers.add("Cache-Control", "no-store")
        if request.method == "HEAD":
            response.body = b""
        return response

    def _make_connection(self) -> ServerConnection:
        if self._turn_end is None:
            self._turn_end = TurnEnd(asyncio.get_running_loop())
        protocol = ServerProtocol(
            subprotocols=self.subprotocols,
            select_subprotocol=self.select_subprotocol,
            extensions=self.extensions,
            max_message_size=self.max_size,
            auto_close_reply=False,
            max_request_line=self.max_request_line,
            max_headers=self.max_headers,
            max_header_bytes=self.max_header_bytes,
        )
        return ServerConnection(self, protocol)

    async def start(self) -> Server:
        """Start listening."""
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        options: dict[str, Any] = {"ssl": self.ssl, "backlog": self.backlog}
        if self.ssl is not None:
            # A client that opens TCP and never finishes TLS is dropped after open_timeout
            # too (asyncio's own default is 60 s); the WebSocket handshake then gets its own
            # open_timeout.
            options["ssl_handshake_timeout"] = self.open_timeout
        if self.sock is not None:
            self._server = await loop.create_server(
                self._make_connection, sock=self.sock, **options
            )
        else:
            self._server = await loop.create_server(
                self._make_connection,
                self.host,
                self.port or 0,
                reuse_port=self.reuse_port or None,
                **options,
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
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
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
            _, pending = await asyncio.wait(tasks + waits, timeout=timeout)
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
    handler: WebSocketHandler | Router,
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    **options: Any,
) -> Server:
    """Create a WebSocket server: ``handler(ws)`` runs for each connection, or a
    :class:`Router` dispatches by path.

    ``async with serve(handler, "127.0.0.1", 8765) as server: await server.serve_forever()``

    Options: ``ssl``, ``authenticate``, ``allowed_origins``, ``process_request``,
    ``subprotocols``, ``select_subprotocol``, ``compression`` ("deflate" or None),
    ``max_size``, ``max_request_line`` (414 beyond; 8 KiB), ``max_headers`` (431 beyond; 128),
    ``max_header_bytes`` (431 beyond; 16 KiB), ``max_queue``, ``write_limit``, ``max_connections``,
    ``max_pending_handshakes``, ``ping_interval``, ``ping_timeout``, ``open_timeout``,
    ``close_timeout``, ``backlog``, ``reuse_port``, ``sock``, ``health_checks`` (answer
    ``GET /healthz`` and ``GET /readyz`` on paths no HTTP route takes; on by default).
    """
    return Server(handler, host, port, **options)


logging.getLogger("tether").addHandler(logging.NullHandler())
