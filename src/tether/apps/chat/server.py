"""The chat server: the hub's protocol at ``/ws``, the page at ``/``, ``tether.js`` and the
other files of the static folder.

The member's name is the authenticated principal (``ws.user``) when the server authenticates
with named tokens (a ``TokenAuth`` mapping, or ``TOKEN NAME`` lines of a token file), else the
``name`` query parameter (``/ws?name=alice``): the name the user picked. A token given without a
name ("token-1", see :func:`~tether.auth.is_generated_principal`) lets its holder in and says
nothing about who they are. Either way the name is sanitised: control characters removed,
stripped, at most 32 characters, ``anonymous`` when empty.

The first frame on the socket tells the page the name it got and the largest frame the hub
accepts (its ``max_frame``, in UTF-8 bytes of the whole ``publish`` frame), as the hub
protocol's ``direct`` frame: ``{"type": "direct", "data": {"chat": "welcome", "name": "carol",
"max_frame": 65536}, "sender": null, "time": …}``.

A browser never learns why a WebSocket failed to open (a 401 looks like a server that is
down), so a server that requires a token tells the page at ``GET /auth-check``: 204 when the
request's token is accepted, 401 when it is missing or wrong. The check is the server's own
``authenticate`` (the same callable as the handshake's, given to :func:`make_router`): no
second token list, no second comparison.
"""

from __future__ import annotations

import inspect
import time
import unicodedata
from pathlib import Path

from ...asyncio.connection import WebSocket
from ...asyncio.router import Router, text_response
from ...asyncio.server import Authenticate, ServerConnection
from ...auth import is_generated_principal
from ...hub import Backend, BackendUnavailable, Hub, MemoryBackend
from ...hub.protocol import dumps
from ...protocol.http11 import Headers, Request, Response

__all__ = ["make_router", "open_chat_backend", "member_name", "chat_member", "page_url",
           "STATIC_DIR", "MAX_NAME", "AUTH_CHECK_PATH"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page, tether.js and their assets."""
MAX_NAME = 32
"""Longest member name, in characters."""
DEFAULT_NAME = "anonymous"
AUTH_CHECK_PATH = "/auth-check"
"""Where the page asks whether its token is accepted (only with ``authenticate``)."""

_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; img-src 'self' data:"
)


def member_name(raw: object) -> str:
    """A presentable member name: control and format characters, surrogates and line
    separators removed, surrounding space stripped, cut to 32 characters;
    ``"anonymous"`` when nothing is left."""
    if raw is None:
        return DEFAULT_NAME
    text = "".join(
        c for c in str(raw)
        if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    )
    text = text.strip()[:MAX_NAME].strip()
    return text or DEFAULT_NAME


def chat_member(ws: WebSocket) -> str:
    """The member name of a chat connection: its named principal, else the name it picked
    (``?name=``), sanitised by :func:`member_name`."""
    user = ws.user if isinstance(ws, ServerConnection) else None
    if user is not None and not is_generated_principal(user):
        return member_name(user)
    names = ws.request.query_params.get("name") if ws.request is not None else None
    return member_name(names[0] if names else None)


def page_url(host: str, port: int, *, tls: bool = False) -> str:
    """The address to open the chat page at, for a server listening on ``host:port`` (as a
    socket reports it): ``http://127.0.0.1:8765/``, ``http://[::1]:8765/``. A wildcard bind
    (``0.0.0.0``, ``::``) gives the loopback address of its family, which works on the
    server's own machine."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/"


def open_chat_backend(data_dir: Path | None) -> Backend:
    """The chat's backend: a :class:`~tether.hub.SQLiteBackend` at
    ``data_dir/chat.sqlite3`` (the folder is created), or a
    :class:`~tether.hub.MemoryBackend` when ``data_dir`` is None.

    Raises:
        OSError: the folder cannot be created, or the file is not a database we can open.
    """
    if data_dir is None:
        return MemoryBackend()
    from ...hub.sqlite import SQLiteBackend

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return SQLiteBackend(data_dir / "chat.sqlite3")
    except BackendUnavailable as exc:
        raise OSError(str(exc)) from exc


def make_router(
    hub: Hub, static_dir: Path | None = None, *, authenticate: Authenticate | None = None
) -> Router:
    """Routes of the chat server.

    - ``/ws``: WebSocket, the hub's JSON protocol (plain HTTP gets 426);
    - ``/auth-check`` (with ``authenticate``): ``GET`` answers 204 when the request carries a
      token ``authenticate`` accepts (``Authorization: Bearer …``, as the page sends it), 401
      otherwise; ``Cache-Control: no-store``, nothing else in the answer;
    - ``/``: ``index.html`` of the static folder; ``/tether.js``: ``tether.js``;
    - any other file of the static folder at its own path.

    Missing files answer 404, so the router works before the page exists.

    Args:
        hub: the hub every connection is served by.
        static_dir: the folder of the page (default: the package's ``static/``).
        authenticate: the server's ``authenticate``, the very callable given to
            ``serve()``, for ``/auth-check``; None: no ``/auth-check`` (404), and the page
            guesses from failed connections instead.
    """
    root = (static_dir or STATIC_DIR).resolve()
    router = Router()

    @router.websocket("/ws")
    async def chat(ws: WebSocket) -> None:
        name = chat_member(ws)
        welcome = {"chat": "welcome", "name": name, "max_frame": hub.max_frame}
        await ws.send(dumps({"type": "direct", "data": welcome, "sender": None,
                             "time": int(time.time() * 1000)}))
        await hub.serve(ws, name)

    @router.http("/ws")
    def upgrade_required(request: Request) -> Response:
        return text_response(426, "this is the chat's WebSocket: connect with "
                             "new WebSocket(url)", Headers([("Upgrade", "websocket")]))

    if authenticate is not None:
        check = authenticate

        @router.http(AUTH_CHECK_PATH)
        async def auth_check(request: Request) -> Response:
            # The handshake's own check on the same request: what costs a guess here costs
            # it there too, and the answer says no more than a 101 or a 401 does.
            if request.method not in ("GET", "HEAD"):
                return text_response(405, "method not allowed",
                                     Headers([("Allow", "GET, HEAD")]))
            principal = check(request)
            if inspect.isawaitable(principal):
                principal = await principal
            if principal is None:
                return text_response(401, "missing or invalid token", Headers([
                    ("WWW-Authenticate", "Bearer"), ("Cache-Control", "no-store")]))
            return Response(204, Headers([("Cache-Control", "no-store")]), b"")

    @router.http("/")
    def index(request: Request) -> Response:
        return _file(request, root / "index.html", "text/html; charset=utf-8", page=True)

    @router.http("/tether.js")
    def script(request: Request) -> Response:
        return _file(request, root / "tether.js", "text/javascript; charset=utf-8")

    if root.is_dir():
        router.static("/", root)
    return router


def _file(request: Request, path: Path, content_type: str, page: bool = False) -> Response:
    if request.method not in ("GET", "HEAD"):
        return text_response(405, "method not allowed", Headers([("Allow", "GET, HEAD")]))
    try:
        body = path.read_bytes()
    except OSError:
        return text_response(404, "not found")
    headers = Headers([
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", "no-cache"),
    ])
    if page:
        headers.add("Content-Security-Policy", _PAGE_POLICY)
    return Response(200, headers, b"" if request.method == "HEAD" else body)
