"""Routing for one server: WebSocket handlers by path, plain HTTP routes and static files.

An upgrade request goes to the WebSocket handler of its path; any other request to the HTTP
handler of its path. A path with only a WebSocket handler answers plain requests with 426; an
unknown path gets 404. HTTP handlers receive the :class:`Request` and return a
:class:`Response`, sync or async.
"""

from __future__ import annotations

import mimetypes
from functools import partial
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Union

from ..auth import OriginPolicy
from ..protocol.http11 import Headers, Request, Response

if TYPE_CHECKING:
    from .connection import Listener, WebSocket

__all__ = ["Router", "RouteGuards", "HttpHandler", "WebSocketHandler", "text_response"]

WebSocketHandler = Union[Callable[["WebSocket"], Awaitable[None]], "Listener"]
"""A coroutine function run once per connection (``async def handler(ws)``), or a
:class:`~tether.asyncio.connection.Listener` whose callbacks serve every connection."""
HttpHandler = Callable[[Request], Union[Response, Awaitable[Response]]]


class RouteGuards(NamedTuple):
    """A WebSocket route's own settings, replacing the server's for that route."""

    authenticate: Callable[[Request], Any] | None
    origins: OriginPolicy | None
    subprotocols: tuple[str, ...] | None


def text_response(status: int, text: str, headers: Headers | None = None) -> Response:
    """A plain-text response with its Content-Length."""
    body = text.encode()
    response_headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    for name, value in headers or ():
        response_headers.add(name, value)
    return Response(status, response_headers, body)


class Router:
    """Paths to handlers. Paths match exactly; ``static()`` serves a directory under a prefix.

    Args:
        default: the WebSocket handler of every path without a route of its own (an echo
            server that also serves ``/metrics``); None: such paths get 404.
    """

    def __init__(self, default: WebSocketHandler | None = None) -> None:
        self.default = default
        self.websocket_routes: dict[str, WebSocketHandler] = {}
        # Routes with their own checks instead of the server's.
        self.guards: dict[str, RouteGuards] = {}
        self.http_routes: dict[str, HttpHandler] = {}
        self.static_routes: list[tuple[str, Path, str]] = []

    def websocket(self, path: str, **guards: Any
                  ) -> Callable[[WebSocketHandler], WebSocketHandler]:
        """Decorator: ``@router.websocket("/chat")`` on ``async def handler(ws)``; takes
        :meth:`add_websocket`'s ``authenticate``, ``allowed_origins`` and ``subprotocols``."""

        def register(handler: WebSocketHandler) -> WebSocketHandler:
            self.add_websocket(path, handler, **guards)
            return handler

        return register

    def http(self, path: str) -> Callable[[HttpHandler], HttpHandler]:
        """Decorator: ``@router.http("/healthz")`` on ``def handler(request) -> Response``."""

        def register(handler: HttpHandler) -> HttpHandler:
            self.add_http(path, handler)
            return handler

        return register

    def add_websocket(
        self,
        path: str,
        handler: WebSocketHandler,
        *,
        authenticate: Callable[[Request], Any] | None = None,
        allowed_origins: Iterable[str] | OriginPolicy | None = None,
        subprotocols: Iterable[str] | None = None,
    ) -> None:
        """Route ``path`` to ``handler``.

        With ``authenticate``, ``allowed_origins`` or ``subprotocols``, this route uses them
        *instead of* the server's own (all three: a route with its own token and no Origin
        policy has none): an admin socket with its own token, same-origin policy and
        subprotocol on a server whose other routes take other tokens, or none.
        """
        path = _check_path(path)
        self.websocket_routes[path] = handler
        if authenticate is not None or allowed_origins is not None or subprotocols is not None:
            origins = (allowed_origins if allowed_origins is None
                       or isinstance(allowed_origins, OriginPolicy)
                       else OriginPolicy(allowed_origins))
            self.guards[path] = RouteGuards(
                authenticate, origins, None if subprotocols is None else tuple(subprotocols))
        else:
            self.guards.pop(path, None)

    def add_http(self, path: str, handler: HttpHandler) -> None:
        self.http_routes[_check_path(path)] = handler

    def static(self, prefix: str, directory: str | Path, index: str = "index.html") -> None:
        """Serve the files under ``directory`` at ``prefix`` (GET and HEAD); a directory
        serves its ``index``. Paths never escape ``directory``."""
        root = Path(directory).resolve()
        if not root.is_dir():
            raise ValueError(f"{directory} is not a directory")
        prefix = _check_path(prefix).rstrip("/") + "/"
        self.static_routes.append((prefix, root, index))

    def resolve_http(self, request: Request) -> HttpHandler | None:
        handler = self.http_routes.get(request.path)
        if handler is not None:
            return handler
        for prefix, root, index in self.static_routes:
            if request.path == prefix.rstrip("/") or request.path.startswith(prefix):
                return partial(_serve_file, prefix=prefix, root=root, index=index)
        return None


def _serve_file(request: Request, prefix: str, root: Path, index: str) -> Response:
    if request.method not in ("GET", "HEAD"):
        return text_response(405, "method not allowed", Headers([("Allow", "GET, HEAD")]))
    relative = unquote(request.path[len(prefix):]) if request.path.startswith(prefix) else ""
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        return text_response(404, "not found")
    if target.is_dir():
        target = target / index
    if not target.is_file():
        return text_response(404, "not found")
    body = target.read_bytes()
    content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type == "application/javascript":
        content_type += "; charset=utf-8"
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", "no-cache"),
        ]
    )
    return Response(200, headers, b"" if request.method == "HEAD" else body)


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with /")
    return path
