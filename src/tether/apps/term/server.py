"""The web terminal: xterm.js in the page, a program on a PTY on the server, a WebSocket
between them. ``tether term`` serves it at ``/``; :meth:`Terminal.mount` puts it on any
:class:`~tether.Router` path of an application's own server, behind that server's own
authentication::

    terminal = Terminal(["htop"], role=lambda ws: "writer" if ws.user == "root" else "viewer",
                        share=True)
    terminal.mount(router, "/admin/shell")      # page at /admin/shell/, socket at /admin/shell/ws

The wire protocol, the flow control and the security model: docs/terminal.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...asyncio.connection import WebSocket, format_address
from ...asyncio.router import Router, text_response
from ...exceptions import ConnectionClosed
from ...process import spawn_pty
from ...process.replay import DEFAULT_REPLAY
from ...protocol.http11 import Headers, Request, Response
from .session import HIGH_WATER, LOW_WATER, VIEWER, WRITER, Page, TermSession, dumps

__all__ = ["Terminal", "STATIC_DIR", "SUBPROTOCOL", "default_command", "WRITER", "VIEWER"]

logger = logging.getLogger("tether")

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page, its script and the vendored xterm.js."""
SUBPROTOCOL = "tether.term.v1"
"""The subprotocol the page offers (next to ``bearer.TOKEN`` when it has a token)."""
MAX_SESSION_ID = 64
TAKEN_OVER = 4000
"""Close code for a page whose session another page attached to (not shared)."""

_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
)


def default_command() -> list[str]:
    """The user's login shell, as a login shell: ``$SHELL``, else the password database's,
    else ``/bin/sh``; run with ``-l``."""
    shell = os.environ.get("SHELL")
    if not shell:
        try:
            shell = pwd.getpwuid(os.getuid()).pw_shell
        except KeyError:
            shell = ""
    return [shell or "/bin/sh", "-l"]


class Terminal:
    """Web terminals on PTYs: one per page (a reload or a reconnect attaches to it again
    within ``keep`` seconds), or one shared by every page (``share=True``).

    Pass :meth:`serve` where a WebSocket handler goes, or :meth:`mount` the page and the
    socket on a router. Who may connect at all is the server's business (``authenticate``,
    ``allowed_origins``); ``role`` says what each connection may do.

    Args:
        command: the program and its arguments (default: the user's login shell).
        cwd: its working directory (default: the server's).
        env: variables set for it on top of the server's environment (``TERM`` is
            ``xterm-256color`` unless given here). Nothing from the page or its URL ever
            reaches the command's arguments or environment.
        share: one program for every page; else one per page.
        role: ``role(ws)`` is ``"writer"`` (types and sizes the window), ``"viewer"`` (only
            watches: its input is dropped by the server) or None (refused, 1008). Default:
            every connection writes, or only views with ``readonly``.
        readonly: every page is a viewer.
        keep: seconds a program outlives its last page, waiting for a page to attach again
            (None: until the server stops).
        replay: bytes of output kept per session for resuming and reloads.
        max_sessions: programs running at once; a page that would start one more is closed
            with 1013.
        kill_grace: seconds between SIGHUP, SIGTERM and SIGKILL when a program is ended.
        attach_timeout: seconds a new connection has to send its ``attach`` message.
        high_water, low_water: the flow control's marks, in bytes of output (see
            :mod:`tether.apps.term.session`).
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        share: bool = False,
        role: Callable[[WebSocket], str | None] | None = None,
        readonly: bool = False,
        keep: float | None = 60.0,
        replay: int = DEFAULT_REPLAY,
        max_sessions: int = 32,
        kill_grace: float = 2.0,
        attach_timeout: float = 10.0,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
    ) -> None:
        self.command = list(command) if command else default_command()
        self.cwd = None if cwd is None else os.fspath(cwd)
        self.env = {"TERM": "xterm-256color", "COLORTERM": "truecolor", **(env or {})}
        self.share = share
        self.readonly = readonly
        self._role = role
        if keep is not None and keep < 0:
            raise ValueError("keep must be 0 or more seconds, or None")
        if not 0 < low_water < high_water:
            raise ValueError("need 0 < low_water < high_water")
        if replay < high_water:
            raise ValueError("the replay buffer must hold at least high_water bytes")
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.keep = keep
        self.replay = replay
        self.max_sessions = max_sessions
        self.kill_grace = kill_grace
        self.attach_timeout = attach_timeout
        self.high_water = high_water
        self.low_water = low_water
        self.sessions: dict[str, TermSession] = {}
        """Sessions that pages may attach to, by id."""
        self._ending: set[asyncio.Task[int]] = set()

    # -- routes --------------------------------------------------------------------------------

    def mount(self, router: Router, prefix: str = "/") -> None:
        """Serve the page at ``prefix`` (``/admin/shell/``; without the slash it redirects),
        its files under it and the socket at ``prefix + "ws"``."""
        base = prefix.rstrip("/") + "/"
        page = STATIC_DIR / "index.html"

        def index(request: Request) -> Response:
            if request.method not in ("GET", "HEAD"):
                return text_response(405, "method not allowed", Headers([("Allow", "GET, HEAD")]))
            body = page.read_bytes()
            headers = Headers([
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("X-Content-Type-Options", "nosniff"),
                ("Cache-Control", "no-cache"),
                ("Referrer-Policy", "no-referrer"),
                ("Content-Security-Policy", _PAGE_POLICY),
            ])
            return Response(200, headers, b"" if request.method == "HEAD" else body)

        def upgrade_required(request: Request) -> Response:
            return text_response(426, "this is the terminal's WebSocket",
                                 Headers([("Upgrade", "websocket")]))

        router.add_http(base, index)
        if base != "/":
            router.add_http(base.rstrip("/"), lambda request: text_response(
                308, base, Headers([("Location", base)])))
        router.add_websocket(base + "ws", self.serve)
        router.add_http(base + "ws", upgrade_required)
        router.static(base, STATIC_DIR)

    def router(self) -> Router:
        """A router with the terminal at ``/``."""
        router = Router()
        self.mount(router, "/")
        return router

    # -- connections ---------------------------------------------------------------------------

    def role(self, ws: WebSocket) -> str | None:
        if self.readonly:
            return VIEWER
        if self._role is None:
            return WRITER
        role = self._role(ws)
        if role not in (WRITER, VIEWER, None):
            raise ValueError(f"role() returned {role!r}: use 'writer', 'viewer' or None")
        return role

    async def serve(self, ws: WebSocket) -> None:
        """The WebSocket handler: wait for ``attach``, attach to a session (starting its
        program if needed), then relay input and control messages until the page leaves."""
        role = self.role(ws)
        if role is None:
            await ws.close(1008, "not allowed to use this terminal")
            return
        try:
            first = await asyncio.wait_for(ws.recv(), self.attach_timeout)
        except asyncio.TimeoutError:
            await ws.close(1008, "no attach message")
            return
        try:
            session_id, since, cols, rows = _parse_attach(first)
            session = self._session_for(ws, role, session_id, cols, rows)
        except _Refused as refused:
            logger.info("event=term-refused remote=%s reason=%s",
                        format_address(ws.remote_address), str(refused).replace(" ", "-"))
            await ws.close(refused.code, str(refused))
            return
        page = session.attach(ws, role, since)
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    if session.input(page, message):  # the program is not reading
                        await session.stream.drain_unless(ws.wait_closed())
                        session.input_drained()
                else:
                    self._control(session, page, message)
        except ConnectionClosed:
            pass
        finally:
            session.detach(page)

    def _control(self, session: TermSession, page: Page, text: str) -> None:
        try:
            message = json.loads(text)
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ValueError("a control message is a JSON object with a string 'type'")
            kind = message["type"]
            if kind == "ack":
                session.ack(page, message.get("offset"))
            elif kind == "resize":
                session.resize(page, message.get("cols"), message.get("rows"))
            elif kind == "attach":
                raise ValueError("already attached")
            else:
                raise ValueError(f"unknown message type {kind[:32]!r}")
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
            reason = "JSON nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            logger.info("event=term-bad-message session=%s remote=%s reason=%r", session.tag,
                        format_address(page.ws.remote_address), reason)
            try:
                page.ws.send_nowait(dumps({"type": "error", "message": reason}))
            except ConnectionClosed:
                pass

    def _session_for(self, ws: WebSocket, role: str, session_id: str | None, cols: int,
                     rows: int) -> TermSession:
        owner = getattr(ws, "user", None)
        if self.share:  # the running session (or the ended one this page still shows)
            for session in self.sessions.values():
                if not session.ended or session.id == session_id:
                    return session
        elif session_id is not None:
            found = self.sessions.get(session_id)
            if found is not None and found.owner == owner:
                session = found
                # One page per session: the newest wins (a reconnect may come before the
                # server noticed that the old connection is gone). The old page is told
                # not to reconnect by itself (4000).
                for page in list(session.pages):
                    page.ws.close_nowait(TAKEN_OVER, "attached elsewhere")
                    session.detach(page)
                return session
        if len(self.sessions) >= self.max_sessions:
            raise _Refused(1013, f"too many terminals ({self.max_sessions}); try again later")
        try:
            child = spawn_pty(self.command, cols=cols, rows=rows, cwd=self.cwd,
                              env={**os.environ, **self.env})
        except (OSError, ValueError) as exc:
            logger.error("event=term-spawn-failed command=%s error=%r", self.command[0], exc)
            raise _Refused(1011, "cannot start the terminal's program") from None
        session = TermSession(
            secrets.token_urlsafe(18), child, owner=None if self.share else owner,
            shared=self.share, replay=self.replay, keep=self.keep, kill_grace=self.kill_grace,
            high_water=self.high_water, low_water=self.low_water, on_forget=self._forget,
        )
        self.sessions[session.id] = session
        logger.info("event=term-start session=%s pid=%d command=%s size=%dx%d", session.tag,
                    child.pid, self.command[0], cols, rows)
        return session

    def _forget(self, session: TermSession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    async def close(self) -> None:
        """End every program (SIGHUP, then SIGTERM and SIGKILL after ``kill_grace``) and wait
        until each is reaped. For a server's shutdown."""
        tasks = [session.terminate() for session in list(self.sessions.values())]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _parse_attach(message: Any) -> tuple[str | None, int | None, int, int]:
    """(session, since, cols, rows) of the first message.

    Raises:
        _Refused: it is not a valid ``attach``.
    """
    from ...process import check_size

    try:
        if not isinstance(message, str):
            raise ValueError("the first message must be a text 'attach' message")
        data = json.loads(message)
        if not isinstance(data, dict) or data.get("type") != "attach":
            raise ValueError("the first message must be {\"type\": \"attach\", ...}")
        session = data.get("session")
        if session is not None and (not isinstance(session, str)
                                    or not 0 < len(session) <= MAX_SESSION_ID):
            raise ValueError("session must be a string of 1 to 64 characters")
        since = data.get("since")
        if since is not None and (type(since) is not int or since < 0):
            raise ValueError("since must be a non-negative integer")
        cols, rows = data.get("cols", 80), data.get("rows", 24)
        check_size(cols, rows)
    except RecursionError:
        raise _Refused(1008, "bad attach: JSON nested too deeply") from None
    except ValueError as exc:
        raise _Refused(1008, f"bad attach: {exc}"[:120]) from None
    return session, since, cols, rows
