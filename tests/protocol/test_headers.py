"""tether.protocol.headers: token lists and Sec-WebSocket-Extensions (RFC 9110 §5.6, RFC 6455
§4.3 and §9.1)."""

from __future__ import annotations

import pytest

from tether.exceptions import InvalidMessage
from tether.protocol.headers import (
    ExtensionHeader,
    is_token,
    parse_extensions,
    parse_token_list,
    serialize_extensions,
)


class TestToken:
    """RFC 9110 §5.6.2: token = 1*tchar."""

    @pytest.mark.parametrize("value", ["websocket", "Upgrade", "x-foo.bar_1", "!#$%&'*+-.^_`|~"])
    def test_tokens(self, value: str) -> None:
        assert is_token(value)

    @pytest.mark.parametrize("value", ["", "a b", "a,b", 'a"', "a;b", "a=b", "é", "a/b", "\t"])
    def test_not_tokens(self, value: str) -> None:
        assert not is_token(value)


class TestTokenList:
    """RFC 9110 §5.6.1: #token, with empty elements and optional whitespace."""

    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ([], []),
            ([""], []),
            (["Upgrade"], ["Upgrade"]),
            (["keep-alive, Upgrade"], ["keep-alive", "Upgrade"]),
            (["keep-alive,Upgrade"], ["keep-alive", "Upgrade"]),
            ([" , a ,, b , "], ["a", "b"]),
            (["\ta\t,\tb"], ["a", "b"]),
            (["a", "b, c"], ["a", "b", "c"]),
            (["websocket/13, h2c"], ["websocket/13", "h2c"]),  # Upgrade's protocol/version
        ],
    )
    def test_valid(self, values: list[str], expected: list[str]) -> None:
        assert parse_token_list(values) == expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("a b", "expected ',' at position 2 in subprotocol list, found 'b'"),
            ("a;b", "expected ',' at position 1"),
            ("é", "expected subprotocol at position 0, found 'é'"),
            ("a, /b", "expected subprotocol at position 3"),
            ("a/", "expected subprotocol at position 2, found end of header"),
            ('"quoted"', "expected subprotocol at position 0"),
        ],
    )
    def test_invalid(self, value: str, message: str) -> None:
        with pytest.raises(InvalidMessage, match=message):
            parse_token_list([value], "subprotocol")


class TestExtensions:
    """RFC 6455 §9.1: Sec-WebSocket-Extensions = 1#extension;
    extension = extension-token *( ";" extension-param ); param = token [ "=" (token |
    quoted-string) ]."""

    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ([], []),
            (["permessage-deflate"], [("permessage-deflate", [])]),
            (
                ["permessage-deflate; client_max_window_bits"],
                [("permessage-deflate", [("client_max_window_bits", None)])],
            ),
            (
                ["permessage-deflate;server_max_window_bits=10 ; client_no_context_takeover"],
                [
                    (
                        "permessage-deflate",
                        [("server_max_window_bits", "10"), ("client_no_context_takeover", None)],
                    )
                ],
            ),
            (
                ['permessage-deflate; server_max_window_bits = "10"'],
                [("permessage-deflate", [("server_max_window_bits", "10")])],
            ),
            (['x; a="\\b\\c"'], [("x", [("a", "bc")])]),  # quoted-pair
            (
                ["a, b; x=1", "c"],
                [("a", []), ("b", [("x", "1")]), ("c", [])],
            ),
            ([" , a ,, "], [("a", [])]),
            (["a;b;c"], [("a", [("b", None), ("c", None)])]),
        ],
    )
    def test_valid(self, values: list[str], expected: list[ExtensionHeader]) -> None:
        assert parse_extensions(values) == expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("; a", "expected extension name at position 0"),
            ("a;", "expected extension parameter at position 2, found end of header"),
            ("a; =1", "expected extension parameter at position 3"),
            ("a; b=", "expected extension parameter value"),
            ("a; b=,", "expected extension parameter value at position 5"),
            ('a; b="1 0"', "extension parameter b has an invalid value"),
            ('a; b=""', "extension parameter b has an invalid value"),
            ('a; b="10', "unterminated quoted string"),
            ('a; b="10\\', "unterminated quoted string"),
            ("a b", "expected ',' at position 2 in extension list"),
            ("a; b=1 2", "expected ',' at position 7"),
        ],
    )
    def test_invalid(self, value: str, message: str) -> None:
        with pytest.raises(InvalidMessage, match=message):
            parse_extensions([value])

    def test_serialize(self) -> None:
        extensions: list[ExtensionHeader] = [
            ("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")]),
            ("x-foo", []),
        ]
        text = serialize_extensions(extensions)
        assert text == (
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, x-foo"
        )
        assert parse_extensions([text]) == extensions
        assert serialize_extensions([]) == ""
