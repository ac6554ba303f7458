"""The live admin page of a server: what it is doing now and over the last minutes, pushed
over a WebSocket, with a few actions.

``tether chat --admin-token TOKEN`` serves it at ``/admin``; in code::

    admin = Admin(["a-long-random-token"], hub=hub)
    admin.mount(router, "/admin", host="127.0.0.1", port=8765)
    server = await tether.serve(router, "127.0.0.1", 8765)
    admin.attach(server)                  # starts sampling; admin.close() stops it

The page at ``/admin`` holds no data: without the admin token it answers 401 (and asks for
the token); its socket, ``/admin/ws``, refuses a missing or wrong token with 401 and a page of
another origin with 403, whatever the server's other routes accept (its own token, its own
same-origin policy: :meth:`Router.add_websocket`'s guards). The token travels in an
``Authorization: Bearer`` header or, from the page, as a ``bearer.TOKEN`` subprotocol; never
in a URL. Nothing the page shows is a token.

Every ``interval`` seconds the admin samples the server (the counters of
:mod:`tether.asyncio.stats` and one walk over the open connections) and pushes to each open
page: connections, message and byte rates, handshake refusals, close codes, the slowest
clients and, with a hub, its topics. The last ``history`` seconds of rates are kept for the
charts of a page that opens later. Actions (unless ``readonly``): close a connection with a
code and reason; kick a member from a topic (with a hub).

The page's protocol (JSON text frames): the server sends ``hello`` (settings and history),
then ``stats`` at each sample, and ``result`` for each action; the page sends
``{"type": "disconnect", "id": N, "code": C, "reason": R, "ref": X}`` and
``{"type": "kick", "topic": T, "member": M, "ref": X}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...asyncio.connection import WebSocket, format_address
from ...asyncio.router import Router, text_response
from ...asyncio.server import Server, ServerConnection
from ...auth import OriginPolicy, TokenAuth, is_generated_principal
from ...exceptions import ConnectionClosed
from ...protocol.connection import State
from ...protocol.frames import is_valid_close_code
from ...protocol.http11 import Headers, Request, Response

if TYPE_CHECKING:
    from ...hub import Hub

__all__ = ["Admin", "STATIC_DIR", "PRINCIPAL", "SUBPROTOCOL"]

logger = logging.getLogger("tether")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SUBPROTOCOL = "tether.admin.v1"
"""The subprotocol the page offers, next to ``bearer.TOKEN`` (a browser that offers
subprotocols needs the server to select one)."""
PRINCIPAL = "admin"
"""``ws.user`` of an admin page's socket."""
SLOWEST = 10
"""Connections listed as the slowest clients."""
MAX_REQUEST = 4096
"""Largest frame an admin page may send (bytes)."""

_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self'; style-src 'self'; script-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'none'"
)


class Admin:
    """The admin page and its socket (see the module's docstring).

    Args:
        tokens: the admin tokens (any of them lets a page in); not the server's own.
        hub: the server's hub, for topics, members and kicking.
        readonly: show everything, allow no action.
        interval: seconds between samples (and pushes).
        history: seconds of rates kept for the charts.
    """

    def __init__(self, tokens: Iterable[str], *, hub: Hub | None = None,
                 readonly: bool = False, interval: float = 1.0,
                 history: float = 600.0) -> None:
        if interval <= 0 or history < interval:
            raise ValueError("interval must be positive and history at least one interval")
        self.auth = TokenAuth({token: PRINCIPAL for token in tokens},
                              sources=("header", "subprotocol"))
        self.hub = hub
        self.readonly = readonly
        self.interval = interval
        self.points: deque[list[float]] = deque(maxlen=int(history / interval))
        self.server: Server | None = None
        self.pages: set[WebSocket] = set()
        self._ids: dict[ServerConnection, int] = {}
        self._by_id: dict[int, ServerConnection] = {}
        self._next_id = 1
        self._last: tuple[float, int, int, int, int] | None = None
        self._published: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._snapshot: dict[str, Any] | None = None
        self._html = b""  # the page, for the prefix it is mounted at (see mount)

    # -- routes ----------------------------------------------------------------------------

    def mount(self, router: Router, prefix: str = "/admin", *, host: str | None = "127.0.0.1",
              port: int = 0, tls: bool = False, also: Iterable[str] = ()) -> None:
        """Serve the page at ``prefix``, its files under ``prefix/``, the socket at
        ``prefix/ws``. ``host``, ``port`` and ``tls`` are the server's, for the same-origin
        policy of the socket (``also``: more allowed origins)."""
        base = prefix.rstrip("/")
        if not base.startswith("/") or any(c in base for c in '"<>&\'{} '):
            raise ValueError(f"{prefix!r} is not a plain path such as /admin")
        self._html = (STATIC_DIR / "index.html").read_text().replace("{{base}}", base).encode()
        policy = OriginPolicy.same_origin(host, port, tls=tls, also=also)
        router.add_websocket(base + "/ws", self.serve, authenticate=self.auth,
                             allowed_origins=policy, subprotocols=[SUBPROTOCOL])
        router.add_http(base, self._page)
        router.add_http(base + "/", self._page)
        for name, kind in (("admin.js", "text/javascript"), ("admin.css", "text/css")):
            router.add_http(f"{base}/{name}", _file_route(STATIC_DIR / name, kind))

    def _page(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "method not allowed", Headers([("Allow", "GET, HEAD")]))
        # The page holds no data (that comes over the socket, which checks the token); it
        # answers 401 without the token so that nobody mistakes it for an open page.
        status = 200 if self.auth(request) is not None else 401
        response = _file(request, self._html, "text/html", status)
        response.headers.add("Content-Security-Policy", _PAGE_POLICY)
        response.headers.add("Referrer-Policy", "no-referrer")
        return response

    # -- sampling --------------------------------------------------------------------------

    def attach(self, server: Server) -> None:
        """Start sampling ``server`` (on the running loop)."""
        self.server = server
        if self._timer is None:
            self._sample()

    async def close(self) -> None:
        """Stop sampling and close the open pages (1001)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for page in list(self.pages):
            page.close_nowait(1001, "server shutting down")

    def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.interval, self._sample)
        try:
            self._snapshot = snapshot = self._take()
        except Exception:  # never let a sampling bug stop the server's loop
            logger.exception("admin sampling failed")
            return
        frame = json.dumps({"type": "stats", **snapshot}, separators=(",", ":"))
        for page in list(self.pages):
            if page.buffered_amount < 1 << 20:  # a page that stopped reading misses samples
                try:
                    page.send_nowait(frame)
                except ConnectionClosed:
                    self.pages.discard(page)

    def _take(self) -> dict[str, Any]:
        server = self.server
        assert server is not None
        stats = server.stats
        now = time.time()
        handshakes = server.handshakes
        open_: list[ServerConnection] = [ws for ws in server.connections
                                         if ws not in handshakes and ws.ready_state is not State.CLOSED]
        msgs_in, msgs_out = stats.messages_received, stats.messages_sent
        bytes_in, bytes_out = stats.bytes_received, stats.bytes_sent
        for ws in open_:
            msgs_in += ws.messages_received
            msgs_out += ws.messages_sent
            bytes_in += ws.bytes_received
            bytes_out += ws.bytes_sent
        last = self._last
        self._last = (now, msgs_in, msgs_out, bytes_in, bytes_out)
        if last is None or now <= last[0]:
            rates = [0.0, 0.0, 0.0, 0.0]
        else:
            span = now - last[0]
            rates = [max(0.0, (msgs_in - last[1]) / span), max(0.0, (msgs_out - last[2]) / span),
                     max(0.0, (bytes_in - last[3]) / span), max(0.0, (bytes_out - last[4]) / span)]
        point = [round(now, 3), len(open_), *(round(r, 1) for r in rates)]
        self.points.append(point)

        # Ids for the connections shown, forgotten once they are gone.
        for ws in [ws for ws in self._ids if ws.ready_state is State.CLOSED]:
            del self._by_id[self._ids.pop(ws)]
        slowest = sorted(open_, key=lambda ws: ws.buffered_amount, reverse=True)[:SLOWEST]
        refusals: dict[str, int] = {}
        for (outcome, status), n in stats.handshakes.items():
            if outcome != "upgraded":
                key = str(status) if status else outcome
                refusals[key] = refusals.get(key, 0) + n
        out: dict[str, Any] = {
            "time": point[0],
            "point": point,
            "connections": len(open_),
            "opening": len(handshakes),
            "totals": {"messages_in": msgs_in, "messages_out": msgs_out,
                       "bytes_in": bytes_in, "bytes_out": bytes_out,
                       "upgraded": stats.handshakes.get(("upgraded", 101), 0)},
            "refusals": refusals,
            "closes": {str(code or "other"): 0 for code, _ in stats.closes},
            "slow_consumers": dict(stats.slow_consumers),
            "slowest": [self._describe(ws, now) for ws in slowest],
        }
        for (code, _), n in stats.closes.items():
            out["closes"][str(code or "other")] += n
        if self.hub is not None:
            out["topics"] = self._topics(self.hub)
        return out

    def _id(self, ws: ServerConnection) -> int:
        ident = self._ids.get(ws)
        if ident is None:
            ident = self._ids[ws] = self._next_id
            self._by_id[ident] = ws
            self._next_id += 1
        return ident

    def _describe(self, ws: ServerConnection, now: float) -> dict[str, Any]:
        user = ws.user
        if user is None or is_generated_principal(user) or not isinstance(user, str):
            user = None  # a made-up principal says which token, not who: not shown
        return {
            "id": self._id(ws),
            "remote": format_address(ws.remote_address),
            "route": ws.route,
            "user": user,
            "buffered": ws.buffered_amount,
            "age": round(ws.loop.time() - ws.opened_at, 1),
            "in": ws.messages_received,
            "out": ws.messages_sent,
            "admin": ws in self.pages,
        }

    def _topics(self, hub: Hub) -> list[dict[str, Any]]:
        topics = []
        published = self._published
        for topic, info in sorted(hub.topic_info().items()):
            count = info["published"]
            rate = (count - published.get(topic, count)) / self.interval
            published[topic] = count
            topics.append({"topic": topic, "subscribers": info["subscribers"],
                           "members": info["members"], "publish_rate": round(rate, 1)})
        for topic in set(published) - {t["topic"] for t in topics}:
            del published[topic]
        return topics

    # -- the socket ------------------------------------------------------------------------

    async def serve(self, ws: WebSocket) -> None:
        """The admin page's socket: hello, then a sample every interval; actions in."""
        self.pages.add(ws)
        try:
            await ws.send(json.dumps({
                "type": "hello", "readonly": self.readonly, "interval": self.interval,
                "hub": self.hub is not None, "history": list(self.points),
                "stats": self._snapshot,
            }, separators=(",", ":")))
            async for frame in ws:
                await ws.send(json.dumps(await self._act(frame)))
        finally:
            self.pages.discard(ws)

    async def _act(self, frame: str | bytes) -> dict[str, Any]:
        ref = None
        try:
            if not isinstance(frame, str) or len(frame) > MAX_REQUEST:
                raise _Refused("send JSON text of at most 4096 bytes")
            try:
                request = json.loads(frame)
            except ValueError:
                raise _Refused("not JSON") from None
            if not isinstance(request, dict):
                raise _Refused("not a JSON object")
            ref = request.get("ref")
            if self.readonly:
                raise _Refused("read-only: actions are turned off")
            kind = request.get("type")
            if kind == "disconnect":
                done = self._disconnect(request)
            elif kind == "kick":
                done = await self._kick(request)
            else:
                raise _Refused(f"unknown action {kind!r}")
        except _Refused as refused:
            return {"type": "result", "ref": ref, "ok": False, "error": str(refused)}
        return {"type": "result", "ref": ref, "ok": True, "done": done}

    def _disconnect(self, request: dict[str, Any]) -> str:
        ident, code, reason = request.get("id"), request.get("code", 1000), request.get(
            "reason", "")
        if not isinstance(code, int) or isinstance(code, bool) or not is_valid_close_code(code) \
                or code in (1004, 1005, 1006, 1015):
            raise _Refused(f"{code!r} is not a close code that can be sent")
        if not isinstance(reason, str) or len(reason.encode()) > 123:
            raise _Refused("the reason must be text of at most 123 bytes")
        ws = self._by_id.get(ident) if isinstance(ident, int) else None
        if ws is None or ws.ready_state is State.CLOSED:
            raise _Refused(f"no open connection {ident!r}")
        ws.close_nowait(code, reason)
        logger.info("event=admin action=disconnect remote=%s code=%d",
                    format_address(ws.remote_address), code)
        return f"closing {format_address(ws.remote_address)} with {code}"

    async def _kick(self, request: dict[str, Any]) -> str:
        hub = self.hub
        if hub is None:
            raise _Refused("this server runs no hub")
        topic, member = request.get("topic"), request.get("member")
        if not isinstance(topic, str) or not isinstance(member, str):
            raise _Refused("kick needs a topic and a member")
        kicked = await hub.kick(topic, member)
        if not kicked:
            raise _Refused(f"{member!r} is not in {topic!r} on this server")
        logger.info("event=admin action=kick topic=%s count=%d", json.dumps(topic), kicked)
        return f"{member} removed from {topic} ({kicked} connection{'s' * (kicked != 1)})"


class _Refused(Exception):
    """An action the admin page asked for and cannot have; the message says why."""


def _file(request: Request, source: Path | bytes, kind: str, status: int = 200) -> Response:
    body = source if isinstance(source, bytes) else source.read_bytes()
    headers = Headers([
        ("Content-Type", f"{kind}; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", "no-cache"),
    ])
    return Response(status, headers, b"" if request.method == "HEAD" else body)


def _file_route(path: Path, kind: str) -> Any:
    def route(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "method not allowed", Headers([("Allow", "GET, HEAD")]))
        return _file(request, path, kind)

    return route
