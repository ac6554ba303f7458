"""The ``tether`` command: ``tether echo`` runs a server, ``tether connect`` is a client.

``main(argv)`` returns the exit code, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .asyncio.runner import LOOPS, loop_factory, run

if TYPE_CHECKING:
    from .auth import OriginPolicy

__all__ = ["main"]

logger = logging.getLogger("tether")


def _size(text: str) -> int:
    """A byte count: 1048576, 1MiB, 64KiB, 1MB, 64k."""
    units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2,
             "gb": 1000**3, "k": 1024, "m": 1024**2, "g": 1024**3, "b": 1}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix) and lowered[: -len(suffix)].strip().isdigit():
            return int(lowered[: -len(suffix)]) * factor
    if lowered.isdigit():
        return int(lowered)
    raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1048576 or 1MiB")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a header such as 'Name: value'")
    return name.strip(), value.strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether",
        description="tether: a complete, fast WebSocket toolkit (RFC 6455 + RFC 7692).",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    echo = commands.add_parser(
        "echo",
        help="run a WebSocket echo server",
        description="Run a WebSocket server that sends every message back: text as text, "
        "binary as binary. Logs one line per connection. Ctrl-C or SIGTERM closes every "
        "connection with 1001 (going away) and exits 0.",
    )
    _add_server_options(echo)
    broadcast = commands.add_parser(
        "broadcast",
        help="run the broadcast (chat room) server from the articles",
        description="Run a WebSocket server that sends every message it receives to every "
        "open client, sender included, and serves a small chat page at / (open "
        "http://HOST:PORT/ in a browser). A client that cannot keep up is closed with 1013 "
        "rather than allowed to grow the server's memory. Ctrl-C or SIGTERM closes every "
        "connection with 1001 and exits 0.",
    )
    _add_scale_options(broadcast)
    _add_budget_option(broadcast)
    _add_server_options(broadcast)
    chat = commands.add_parser(
        "chat",
        help="run the chat server: rooms, presence, history, resume after reconnect",
        description="Run the chat application: the page at http://HOST:PORT/, a reusable "
        "browser client at /tether.js, and the hub's JSON protocol at /ws. History is kept "
        "in a SQLite file under --data and survives restarts. Only pages from this server's "
        "own origin may open the socket (on a wildcard, LAN or named --host: pages whose "
        "origin matches the Host the browser asked for); --allow-origin adds more. With "
        "--token, open the page as http://HOST:PORT/?token=TOKEN. Ctrl-C or SIGTERM closes "
        "every connection with 1001 and exits 0.",
    )
    chat.add_argument("--data", metavar="DIR", default=None,
                      help="folder for the chat history (default: ./tether-data); "
                      "'-' keeps history in memory only")
    chat.add_argument("--no-presence", action="store_true",
                      help="rooms keep no member list: joins cost nothing beyond the "
                      "subscription (for rooms of many watchers: tickers, live events)")
    _add_scale_options(chat, presence=True)
    _add_budget_option(chat)
    _add_server_options(chat)

    term = commands.add_parser(
        "term",
        help="run a web terminal: xterm.js in the page, a shell on a PTY",
        description="Serve a terminal at http://HOST:PORT/: each browser tab gets its own "
        "program on a real PTY (default: your login shell), which survives reloads and "
        "network drops for --keep seconds and resumes with no byte lost. A terminal socket "
        "runs commands as you: it needs a token (without --token one is made up and the URL "
        "to open is logged), and only pages of this server's own origin may open it. See "
        "docs/terminal.md.",
    )
    term.add_argument("--command", dest="program", metavar="CMD",
                      help="the program to run, split like a shell would (default: your "
                      "login shell, as a login shell)")
    term.add_argument("--cwd", metavar="DIR", help="its working directory (default: this one)")
    term.add_argument("--share", action="store_true",
                      help="one program for every page: writers type, viewers watch")
    term.add_argument("--viewer-token", action="append", default=[], metavar="TOKEN",
                      help="a token that may only watch (repeatable; needs --share)")
    term.add_argument("--readonly", action="store_true",
                      help="every page only watches; input is dropped by the server")
    term.add_argument("--keep", type=float, default=60.0, metavar="SECONDS",
                      help="how long a program outlives its last page, waiting for it to "
                      "come back; 'inf' keeps it until the server stops (default: %(default)s)")
    term.add_argument("--replay", type=_size, default=2**20, metavar="BYTES",
                      help="output kept per terminal for resuming and reloads "
                      "(default: 1MiB)")
    term.add_argument("--max-sessions", type=int, default=32, metavar="N",
                      help="programs running at once (default: %(default)s)")
    _add_server_options(term)

    exec_ = commands.add_parser(
        "exec",
        help="run a program per connection: stdin and stdout as WebSocket messages",
        description="tether exec [options] -- CMD ARGS...: each connection gets its own "
        "process; each text message is a line on its stdin, each line it prints a text "
        "message; stderr goes to the log. When it exits the socket closes with 1000 (a "
        "non-zero exit: 1011 with the status as the reason). Only pages of this server's "
        "own origin may connect from a browser (add others with --allow-origin); clients "
        "without an Origin header (programs) may.",
    )
    exec_.add_argument("--binary", action="store_true",
                       help="raw output chunks as binary messages instead of lines as text")
    exec_.add_argument("--broadcast", action="store_true",
                       help="one process for every client: its output goes to all of them "
                       "and every client's messages to its stdin")
    exec_.add_argument("--max-processes", type=int, metavar="N",
                       help="refuse connections past N running processes with 503")
    exec_.add_argument("--cwd", metavar="DIR", help="the process's working directory")
    _add_budget_option(exec_)
    _add_server_options(exec_)
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                       help="the program and its arguments, after --")

    connect = commands.add_parser(
        "connect",
        help="an interactive WebSocket client",
        description="Connect to a WebSocket server. Each line you type is sent as a text "
        "message; messages received are printed. Works in a pipe too: "
        "printf 'hi\\n' | tether connect ws://127.0.0.1:8765 prints the echo, closes "
        "cleanly and exits 0. Ctrl-D or Ctrl-C closes the connection.",
    )
    connect.add_argument("url", help="ws:// or wss:// URL")
    connect.add_argument("-H", "--header", action="append", type=_header, default=[],
                         metavar="'Name: value'", help="extra request header (repeatable)")
    connect.add_argument("--subprotocol", action="append", default=[], metavar="P",
                         help="subprotocol to offer (repeatable, preferred first)")
    connect.add_argument("--origin", help="Origin header to send")
    connect.add_argument("--max-size", type=_size, default=2**20, metavar="BYTES",
                         help="largest message accepted (default: 1048576)")
    connect.add_argument("--no-compression", action="store_true",
                         help="do not offer permessage-deflate")
    connect.add_argument("--proxy", metavar="URL",
                         help="tunnel through an HTTP proxy: http://[user:pass@]host:port")
    connect.add_argument("--insecure", action="store_true",
                         help="wss://: do not verify the server's certificate (for "
                         "self-signed certificates in development; never in production)")
    _add_loop_option(connect)
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _count(text: str) -> int:
    """A whole number >= 0, for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _add_scale_options(command: argparse.ArgumentParser, presence: bool = False) -> None:
    command.add_argument("--redis", metavar="URL",
                         help="share messages (and the chat's history and presence) with every "
                         "other tether node using this Redis, e.g. redis://127.0.0.1:6379/0; "
                         "needs the redis extra (pip install 'tether[redis]'); "
                         "see docs/scaling.md")
    command.add_argument("--redis-min-replicas", type=_count, default=0, metavar="N",
                         help="with --redis on a master with replicas (Sentinel, Cluster): "
                         "acknowledge a publish only once N replicas have it (WAIT), so that "
                         "a failover loses no acknowledged message (default: 0)")
    command.add_argument("--redis-replica-timeout", type=_positive_seconds, default=1.0,
                         metavar="SECONDS",
                         help="with --redis-min-replicas: how long a publish waits for the "
                         "replicas before it is answered 'unavailable' (default: 1)")
    if presence:  # the chat's; broadcast has none
        command.add_argument("--presence-ttl", type=_positive_seconds, default=None,
                             metavar="SECONDS",
                             help="with --redis: the other nodes announce the members of a "
                             "node that stopped (crash, network split) as left at most this "
                             "long after its last refresh; it refreshes them every third of it "
                             "(default: 30)")
    command.add_argument("--workers", type=int, default=1, metavar="N",
                         help="run N processes on one port (SO_REUSEPORT), each a node; N > 1 "
                         "needs --redis (default: %(default)s)")
    command.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)


def _add_budget_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--max-buffered", type=_size, default=2**20, metavar="BYTES",
                         help="how far behind a client may fall on messages sent to everyone: "
                         "one already holding this many unsent bytes when the next message "
                         "comes is closed with 1013 (try again later) instead of growing the "
                         "server's memory. A message up to --max-size always reaches a client "
                         "that keeps up (default: 1048576)")


def _add_server_options(command: argparse.ArgumentParser) -> None:
    listen = command.add_argument_group("listening")
    listen.add_argument("--host", default="127.0.0.1", help="address to listen on "
                        "(default: %(default)s; 0.0.0.0 for every interface)")
    listen.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")
    listen.add_argument("--tls-cert", metavar="FILE",
                        help="certificate chain (PEM) to serve wss:// (needs --tls-key)")
    listen.add_argument("--tls-key", metavar="FILE", help="private key (PEM) for --tls-cert")
    security = command.add_argument_group("who may connect")
    security.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                          help="a page origin allowed to connect, e.g. https://app.example.com "
                          "or https://*.example.com (repeatable). Browsers send it; other "
                          "origins get 403. Without this option every origin is allowed.")
    security.add_argument("--require-origin", action="store_true",
                          help="also refuse (403) clients that send no Origin header. Browsers "
                          "always send one, so this shuts out scripts and other non-browser "
                          "clients. Needs --allow-origin, except with tether chat, which "
                          "allows its own pages by default")
    security.add_argument("--token", action="append", default=[], metavar="TOKEN",
                          help="require this bearer token (repeatable); others get 401. "
                          "Programs send it as 'Authorization: Bearer TOKEN'. Browsers "
                          "cannot set that header on a WebSocket: they use ?token=TOKEN in "
                          "the socket's URL, a 'token' cookie, or the subprotocol "
                          "'bearer.TOKEN' offered next to one this server speaks "
                          "(--subprotocol). The built-in pages (broadcast, chat) take it "
                          "from their own address: open http://HOST:PORT/#token=TOKEN")
    security.add_argument("--token-file", metavar="FILE",
                          help="read tokens from FILE: one per line, 'TOKEN [NAME]'")
    limits = command.add_argument_group("limits and liveness")
    limits.add_argument("--max-size", type=_size, default=2**20, metavar="BYTES",
                        help="largest message accepted, e.g. 1MiB (default: 1048576); "
                        "larger ones close the connection with 1009")
    limits.add_argument("--max-connections", type=int, metavar="N",
                        help="refuse connections beyond N open ones with 503 (default: no "
                        "limit); clients still in their opening handshake don't count")
    limits.add_argument("--open-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="drop a client that has not finished its opening handshake (TLS "
                        "included) within this time, such as a 'slowloris' that sends its "
                        "request a byte at a time (default: %(default)s)")
    limits.add_argument("--max-pending-handshakes", type=int, default=2048, metavar="N",
                        help="clients allowed in their opening handshake at once; a new one "
                        "past N makes the server drop the oldest (default: %(default)s)")
    limits.add_argument("--max-header-size", type=_size, default=16384, metavar="BYTES",
                        help="largest block of request headers accepted; larger ones get 431 "
                        "(default: 16384)")
    limits.add_argument("--max-queue", type=int, default=32, metavar="N",
                        help="messages a connection may have received but not yet handled; "
                        "past N the server stops reading from that client until it catches "
                        "up, and TCP slows the client down (default: %(default)s)")
    limits.add_argument("--close-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="when a connection closes, how long to wait for the client to "
                        "answer the close frame and hang up before dropping it "
                        "(default: %(default)s)")
    limits.add_argument("--ping-interval", type=float, default=20.0, metavar="SECONDS",
                        help="send a ping this often to keep idle links alive and find dead "
                        "peers; 0 turns it off (default: %(default)s)")
    limits.add_argument("--ping-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="close with 1011 when a pong takes longer (default: %(default)s)")
    protocol = command.add_argument_group("protocol")
    protocol.add_argument("--subprotocol", action="append", default=[], metavar="NAME",
                          help="a subprotocol to speak, most preferred first (repeatable)")
    protocol.add_argument("--no-compression", action="store_true",
                          help="refuse permessage-deflate (on by default)")
    command.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS",
                         help="on Ctrl-C or SIGTERM, how long to wait for connections to close "
                         "(with 1001) before dropping them (default: %(default)s)")
    command.add_argument("--shutdown-delay", type=float, default=0.0, metavar="SECONDS",
                         help="on SIGTERM, first keep serving this long with /readyz "
                         "answering 503, so that load balancers stop sending new clients "
                         "(a second signal cuts it short; default: %(default)s)")
    command.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    operations = command.add_argument_group("operations (see docs/operations.md)")
    operations.add_argument("--metrics", action="store_true",
                            help="serve Prometheus metrics at /metrics on this port (needs "
                            "pip install 'tether[metrics]')")
    operations.add_argument("--metrics-port", type=int, metavar="PORT",
                            help="serve /metrics on this port of --host instead (implies "
                            "--metrics); /healthz and /readyz are there too")
    operations.add_argument("--admin-token", action="append", default=[], metavar="TOKEN",
                            help="serve the live admin page at /admin to holders of this "
                            "token (repeatable; its own token, not one of --token's): "
                            "open http://HOST:PORT/admin#token=TOKEN")
    operations.add_argument("--admin-readonly", action="store_true",
                            help="the admin page shows everything and allows no action")
    operations.add_argument("--log-format", choices=("text", "json"), default="text",
                            help="text: key=value lines; json: one JSON object per line, "
                            "same fields (default: %(default)s)")
    _add_loop_option(command)


def _add_loop_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--loop", choices=LOOPS, default=None,
                         help="event loop: uvloop when installed (auto, the default; or the "
                         "TETHER_LOOP environment variable), or the standard asyncio loop")


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    """serve() keyword arguments from the command line.

    Raises:
        _UsageError: an option is unusable (unreadable file, --tls-cert without --tls-key).
    """
    import ssl

    from .auth import TokenAuth

    options: dict[str, Any] = dict(
        max_size=args.max_size,
        max_connections=args.max_connections,
        open_timeout=args.open_timeout,
        max_pending_handshakes=args.max_pending_handshakes,
        max_header_bytes=args.max_header_size,
        max_queue=args.max_queue,
        close_timeout=args.close_timeout,
        ping_interval=args.ping_interval or None,
        ping_timeout=args.ping_timeout or None,
        subprotocols=args.subprotocol,
        compression=None if args.no_compression else "deflate",
    )
    if getattr(args, "max_buffered", 1) < 1:
        raise _UsageError("--max-buffered must be at least 1 byte")
    for flag, value in [("--open-timeout", args.open_timeout),
                        ("--close-timeout", args.close_timeout),
                        ("--max-pending-handshakes", args.max_pending_handshakes),
                        ("--max-queue", args.max_queue)]:
        if value <= 0:
            raise _UsageError(f"{flag} must be more than 0")
    if args.require_origin and not args.allow_origin and args.command not in _OWN_ORIGIN:
        raise _UsageError("--require-origin needs --allow-origin: without it, every client "
                          "would be refused")
    if args.allow_origin:
        options["allowed_origins"] = args.allow_origin
    if args.token or args.token_file:
        tokens = {token: f"token-{i}" for i, token in enumerate(args.token, 1)}
        if args.token_file:
            try:
                from_file = TokenAuth.from_file(args.token_file)
            except (OSError, ValueError) as exc:
                raise _UsageError(f"cannot read --token-file {args.token_file}: {exc}") from None
            if tokens:
                tokens_auth = TokenAuth(tokens)
                options["authenticate"] = lambda r: from_file(r) or tokens_auth(r)
            else:
                options["authenticate"] = from_file
        else:
            options["authenticate"] = TokenAuth(tokens)
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise _UsageError("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise _UsageError(f"cannot load the TLS certificate or key: {exc}") from None
        options["ssl"] = context
    return options


_SERVERS = ("echo", "broadcast", "chat", "term", "exec")
_OWN_ORIGIN = ("chat", "term", "exec")  # allow their own origin by default


class _UsageError(Exception):
    """A command-line option that cannot be used; printed without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in _SERVERS:
        _configure_logging(args.quiet, args.log_format)
        _raise_open_files_limit()
        if getattr(args, "presence_ttl", None) is not None and not args.redis:
            print(f"tether {args.command}: --presence-ttl needs --redis (one node's "
                  "members leave when their connections close)", file=sys.stderr)
            return 2
        if getattr(args, "redis_min_replicas", 0) and not args.redis:
            print(f"tether {args.command}: --redis-min-replicas needs --redis",
                  file=sys.stderr)
            return 2
        if getattr(args, "redis", None) and not _redis_installed():
            print(f"tether {args.command}: --redis needs the redis extra: "
                  "pip install 'tether[redis]'", file=sys.stderr)
            return 1
        if getattr(args, "workers", 1) > 1:
            return _supervise(args, list(sys.argv[1:] if argv is None else argv))
        return _run(_serve(args), args.loop)
    if args.command == "connect":
        return _run(_connect(args), args.loop)
    parser.print_help()
    return 2


def _supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """``--workers N``: N processes of this command on one port (SO_REUSEPORT), each a node
    of the same Redis-backed hub. SIGINT/SIGTERM go to every worker (each closes its
    connections with 1001); the exit code is 0 when they all exit 0."""
    import subprocess

    if not args.redis:
        print(f"tether {args.command}: --workers > 1 needs --redis (workers share topics "
              "through it)", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "tether", *argv, "--workers", "1", "--reuse-port"]
    workers = [subprocess.Popen(command) for _ in range(args.workers)]
    logger.info("event=workers count=%d pids=%s", len(workers),
                ",".join(str(w.pid) for w in workers))

    def forward(signum: int, frame: Any) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = []
    for worker in workers:
        code = worker.wait()
        codes.append(code)
        if code != 0:
            forward(signal.SIGTERM, None)  # one failed (e.g. Redis unreachable): stop all
    return 0 if all(code == 0 for code in codes) else 1


def _raise_open_files_limit() -> None:
    """A server holds one descriptor per connection, and the usual soft limit (1,024) would
    stop it near a thousand connections, refusing the next ones without a word in its log.
    Lift the soft limit to the hard one (which only an administrator can raise); the
    listen line says what it is."""
    try:
        import resource
    except ImportError:  # not a Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Unlimited: Linux's default fs.nr_open, the most a process may have anyway.
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


def _open_files_limit() -> str:
    try:
        import resource
    except ImportError:
        return "-"
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


def _configure_logging(quiet: bool, log_format: str = "text") -> None:
    from .logformat import configure

    configure(logging.WARNING if quiet else logging.INFO, sys.stderr,
              json_lines=log_format == "json")


def _run(coro: Any, loop: str | None) -> int:
    try:
        loop_factory(loop)
    except ValueError as exc:  # --loop uvloop without uvloop, or a bad TETHER_LOOP
        coro.close()
        print(f"tether: {exc}", file=sys.stderr)
        return 2
    try:
        return int(run(coro, loop=loop))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not on the main thread, or Windows
            pass


async def _serve(args: argparse.Namespace) -> int:
    from .asyncio.server import serve

    try:
        options = _server_options(args)
    except _UsageError as exc:
        print(f"tether {args.command}: {exc}", file=sys.stderr)
        return 2
    hub = None
    broadcast_app = None
    terminal = None
    exec_app = None
    page_token = None
    if args.command == "echo":
        from .apps.echo import echo
        from .asyncio.router import Router

        handler = Router(default=echo)
    elif args.command == "broadcast":
        from .apps.broadcast import BroadcastApp

        backend = None
        if args.redis:
            backend = await _open_redis(args)
            if backend is None:
                return 1
        broadcast_app = BroadcastApp(backend, max_buffered=args.max_buffered)
        handler = broadcast_app.router
    elif args.command in ("term", "exec"):
        try:
            if args.command == "term":
                terminal, page_token = _terminal(args, options)
                handler = terminal.router()
            else:
                exec_app = _exec_app(args, options)
                handler = exec_app.router
        except _UsageError as exc:
            print(f"tether {args.command}: {exc}", file=sys.stderr)
            return 2
    else:
        from .apps.chat.server import make_router as make_chat_router
        from .apps.chat.server import open_chat_backend
        from .hub import Hub
        from .hub.hub import DEFAULT_MAX_FRAME

        # A frame the socket would refuse (1009) is one the hub must call too big first, so
        # that the page's limit is the one that applies.
        max_frame = min(DEFAULT_MAX_FRAME, args.max_size)
        if args.redis:
            redis_backend = await _open_redis(args)
            if redis_backend is None:
                return 1
            hub = Hub(redis_backend, max_buffered=args.max_buffered, max_frame=max_frame,
                      presence=not args.no_presence)
        else:
            data = None if args.data == "-" else Path(args.data or "tether-data")
            try:
                hub = Hub(open_chat_backend(data), max_buffered=args.max_buffered,
                          max_frame=max_frame, presence=not args.no_presence)
            except (OSError, ValueError) as exc:
                print(f"tether chat: cannot open the history in {data}: {exc}",
                      file=sys.stderr)
                return 1
        # The same check as the handshake's, for the page's /auth-check.
        handler = make_chat_router(hub, authenticate=options.get("authenticate"))
    if args.command in _OWN_ORIGIN:
        # Their own pages, plus any --allow-origin: a page elsewhere cannot open the socket
        # (CSWSH). See OriginPolicy.same_origin for wildcard and named binds.
        from .auth import OriginPolicy

        options["allowed_origins"] = OriginPolicy.same_origin(
            args.host, args.port, tls="ssl" in options, also=args.allow_origin)
    if args.require_origin:
        options["allowed_origins"] = _requiring_origin(options["allowed_origins"])
    if broadcast_app is not None:
        await broadcast_app.start()  # subscribed before the first client can connect
    if exec_app is not None:
        try:
            await exec_app.start()
        except (OSError, ValueError) as exc:
            print(f"tether exec: cannot start {exec_app.command[0]}: {exc}", file=sys.stderr)
            return 1
    admin = None
    if args.admin_token or args.admin_readonly:
        try:
            admin = _admin(args, handler, hub, tls="ssl" in options)
        except _UsageError as exc:
            print(f"tether {args.command}: {exc}", file=sys.stderr)
            return 2
    metrics = None
    if args.metrics or args.metrics_port is not None:
        try:
            metrics = _Metrics(args)
        except ImportError as exc:  # MissingExtra: says what to install
            print(f"tether {args.command}: {exc}", file=sys.stderr)
            return 2
        if args.metrics_port is None:
            metrics.route(handler)
    stop = asyncio.Event()
    _install_stop_signals(stop)
    try:
        server = await serve(handler, args.host, args.port,
                             reuse_port=getattr(args, "reuse_port", False), **options)
    except OSError as exc:
        print(f"tether {args.command}: cannot listen on {args.host}:{args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    if hub is not None:
        server.ready_checks.append(hub.not_ready)
    elif broadcast_app is not None and broadcast_app.backend is not None:
        server.ready_checks.append(broadcast_app.backend.not_ready)
    if admin is not None:
        admin.attach(server)
    if metrics is not None:
        try:
            await metrics.start(server, hub)
        except OSError as exc:
            await server.close()
            print(f"tether {args.command}: cannot listen on {args.host}:{args.metrics_port} "
                  f"for --metrics-port: {exc.strerror or exc}", file=sys.stderr)
            return 1
    scheme = "wss" if "ssl" in options else "ws"
    loop_name = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") \
        else "asyncio"
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        if args.command in ("chat", "term"):
            from .apps.chat.server import page_url

            page = page_url(host, port, tls="ssl" in options)
            if page_token is not None:  # made up here: the operator needs it to get in
                page += "#token=" + page_token
            logger.info("event=listen app=%s url=%s://%s:%s page=%s loop=%s open_files=%s",
                        args.command, scheme, _url_host(host), port, page, loop_name,
                        _open_files_limit())
        else:
            logger.info("event=listen app=%s url=%s://%s:%s loop=%s open_files=%s",
                        args.command, scheme, _url_host(host), port, loop_name,
                        _open_files_limit())
    from .auth import is_loopback_host

    host = args.host.strip().strip("[]").lower()
    if args.command == "term" and "ssl" not in options and not is_loopback_host(host):
        logger.warning("event=warning reason=%s", "the terminal listens beyond this machine "
                       "without TLS: anyone who sees the traffic gets its token and a shell; "
                       "use --tls-cert/--tls-key or a TLS proxy, or keep --host on loopback")
    await stop.wait()
    if args.shutdown_delay > 0:
        # /readyz answers 503 while everything else goes on, so that load balancers stop
        # sending new clients before the connections are closed.
        server.draining = True
        logger.info("event=draining seconds=%g", args.shutdown_delay)
        await _wait_or(stop, args.shutdown_delay)
    logger.info("event=shutdown connections=%d code=1001", len(server.connections))
    if admin is not None:
        await admin.close()
    if terminal is not None:
        await terminal.close()
    await server.close(1001, "server shutting down", timeout=args.shutdown_timeout)
    if exec_app is not None:
        await exec_app.close()
    if hub is not None:
        await hub.close()
    if broadcast_app is not None and broadcast_app.backend is not None:
        await broadcast_app.backend.close()
    if metrics is not None:
        await metrics.close()
    return 0


async def _wait_or(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set again (a second Ctrl-C)."""
    stop.clear()
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


def _admin(args: argparse.Namespace, router: Any, hub: Any, tls: bool) -> Any:
    """``--admin-token``: the admin page on the server's router."""
    from .apps.admin import Admin

    if not args.admin_token:
        raise _UsageError("--admin-readonly needs --admin-token")
    if any(not token for token in args.admin_token):
        raise _UsageError("--admin-token is empty")
    if set(args.admin_token) & set(args.token):
        raise _UsageError("--admin-token must not be one of the --token tokens: anyone "
                          "allowed to connect would get the admin page")
    admin = Admin(args.admin_token, hub=hub, readonly=args.admin_readonly)
    admin.mount(router, "/admin", host=args.host, port=args.port, tls=tls,
                also=args.allow_origin)
    return admin


class _Metrics:
    """``--metrics``: /metrics on the server's own router, or on its own port."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .metrics import LoopLag, require_prometheus

        self.prometheus = require_prometheus()  # raises MissingExtra first
        self.args = args
        self.registry = self.prometheus.CollectorRegistry(auto_describe=False)
        self.loop_lag = LoopLag()
        self.server: Any = None

    def route(self, router: Any) -> None:
        from .metrics import metrics_handler

        router.add_http("/metrics", metrics_handler(self.registry))

    async def start(self, server: Any, hub: Any) -> None:
        from .asyncio.router import Router
        from .asyncio.server import serve
        from .metrics import TetherCollector

        self.registry.register(TetherCollector(server, hub=hub, loop_lag=self.loop_lag))
        self.loop_lag.start()
        port = self.args.metrics_port
        if port is not None:
            router = Router()
            self.route(router)
            self.server = await serve(router, self.args.host, port)
            self.server.ready_checks.append(server.not_ready)  # the main server's readiness
            logger.info("event=listen app=metrics url=http://%s:%s/metrics",
                        _url_host(self.args.host), self.server.port_number)

    async def close(self) -> None:
        self.loop_lag.stop()
        if self.server is not None:
            await self.server.close()


def _terminal(args: argparse.Namespace, options: dict[str, Any]) -> tuple[Any, str | None]:
    """``tether term``: the Terminal, and the token made up for it (None when given).
    Sets ``authenticate`` (writers: --token/--token-file; viewers: --viewer-token) in
    ``options``."""
    import math
    import secrets
    import shlex

    from .apps.term import SUBPROTOCOL, Terminal
    from .auth import TokenAuth

    if args.viewer_token and not args.share:
        raise _UsageError("--viewer-token needs --share (viewers watch a shared terminal)")
    try:
        command = shlex.split(args.program) if args.program else None
    except ValueError as exc:
        raise _UsageError(f"cannot split --command: {exc}") from None
    if args.program is not None and not command:
        raise _UsageError("--command is empty")
    if args.cwd is not None and not Path(args.cwd).is_dir():
        raise _UsageError(f"--cwd {args.cwd} is not a directory")
    if args.keep < 0 or args.max_sessions < 1:
        raise _UsageError("--keep must be 0 or more, --max-sessions at least 1")
    made_up = None
    writers = options.get("authenticate")
    if writers is None:
        made_up = secrets.token_urlsafe(24)
        writers = TokenAuth([made_up])
    viewers = TokenAuth({t: f"viewer-{i}" for i, t in enumerate(args.viewer_token, 1)}
                        ) if args.viewer_token else None

    def authenticate(request: Any) -> Any:
        writer = writers(request)
        if writer is not None or viewers is None:
            return writer
        viewer = viewers(request)
        return None if viewer is None else _Viewer(viewer)  # the role travels in the type

    options["authenticate"] = authenticate
    options["subprotocols"] = [SUBPROTOCOL, *options.get("subprotocols", [])]
    # Output frames are framed once for every page and never compressed: a deflate context
    # would only cost memory (about 23 KiB per page).
    options["compression"] = None
    try:
        terminal = Terminal(
            command, cwd=args.cwd, share=args.share, readonly=args.readonly,
            keep=None if math.isinf(args.keep) else args.keep, replay=args.replay,
            max_sessions=args.max_sessions,
            role=lambda ws: "viewer" if isinstance(getattr(ws, "user", None), _Viewer)
            else "writer",
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    return terminal, made_up


class _Viewer(str):
    """The principal of a --viewer-token."""


def _exec_app(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    from .apps.exec import ExecApp

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise _UsageError("no command: tether exec [options] -- CMD ARGS...")
    if args.cwd is not None and not Path(args.cwd).is_dir():
        raise _UsageError(f"--cwd {args.cwd} is not a directory")
    if args.max_processes is not None and args.max_processes < 1:
        raise _UsageError("--max-processes must be at least 1")
    app = ExecApp(argv, binary=args.binary, broadcast=args.broadcast,
                  max_processes=args.max_processes, cwd=args.cwd,
                  max_buffered=args.max_buffered, max_line=args.max_size)
    options["process_request"] = app.process_request
    return app


def _requiring_origin(allowed: Sequence[str] | OriginPolicy) -> OriginPolicy:
    """``--require-origin``: the allow-list, refusing requests without Origin too."""
    from .auth import OriginPolicy

    policy = allowed if isinstance(allowed, OriginPolicy) else OriginPolicy(allowed)
    policy.require_origin = True
    return policy


def _redis_installed() -> bool:
    """Whether redis-py can be imported (checked once, before any worker starts)."""
    import importlib.util

    try:
        return importlib.util.find_spec("redis") is not None
    except (ImportError, ValueError):  # sys.modules["redis"] = None, a broken install
        return False


async def _open_redis(args: argparse.Namespace) -> Any:
    """A connected RedisBackend, or None after printing why not (exit code 1)."""
    from .exceptions import BackendUnavailable

    try:
        from .hub.redis import DEFAULT_PRESENCE_TTL, RedisBackend
    except ModuleNotFoundError as exc:  # a plain `pip install tether`, or a redis-py too old
        if exc.name is None or exc.name.partition(".")[0] != "redis":
            raise
        print(f"tether {args.command}: --redis needs the redis extra: "
              "pip install 'tether[redis]'", file=sys.stderr)
        return None
    ttl = getattr(args, "presence_ttl", None)  # chat only: broadcast has no presence
    try:
        backend = RedisBackend(
            args.redis, presence_ttl=DEFAULT_PRESENCE_TTL if ttl is None else ttl,
            min_replicas=args.redis_min_replicas, replica_timeout=args.redis_replica_timeout)
        await backend.connect()
    except (BackendUnavailable, ValueError) as exc:
        print(f"tether {args.command}: {exc}", file=sys.stderr)
        return None
    return backend


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _connect(args: argparse.Namespace) -> int:
    from .asyncio.client import connect, redact_uri
    from .exceptions import ConnectionClosed, HandshakeError, InvalidURI

    try:
        ws = await connect(
            args.url,
            headers=args.header,
            subprotocols=args.subprotocol,
            origin=args.origin,
            max_size=args.max_size,
            compression=None if args.no_compression else "deflate",
            proxy=args.proxy,
            ssl=_insecure_context() if args.insecure else None,
        )
    except (InvalidURI, HandshakeError, OSError, TimeoutError) as exc:
        print(f"tether connect: {exc}", file=sys.stderr)
        return 1

    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    console = _Console()
    console.status(f"Connected to {redact_uri(args.url)}" + (
        f" (subprotocol {ws.subprotocol})" if ws.subprotocol else ""))
    stop = asyncio.Event()
    _install_stop_signals(stop)

    async def receive() -> None:
        try:
            async for message in ws:
                console.message(message)
        except ConnectionClosed:
            pass

    async def send() -> None:
        async for line in (_prompt_lines() if interactive else _piped_lines()):
            try:
                await ws.send(line)
            except ConnectionClosed:
                return

    receiver = asyncio.ensure_future(receive())
    with _patched_stdout(interactive):
        sender = asyncio.ensure_future(send())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([receiver, sender, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not receiver.done():
            # Input ended or Ctrl-C: close cleanly; messages already on their way still print.
            await ws.close(1000)
        await receiver
        for task in (sender, stopper):
            task.cancel()
        await asyncio.gather(sender, stopper, return_exceptions=True)
    code, reason = ws.close_code, ws.close_reason
    console.status(f"Connection closed: {code}" + (f" {reason}" if reason else ""))
    return 0 if code in (1000, 1001) else 1


def _insecure_context() -> Any:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _piped_lines() -> AsyncIterator[str]:
    """Lines from a non-interactive stdin (a pipe or a file). A daemon thread reads them, so a
    stdin that stays open never keeps the process alive after the connection closes."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for raw in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, raw.rstrip("\r\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    while (line := await lines.get()) is not None:
        yield line


async def _prompt_lines() -> AsyncIterator[str]:
    """Lines typed at a prompt. With prompt_toolkit (``pip install tether[cli]``), messages
    that arrive print above the line being typed, which stays intact; without it, plain
    line input."""
    try:
        from prompt_toolkit import PromptSession
    except ImportError:
        async for line in _piped_lines():
            yield line
        return
    session: Any = PromptSession()
    while True:
        try:
            yield await session.prompt_async("> ")
        except (EOFError, KeyboardInterrupt):
            return


@contextmanager
def _patched_stdout(interactive: bool) -> Iterator[None]:
    """Route prints through prompt_toolkit while a prompt is on screen."""
    if interactive:
        try:
            from prompt_toolkit.patch_stdout import patch_stdout
        except ImportError:
            pass
        else:
            with patch_stdout(raw=True):
                yield
            return
    yield


class _Console:
    """What ``tether connect`` prints: messages on stdout, status lines on stderr."""

    def message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            text = f"<binary, {len(message)} bytes> {message[:64].hex()}"
            if len(message) > 64:
                text += "..."
        else:
            text = message
        print(text, flush=True)

    def status(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
