"""The grammar of the handshake's header fields (RFC 6455 §4.3, §9.1; RFC 9110 §5.6).

Hand-written scanners rather than regular expressions: the grammar is small, and errors can say
exactly what was wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from ..exceptions import InvalidMessage

__all__ = [
    "ExtensionParams",
    "ExtensionHeader",
    "parse_token_list",
    "parse_extensions",
    "serialize_extensions",
    "is_token",
]

ExtensionParams = list[tuple[str, "str | None"]]
ExtensionHeader = tuple[str, ExtensionParams]

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                          "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_OWS = " \t"


def is_token(value: str) -> bool:
    """Whether ``value`` is a non-empty RFC 9110 token."""
    return bool(value) and all(c in _TCHAR for c in value)


def _skip_ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    return pos


def _token(text: str, pos: int, what: str) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] in _TCHAR:
        pos += 1
    if pos == start:
        found = repr(text[pos]) if pos < len(text) else "end of header"
        raise InvalidMessage(f"expected {what} at position {pos}, found {found}")
    return text[start:pos], pos


def _quoted_string(text: str, pos: int) -> tuple[str, int]:
    # RFC 9110 §5.6.4: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
    assert text[pos] == '"'
    pos += 1
    chars: list[str] = []
    while pos < len(text):
        c = text[pos]
        if c == '"':
            return "".join(chars), pos + 1
        if c == "\\":
            pos += 1
            if pos == len(text):
                break
            c = text[pos]
        chars.append(c)
        pos += 1
    raise InvalidMessage("unterminated quoted string")


T = TypeVar("T")


def _parse_list(
    values: Iterable[str], parse_item: Callable[[str, int], tuple[T, int]], what: str
) -> list[T]:
    """RFC 9110 §5.6.1: a comma-separated list (``#element``) across one or more header values;
    empty elements are tolerated."""
    result: list[T] = []
    for value in values:
        pos = 0
        while True:
            pos = _skip_ows(value, pos)
            while pos < len(value) and value[pos] == ",":
                pos = _skip_ows(value, pos + 1)
            if pos == len(value):
                break
            item, pos = parse_item(value, pos)
            result.append(item)
            pos = _skip_ows(value, pos)
            if pos < len(value) and value[pos] != ",":
                raise InvalidMessage(
                    f"expected ',' at position {pos} in {what} list, found {value[pos]!r}"
                )
    return result


def parse_token_list(values: Iterable[str], what: str = "token") -> list[str]:
    """Parse comma-separated tokens from one or more header values (Connection, Upgrade,
    Sec-WebSocket-Protocol).

    Raises:
        InvalidMessage: a value is not a list of tokens.
    """

    def token(text: str, pos: int) -> tuple[str, int]:
        item, pos = _token(text, pos, what)
        # Upgrade allows protocol/version (RFC 9110 §7.8); keep it whole.
        if pos < len(text) and text[pos] == "/":
            version, pos = _token(text, pos + 1, what)
            item = f"{item}/{version}"
        return item, pos

    return _parse_list(values, token, what)


def _extension(text: str, pos: int) -> tuple[ExtensionHeader, int]:
    # extension = extension-token *( ";" extension-param )
    # extension-param = token [ "=" (token | quoted-string) ]
    name, pos = _token(text, pos, "extension name")
    params: ExtensionParams = []
    while True:
        pos = _skip_ows(text, pos)
        if pos == len(text) or text[pos] != ";":
            return (name, params), pos
        pos = _skip_ows(text, pos + 1)
        key, pos = _token(text, pos, "extension parameter")
        pos = _skip_ows(text, pos)
        value: str | None = None
        if pos < len(text) and text[pos] == "=":
            pos = _skip_ows(text, pos + 1)
            if pos < len(text) and text[pos] == '"':
                value, pos = _quoted_string(text, pos)
                # RFC 6455 §9.1: a quoted value, once unescaped, MUST be a token.
                if not is_token(value):
                    raise InvalidMessage(f"extension parameter {key} has an invalid value")
            else:
                value, pos = _token(text, pos, "extension parameter value")
        params.append((key, value))


def parse_extensions(values: Iterable[str]) -> list[ExtensionHeader]:
    """Parse Sec-WebSocket-Extensions values into [(name, [(param, value or None)])].

    Raises:
        InvalidMessage: a value breaks the RFC 6455 §9.1 grammar.
    """
    return _parse_list(values, _extension, "extension")


def serialize_extensions(extensions: Sequence[ExtensionHeader]) -> str:
    """The inverse of :func:`parse_extensions` for one header value."""
    parts = []
    for name, params in extensions:
        items = [name] + [k if v is None else f"{k}={v}" for k, v in params]
        parts.append("; ".join(items))
    return ", ".join(parts)
