"""tether as uvicorn's WebSocket engine: ``uvicorn app:app --ws tether.asgi:UvicornProtocol``.

uvicorn parses the HTTP request, sees an upgrade, builds the ``--ws`` class with
``(config, server_state, app_state)``, hands it the transport (``connection_made``, then
``transport.set_protocol``) and feeds it the request it rebuilt from its scope as the first
``data_received``. From there this class is a tether connection like any other: the same
sans-I/O core (with its C accelerator), the same write coalescing, flow control both ways
and heartbeat (:class:`~tether.asyncio.connection.WebSocket`), driven by an ASGI app instead
of a handler.

The ASGI WebSocket spec 2.5: the full scope, accept with a subprotocol and headers, text and
bytes both ways, close with a code and a reason, disconnect with a code and a reason,
``send()`` after the connection closed raises (uvicorn's ``ClientDisconnected``, an
``OSError``), a close before accept answers 403, and the ``websocket.http.response``
extension for any other HTTP answer.

Mapping of uvicorn's settings: ``ws_max_size`` (largest message; 1009 past it, enforced from
the frame header before anything is buffered), ``ws_max_queue`` (messages waiting for
``receive()`` before reading pauses), ``ws_ping_interval``/``ws_ping_timeout`` (heartbeat;
1011 when a pong is late), ``ws_per_message_deflate`` (tether's permessage-deflate, with its
memory-frugal defaults). ``await send()`` waits while the client is more than 64 KiB behind.
On a graceful shutdown an open connection is closed with 1012 (service restart) and one still
in its handshake gets 500.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import logging
import weakref
from typing import Any, cast
from urllib.parse import unquote

from ..asyncio.connection import _CLOSED, TurnEnd, WebSocket
from ..exceptions import ConnectionClosed
from ..protocol.connection import State
from ..protocol.http11 import Headers, Request, Response
from ..protocol.server import ServerProtocol

__all__ = ["UvicornProtocol"]


class _Disconnected(OSError):
    """The client went away (where uvicorn's own exception is not available)."""


try:  # what uvicorn raises from send() once the client is gone (an OSError)
    ClientDisconnected: type[OSError] = importlib.import_module(
        "uvicorn.protocols.utils").ClientDisconnected
except (ImportError, AttributeError):  # pragma: no cover - only used under uvicorn
    ClientDisconnected = _Disconnected

SPEC_VERSION = "2.5"
_uvicorn_logger = logging.getLogger("uvicorn.error")  # uvicorn's own engines log there
_WRITE_LIMIT = 65536
_TURN_ENDS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnEnd] = (
    weakref.WeakKeyDictionary())


def _turn_end(loop: asyncio.AbstractEventLoop) -> TurnEnd:
    """One end-of-turn callback for every connection of this loop (see TurnEnd)."""
    turn = _TURN_ENDS.get(loop)
    if turn is None:
        turn = _TURN_ENDS[loop] = TurnEnd(loop)
    return turn


class UvicornProtocol(WebSocket):
    """uvicorn's ``--ws`` protocol class, on tether's core. See the module's docstring."""

    __slots__ = ("config", "app", "app_state", "server_state", "uvicorn_logger", "scope",
                 "task", "connect_sent", "disconnect_sent", "answered", "http_response",
                 "disconnect_event", "ping_sent_at", "chunked", "accepted")

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        extensions = None if config.ws_per_message_deflate else ()
        super().__init__(
            # The close reply waits until the app has taken the messages before it (it may
            # still answer them), as tether's own server does.
            ServerProtocol(extensions=extensions, max_message_size=config.ws_max_size,
                           auto_close_reply=False),
            max_queue=config.ws_max_queue,
            write_limit=_WRITE_LIMIT,
            ping_interval=config.ws_ping_interval or None,
            ping_timeout=config.ws_ping_timeout or None,
            turn_end=_turn_end(_loop or asyncio.get_running_loop()),
        )
        self.config = config
        self.app = config.loaded_app
        self.app_state = app_state
        self.server_state = server_state
        self.uvicorn_logger = _uvicorn_logger
        self.scope: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self.connect_sent = False
        self.disconnect_sent = False
        self.answered = False  # accepted, refused or answered with an HTTP response
        # The websocket.disconnect decided here rather than by a close frame from the
        # client: a refused handshake or a denial response (1006), a shutdown (1012).
        self.disconnect_event: dict[str, Any] | None = None
        self.ping_sent_at = 0.0  # loop time of the last heartbeat ping
        self.chunked = False  # the denial response's body goes in chunks
        self.accepted = False  # the 101 went out
        self.http_response: int | None = None  # the status of a denial response under way

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server_state.connections.discard(self)

    def _handshake_received(self, data: bytes) -> bool:
        protocol = self.protocol
        if self.scope is not None:  # before the app answers: held by the core, bounded
            self._pause_reading()
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Request):
                self._request(event)
        output = protocol.data_to_send()
        if output:  # an unparseable request, answered by the core (400, 414, 431)
            self._write(output)
            self._flush()
        return True

    def _request(self, request: Request) -> None:
        self.request = request
        assert isinstance(self.protocol, ServerProtocol)
        invalid = self.protocol.validate(request)
        if invalid is not None:
            self._answer(invalid)
            return
        self.scope = self._build_scope(request)
        # Anything after the request pauses reading until the app answers (data_received).
        self.task = task = self.loop.create_task(self.run_asgi())
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _build_scope(self, request: Request) -> dict[str, Any]:
        transport = self.transport
        assert transport is not None
        root_path = self.config.root_path
        raw_path, _, query = request.target.partition("?")
        subprotocols: list[str] = []
        for value in request.headers.get_all("Sec-WebSocket-Protocol"):
            subprotocols.extend(token.strip() for token in value.split(",") if token.strip())
        server = transport.get_extra_info("sockname")
        client = self.remote_address
        return {
            "type": "websocket",
            "asgi": {"version": self.config.asgi_version, "spec_version": SPEC_VERSION},
            "http_version": "1.1",
            "scheme": "wss" if transport.get_extra_info("sslcontext") else "ws",
            "server": _address(server),
            "client": _address(client),
            "root_path": root_path,
            "path": root_path + unquote(raw_path),
            "raw_path": root_path.encode("ascii") + raw_path.encode("ascii", "surrogateescape"),
            "query_string": query.encode("ascii", "surrogateescape"),
            "headers": [(name.lower().encode("latin-1"), value.encode("latin-1", "replace"))
                        for name, value in request.headers],
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }

    @property
    def ping_timer(self) -> object | None:
        """The heartbeat's schedule while it runs: a queue the loop's connections share
        rather than a timer of its own (None with ``--ws-ping-interval 0``)."""
        return self._heartbeat

    def _send_heartbeat(self) -> None:
        self.ping_sent_at = self.loop.time()
        super()._send_heartbeat()

    def _receive_close(self) -> None:
        super()._receive_close()
        # The app learns of the close at once, not when the TCP connection ends.
        waiter = self._waiter
        if waiter is not None and not waiter.done() and not self._messages:
            self._waiter = None
            waiter.set_result(_CLOSED)

    @property
    def close_timer(self) -> asyncio.TimerHandle | None:
        """The timer bounding the closing handshake while it waits for the client's close
        frame (as uvicorn's engines name it); None once both close frames were exchanged
        (the same timer then bounds the TCP close)."""
        protocol = self.protocol
        if protocol.close_rcvd is not None and protocol.close_sent is not None:
            return None
        return self._close_timer

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: 1012 to an open connection, 500 to a handshake."""
        self._stop_keepalive()
        state = self.protocol.state
        if state is State.OPEN:
            self.disconnect_event = {"type": "websocket.disconnect", "code": 1012}
            self.close_nowait(1012)
            return
        if state is State.CONNECTING and not self.answered and not self._lost:
            self._answer(self._reject(500, "Internal Server Error"))
        # Closing (our close frame sent, its reply pending), refused, or in the middle of a
        # denial response: the transport closes now.
        self.disconnect_event = self.disconnect_event or {"type": "websocket.disconnect",
                                                          "code": 1006}
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._close_transport()

    def _close_transport(self) -> None:
        """Close the TCP connection after what this loop turn gathered to send."""
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _stop_keepalive(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.discard(self)
            self._heartbeat = None

    # -- the app -----------------------------------------------------------------------------

    async def run_asgi(self) -> None:
        assert self.scope is not None
        result = None
        try:
            result = await self.app(self.scope, self.asgi_receive, self.asgi_send)
        except ClientDisconnected:
            pass
        except BaseException as exc:
            self.uvicorn_logger.exception("Exception in ASGI application\n")
            if not self.answered:
                self._answer(self._reject(500, "Internal Server Error"))
            else:
                # As uvicorn's own engines do: the TCP connection ends without a close
                # frame (the client sees 1006), after what the app sent.
                self._close_transport()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        if not self.answered:
            self.uvicorn_logger.error("ASGI callable returned without completing handshake.")
            self._answer(self._reject(500, "Internal Server Error"))
        else:
            if result is not None:
                self.uvicorn_logger.error(
                    "ASGI callable should return None, but returned '%s'.", result)
            if self._close_timer is None:
                # As uvicorn's own engines do: an app that returns without closing ends the
                # TCP connection after what it sent (the client sees 1006); one that closed
                # waits for the client's close frame.
                self._close_transport()

    async def asgi_receive(self) -> dict[str, Any]:
        """The ASGI ``receive``: ``websocket.connect``, then each message, then one
        ``websocket.disconnect`` with the close code and reason."""
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        if not self._messages and (self.disconnect_event is not None
                                   or self.protocol.close_rcvd is not None):
            if self.protocol.close_reply_pending():
                self._reply_close()  # the app has taken everything before the close frame
            return self._disconnect()
        try:
            message = await self.recv()
        except ConnectionClosed:
            return self._disconnect()
        if type(message) is str:
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    def _disconnect(self) -> dict[str, Any]:
        """The websocket.disconnect: the app's own close code and reason when it closed
        first, the client's when it did, 1006 when the connection was lost without one."""
        self.disconnect_sent = True
        if self.disconnect_event is not None:
            return self.disconnect_event
        protocol = self.protocol
        frame = protocol.close_sent
        if frame is None or protocol.close_rcvd_then_sent:
            frame = protocol.close_rcvd
        if frame is None:
            event: dict[str, Any] = {"type": "websocket.disconnect", "code": 1006}
        else:
            event = {"type": "websocket.disconnect", "code": frame.code, "reason": frame.reason}
        self.disconnect_event = event
        return event

    async def asgi_send(self, message: dict[str, Any]) -> None:
        """The ASGI ``send``. Waits while the client is behind (``write_limit``).

        Raises:
            ClientDisconnected: the connection is closing or closed.
            RuntimeError: a message the state does not allow.
        """
        kind = message["type"]
        if self.answered:
            if self.http_response is not None:
                self._response_body(kind, message)
                return
            if not self.accepted:  # refused (403, or 500 on a shutdown): no socket to use
                raise ClientDisconnected()
            if kind == "websocket.send":
                data = message.get("bytes")
                if data is None:
                    data = message.get("text")
                    if data is None:
                        raise RuntimeError("websocket.send needs 'bytes' or 'text'")
                if self._writing_paused:  # the client is behind: wait for it, then write
                    try:
                        await self._drain()
                    except ConnectionClosed:
                        raise ClientDisconnected() from None
                try:
                    self.send_nowait(data)
                except ConnectionClosed:
                    raise ClientDisconnected() from None
            elif kind == "websocket.close":
                if self.protocol.state is not State.OPEN:
                    raise ClientDisconnected()
                self.close_nowait(message.get("code", 1000), message.get("reason") or "")
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.send' or "
                                   f"'websocket.close', but got '{kind}'.")
            return
        if self._lost:
            raise ClientDisconnected()
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            self._log_access("403")
            self.disconnect_event = {"type": "websocket.disconnect", "code": 1006}
            self._answer(self._reject(403, ""))
        elif kind == "websocket.http.response.start":
            status = message["status"]
            if not 100 <= status < 600:
                raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
            self._log_access(str(status))
            self._start_response(status, message.get("headers", ()))
        else:
            raise RuntimeError("Expected ASGI message 'websocket.accept', 'websocket.close' "
                               f"or 'websocket.http.response.start' but got '{kind}'.")

    def _accept(self, message: dict[str, Any]) -> None:
        protocol = cast(ServerProtocol, self.protocol)
        request = self.request
        assert request is not None
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            # RFC 6455 §4.2.2: the server selects one the client offered.
            protocol.select_subprotocol = lambda offered, supported: (
                subprotocol if subprotocol in offered else None)
        response = protocol.accept(request)
        if response.status != 101:  # cannot happen: validate() passed
            self._answer(response)
            return
        headers = response.headers
        for name, value in [*self.server_state.default_headers, *message.get("headers", ())]:
            key = name.decode("latin-1")
            if key.lower() in ("sec-websocket-protocol", "sec-websocket-extensions",
                               "sec-websocket-accept", "upgrade", "connection"):
                continue  # the handshake's own, negotiated by the core
            headers.add(key, value.decode("latin-1"))
        self._log_access("[accepted]")
        self._answer(response)

    def _start_response(self, status: int, raw_headers: Any) -> None:
        """The head of a denial response, sent at once; its body follows as it comes and
        ends with the connection (or its Content-Length)."""
        headers = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers])
        names = {name.lower() for name, _ in headers}
        if "date" not in names:
            headers.add("Date", email.utils.formatdate(usegmt=True))
        if "connection" not in names:
            headers.add("Connection", "close")
        self.chunked = ("content-length" not in names and status >= 200
                        and status not in (204, 304))
        if self.chunked:  # the body's length is not known yet: frame it as it comes
            headers.add("Transfer-Encoding", "chunked")
        self.http_response = status
        self.answered = True
        self.response = response = Response(status, headers)
        if self.transport is not None:
            self._write([response.serialize()])
            self._flush()

    def _response_body(self, kind: str, message: dict[str, Any]) -> None:
        if kind != "websocket.http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'websocket.http.response.body' but got '{kind}'.")
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientDisconnected()
        body = bytes(message.get("body", b""))
        more = message.get("more_body", False)
        if self.chunked:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                body += b"0\r\n\r\n"
        if body:
            transport.write(body)
        if not more:
            self.disconnect_event = {"type": "websocket.disconnect", "code": 1006}
            transport.close()

    # -- the handshake's answer --------------------------------------------------------------

    def _reject(self, status: int, text: str) -> Response:
        if status == 500:  # as uvicorn answers it: "Internal Server Error", no newline
            body = b"Internal Server Error"
            return Response(500, Headers([("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(body))),
                                          ("Connection", "close")]), body)
        return cast(ServerProtocol, self.protocol).reject(status, text)

    def _answer(self, response: Response) -> None:
        """Send the handshake's answer: a 101 opens the connection, anything else ends it."""
        self.answered = True
        self.response = response
        protocol = cast(ServerProtocol, self.protocol)
        protocol.send_response(response)
        events = protocol.events_received()  # frames pipelined after the request
        self._write(protocol.data_to_send())
        self._flush()
        if response.status == 101:
            self.accepted = True
            self.opened_at = self.loop.time()
            self.start_keepalive()
            # The app has the scope; nothing reads the parsed request or the 101 again, and
            # an idle connection is 3 KiB smaller without them.
            self.request = self.response = protocol.request = protocol.response = None
            if events:
                self._process_events(events)
                self._write(protocol.data_to_send())
            if self._reading_paused:
                self._resume_reading()

    def _log_access(self, outcome: str) -> None:
        scope = self.scope
        if scope is None or not self.uvicorn_logger.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        path = scope["root_path"] + scope["path"][len(scope["root_path"]):]
        if scope["query_string"]:
            path += "?" + scope["query_string"].decode("ascii", "replace")
        self.uvicorn_logger.info('%s - "WebSocket %s" %s',
                                 f"{client[0]}:{client[1]}" if client else "-", path, outcome)


def _address(address: Any) -> tuple[str, int] | None:
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None
