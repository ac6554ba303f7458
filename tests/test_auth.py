"""auth.py's pure parts: the same-origin default for a server's own pages, the Origin/Host
comparison behind it, and which principals are made-up names. (The policies in a running
server are tested in tests/asyncio/test_policies.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.auth import OriginPolicy, TokenAuth, is_generated_principal, origin_matches_host
from tether.protocol.http11 import Headers, Request


def upgrade(origin: str | None, *hosts: str) -> Request:
    headers = Headers([("Host", host) for host in hosts])
    if origin is not None:
        headers.add("Origin", origin)
    return Request("GET", "/ws", headers)


class TestOriginMatchesHost:
    @pytest.mark.parametrize(("origin", "host"), [
        ("http://192.168.1.5:8765", "192.168.1.5:8765"),
        ("http://[::1]:8765", "[::1]:8765"),
        ("http://[fe80::1]:8765", "[FE80::1]:8765"),
        ("HTTP://Chat.Example.COM:8765", "chat.example.com:8765"),
        ("https://chat.example.com", "chat.example.com"),
        ("https://chat.example.com", "chat.example.com:443"),
        ("https://chat.example.com:443", "chat.example.com"),
        ("http://chat.example.com", "chat.example.com:80"),
        (" http://host:1 ", "host:1 "),
    ])
    def test_same(self, origin: str, host: str) -> None:
        assert origin_matches_host(origin, host)

    @pytest.mark.parametrize(("origin", "host"), [
        ("http://evil.example:8765", "chat.example.com:8765"),  # another host
        ("http://chat.example.com:8766", "chat.example.com:8765"),  # another port
        ("http://chat.example.com", "chat.example.com:443"),  # http's default is 80
        ("https://chat.example.com", "chat.example.com:80"),
        ("http://chat.example.com.evil:8765", "chat.example.com:8765"),
        ("null", "chat.example.com"),
        ("file://", "chat.example.com"),
        ("ws://chat.example.com:8765", "chat.example.com:8765"),  # not a page's scheme
        ("http://user@chat.example.com:8765", "chat.example.com:8765"),
        ("http://chat.example.com:8765/", "chat.example.com:8765"),
        ("http://chat.example.com:8765", "chat.example.com:8765/x"),
        ("http://::1:8765", "[::1]:8765"),  # an unbracketed IPv6 origin is malformed
        ("http://:8765", ":8765"),
        ("", ""),
    ])
    def test_different_or_malformed(self, origin: str, host: str) -> None:
        assert not origin_matches_host(origin, host)


class TestSameOrigin:
    @pytest.mark.parametrize("bind", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
    def test_loopback_binds_allow_every_loopback_name(self, bind: str) -> None:
        policy = OriginPolicy.same_origin(bind, 8765)
        for origin, host in [("http://127.0.0.1:8765", "127.0.0.1:8765"),
                             ("http://localhost:8765", "localhost:8765"),
                             ("http://[::1]:8765", "[::1]:8765")]:
            assert policy.check(upgrade(origin, host)) is None, origin
        assert policy.check(upgrade(None, "127.0.0.1:8765")) is None  # not a browser

    def test_loopback_does_not_trust_the_host_header(self) -> None:
        """DNS rebinding: evil.example resolves to 127.0.0.1, so its page's Origin and the
        Host header agree; on a loopback bind only the loopback names count."""
        policy = OriginPolicy.same_origin("127.0.0.1", 8765)
        assert not policy.same_host
        request = upgrade("http://evil.example:8765", "evil.example:8765")
        assert policy.check(request) == "origin not allowed"
        assert policy.check(upgrade("http://127.0.0.1:9999", "127.0.0.1:8765")) is not None
        assert policy.check(upgrade("https://127.0.0.1:8765", "127.0.0.1:8765")) is not None

    @pytest.mark.parametrize("bind", ["0.0.0.0", "::", "", None, "192.168.1.5", "chat.lan",
                                      "fe80::1"])
    def test_other_binds_accept_the_host_of_the_request(self, bind: str | None) -> None:
        policy = OriginPolicy.same_origin(bind, 8765)
        assert policy.same_host
        for host in ("192.168.1.5:8765", "chat.lan:8765", "[fe80::1]:8765", "localhost:8765"):
            assert policy.check(upgrade(f"http://{host}", host)) is None, host
        # Cross-origin pages are still refused.
        assert policy.check(upgrade("http://evil.example:8765", "192.168.1.5:8765")) \
            == "origin not allowed"
        assert policy.check(upgrade("http://192.168.1.5:9999", "192.168.1.5:8765")) is not None
        assert policy.check(upgrade("null", "192.168.1.5:8765")) is not None
        # Only one Host header is believed.
        two = upgrade("http://evil.example:8765", "192.168.1.5:8765", "evil.example:8765")
        assert policy.check(two) is not None
        assert policy.check(upgrade("http://evil.example:8765")) is not None  # no Host

    def test_named_bind_allows_its_own_origin_behind_any_host(self) -> None:
        policy = OriginPolicy.same_origin("fe80::1", 8765)
        assert policy.allows("http://[fe80::1]:8765")
        assert not policy.allows("http://fe80::1:8765")

    def test_tls_and_default_ports(self) -> None:
        policy = OriginPolicy.same_origin("localhost", 443, tls=True)
        assert policy.allows("https://localhost")
        assert policy.allows("https://localhost:443")
        assert not policy.allows("http://localhost:443")
        policy = OriginPolicy.same_origin("127.0.0.1", 80)
        assert policy.allows("http://127.0.0.1") and policy.allows("http://[::1]")
        tls = OriginPolicy.same_origin("0.0.0.0", 443, tls=True)
        assert tls.check(upgrade("https://chat.example.com", "chat.example.com")) is None

    @pytest.mark.parametrize("bind", ["127.0.0.1", "::1", "0.0.0.0"])
    def test_allowed_origins_are_added(self, bind: str) -> None:
        host = "[::1]" if bind == "::1" else "127.0.0.1"
        policy = OriginPolicy.same_origin(
            bind, 8765, also=["https://app.example.com", "https://*.example.org"])
        assert policy.check(upgrade(f"http://{host}:8765", f"{host}:8765")) is None
        assert policy.check(upgrade("https://app.example.com", f"{host}:8765")) is None
        assert policy.check(upgrade("https://a.example.org", f"{host}:8765")) is None
        assert policy.check(upgrade("https://evil.example", f"{host}:8765")) is not None


class TestGeneratedPrincipals:
    def test_names_made_up_for_unnamed_tokens(self) -> None:
        auth = TokenAuth(["a", "b"])
        named = TokenAuth({"c": "carol"})
        for token, source in (("a", auth), ("b", auth)):
            assert is_generated_principal(source(upgrade_with_token(token)))
        assert not is_generated_principal(named(upgrade_with_token("c")))

    @pytest.mark.parametrize(("principal", "generated"), [
        ("token-1", True), ("token-12", True), ("token-line-3", True),
        ("carol", False), ("token-", False), ("token-1x", False), ("my token-1", False),
        ("token-line-", False), (None, False), (7, False),
    ])
    def test_pattern(self, principal: object, generated: bool) -> None:
        assert is_generated_principal(principal) is generated

    def test_token_file_lines_without_a_name(self, tmp_path: Path) -> None:
        path = tmp_path / "tokens"
        path.write_text("# comment\nt1 alice\nt2\n")
        auth = TokenAuth.from_file(path)
        assert auth(upgrade_with_token("t1")) == "alice"
        assert is_generated_principal(auth(upgrade_with_token("t2")))


def upgrade_with_token(token: str) -> Request:
    return Request("GET", f"/ws?token={token}", Headers([("Host", "h")]))
