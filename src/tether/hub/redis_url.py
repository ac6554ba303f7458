"""The ``--redis`` URL: one Redis server, a Sentinel-managed master, or a Redis Cluster.

redis-py has no Sentinel URL, and ``RedisCluster.from_url`` takes a single node, so the two
multi-address forms are parsed here, in the grammar that redis-sentinel-url, LangChain,
RedisVL and Prefect share::

    redis://[user:pw@]host[:6379][/db] | rediss://… | unix://…     one server (redis-py's form)
    redis[s]+sentinel://[user:pw@]h1[:26379][,h2[:port]…]/<master name>[/db][?options]
    redis[s]+cluster://[user:pw@]h1[:6379][,h2[:port]…][/][?options]      (database 0 only)

The user name and password are the data nodes'; sentinels with a password of their own take
``?sentinel_password=`` (and ``?sentinel_username=``). ``rediss+`` means TLS to every node.
This module does not import redis-py: it works without the ``redis`` extra.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["RedisURL", "parse_redis_url", "safe_url"]

Mode = Literal["single", "sentinel", "cluster"]

DEFAULT_PORTS: dict[str, int] = {"sentinel": 26379, "cluster": 6379}

# The form quoted in error messages.
_FORMS: dict[str, str] = {
    "sentinel": "redis+sentinel://host:26379/<master name>/<db>",
    "cluster": "redis+cluster://host:6379/",
}
_SCHEMES = "use redis://, redis+sentinel:// or redis+cluster://"
_HOST = re.compile(r"[^\s\[\]@/?#:,%]+")
_PORT = re.compile(r"[0-9]{1,5}")
_DB = re.compile(r"[0-9]+")
_MASK = "***"


@dataclass(frozen=True)
class RedisURL:
    """A parsed ``--redis`` URL.

    For ``single`` only ``mode`` and ``tls`` are set: the URL goes to redis-py as it is
    (``Redis.from_url``), which parses the rest. ``repr()`` masks the passwords.

    Attributes:
        mode: ``single``, ``sentinel`` or ``cluster``.
        tls: ``rediss``: TLS to every node (and to the sentinels).
        addresses: (host, port) of each sentinel (``sentinel``) or of each startup node
            (``cluster``), in the URL's order; IPv6 hosts without their brackets.
        service: the master's name at the sentinels (``sentinel`` only).
        db: the database number (always 0 for ``cluster``).
        username: the data nodes' user name (ACL), percent-decoded.
        password: the data nodes' password, percent-decoded.
        options: the query's ``name=value`` pairs, decoded as redis-py decodes its URL
            options (``+`` is a space), ``db`` excepted (it is ``db``).
    """

    mode: Mode
    tls: bool
    addresses: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        options = {name: _MASK if _secret(name) else value
                   for name, value in self.options.items()}
        password = None if self.password is None else _MASK
        return (f"RedisURL(mode={self.mode!r}, tls={self.tls!r}, "
                f"addresses={self.addresses!r}, service={self.service!r}, db={self.db!r}, "
                f"username={self.username!r}, password={password!r}, options={options!r})")


def parse_redis_url(url: str) -> RedisURL:
    """Parse a ``--redis`` URL (the grammar in this module's docstring).

    Sentinel addresses default to port 26379 and cluster nodes to 6379; an IPv6 address is
    written in brackets (``[::1]:26379``). The user name, password and master name are
    percent-decoded (a ``/``, ``?``, ``#`` or ``@`` in a password must be encoded:
    ``%2F``, ``%3F``, ``%23``, ``%40``).

    Args:
        url: the URL.

    Returns:
        Its parts. For ``redis://``, ``rediss://`` and ``unix://`` (one server) only the
        scheme is checked here.

    Raises:
        ValueError: the URL is not valid; the message is one line naming what is wrong
            (never the password), e.g. ``no master name: redis+sentinel://host:26379/
            <master name>/<db>``, ``a Redis Cluster has only database 0``, ``bad address
            's1:x'``, ``unknown scheme 'http': use redis://, redis+sentinel:// or
            redis+cluster://``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url[:5].lower() == "unix:":  # unix:/path, which redis-py takes too
            return RedisURL("single", False)
        raise ValueError(f"not a URL: {_SCHEMES}")
    base, plus, mode = scheme.lower().partition("+")
    if base == "unix" and not plus:
        return RedisURL("single", False)
    if base not in ("redis", "rediss") or (plus and mode not in DEFAULT_PORTS):
        raise ValueError(f"unknown scheme {scheme!r}: {_SCHEMES}")
    tls = base == "rediss"
    if not plus:
        return RedisURL("single", tls)
    kind: Mode = "sentinel" if mode == "sentinel" else "cluster"
    form = _FORMS[kind]
    end = _first(rest, "/?#")
    authority, path, query = rest[:end], rest[end:], ""
    if "#" in path:
        raise ValueError("a '#' in the URL: percent-encode it as %23 (in a password, say)")
    path, _, query = path.partition("?")
    if "@" in path:
        raise ValueError("an '@' after the addresses: percent-encode '/' as %2F in a user "
                         "name or password")

    userinfo, at, hosts = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = (urllib.parse.unquote(secret) or None) if colon else None

    addresses = tuple(_address(item, DEFAULT_PORTS[mode])
                      for item in hosts.split(",") if item)
    if not addresses:
        raise ValueError(f"no address: {form}")

    segments = path[1:].split("/") if path else []
    if segments and not segments[-1]:
        segments.pop()  # a trailing slash
    service = None
    if kind == "sentinel":
        service = urllib.parse.unquote(segments.pop(0)) if segments else ""
        if not service:
            raise ValueError(f"no master name: {form}")
    if len(segments) > 1:
        raise ValueError(f"unexpected path {path!r}: {form}")
    db = _database(segments[0], form) if segments else None

    options = _options(query)
    if "db" in options:
        if db is not None:
            raise ValueError("the database is given twice (in the path and as ?db=)")
        db = _database(options.pop("db"), form)
    if kind == "cluster" and db:
        raise ValueError("a Redis Cluster has only database 0")
    return RedisURL(kind, tls, addresses, service, db or 0, username, password, options)


def safe_url(url: str) -> str:
    """The URL with its passwords masked, for messages and logs; never raises.

    The password of the user information becomes ``***`` (``redis://user:***@host:6379/0``,
    ``redis+sentinel://:***@h1,h2/mymaster``), and so does the value of every query option
    whose name ends in ``password`` (``?sentinel_password=***``). A password holding an
    unencoded ``/`` (which ends the host part early) is masked too.

    Args:
        url: any string given as a Redis URL, valid or not.

    Returns:
        The same string with the secrets replaced, every other character kept.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    else:
        head += sep
        at = rest.rfind("@", 0, _first(rest, "/?#"))
        if at < 0:
            # No user information where it belongs: a password with an unencoded '/', '?'
            # or '#' ended the host part early, unless this '@' is in a query value.
            at = rest.find("@")
            mark = rest.find("?", 0, max(at, 0))
            if mark >= 0:
                piece = rest[mark + 1:at].rpartition("&")[2]
                name, equals, _ = piece.partition("=")
                if equals and _secret(urllib.parse.unquote_plus(name)):
                    at = -1  # in a password option's value: masked with the query
        if at >= 0:
            user, colon, _ = rest[:at].partition(":")
            if colon:
                rest = f"{user}:{_MASK}{rest[at:]}"
    body, question, query = rest.partition("?")
    if question:
        pieces = []
        for piece in query.split("&"):
            name, equals, _ = piece.partition("=")
            if equals and _secret(urllib.parse.unquote_plus(name)):
                piece = f"{name}={_MASK}"
            pieces.append(piece)
        rest = f"{body}?{'&'.join(pieces)}"
    return head + rest


def _secret(option: str) -> bool:
    """Whether a query option holds a password (``password``, ``sentinel_password``…)."""
    return option.lower().endswith("password")


def _first(text: str, characters: str) -> int:
    """The index of the first of ``characters`` in ``text``; its length when none is."""
    found = [i for i in (text.find(c) for c in characters) if i >= 0]
    return min(found, default=len(text))


def _address(item: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port)."""
    if item.startswith("["):
        host, bracket, port = item[1:].partition("]")
        host = urllib.parse.unquote(host)  # a zone: [fe80::1%25eth0]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            bracket = ""
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"bad address {item!r}")
        port = port[1:]
    else:
        host, _, port = item.partition(":")
        if not _HOST.fullmatch(host):
            raise ValueError(f"bad address {item!r}")
    if not port:
        return host, default_port
    if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {item!r}")
    return host, int(port)


def _database(text: str, form: str) -> int:
    if not _DB.fullmatch(text):
        raise ValueError(f"bad database {text!r}: {form}")
    return int(text)


def _options(query: str) -> dict[str, str]:
    """``a=1&b=2`` as a dict, decoded as redis-py decodes its URL options."""
    options: dict[str, str] = {}
    for piece in query.split("&"):
        if not piece:
            continue
        name, equals, value = piece.partition("=")
        name = urllib.parse.unquote_plus(name)
        if not equals or not name:
            # Not echoed: it may be the rest of a password holding an unencoded '&'.
            raise ValueError("bad query: options are name=value, joined by '&'")
        if name in options:
            raise ValueError(f"option {name!r} given twice")
        options[name] = urllib.parse.unquote_plus(value)
    return options
