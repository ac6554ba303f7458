"""tether.hub.redis_url: the --redis URL grammar (one server, Sentinel, Cluster), its one-line
errors, and the masking of passwords in messages. No server is involved."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.hub.redis_url import RedisURL, parse_redis_url, safe_url

from .conftest import UNIT

SENTINEL_FORM = "redis+sentinel://host:26379/<master name>/<db>"
CLUSTER_FORM = "redis+cluster://host:6379/"


class TestSingle:
    """redis-py's own forms: only the scheme is checked; redis-py parses the rest."""

    @pytest.mark.parametrize("url, tls", [
        ("redis://localhost", False),
        ("redis://user:pw@localhost:6379/0", False),
        ("redis://[::1]:6379/2", False),
        ("rediss://:pw@redis.example:6380/1?ssl_cert_reqs=none", True),
        ("REDIS://LOCALHOST", False),
        ("unix:///run/redis/redis.sock?db=1", False),
        ("unix:/run/redis/redis.sock", False),
        # Whatever follows the scheme is redis-py's to judge (it says "Port could not be cast").
        ("redis://localhost:x", False),
    ])
    def test_the_scheme_is_checked_and_nothing_else(self, url: str, tls: bool) -> None:
        assert parse_redis_url(url) == RedisURL("single", tls)


class TestSentinel:
    @pytest.mark.parametrize("url, expected", [
        # issue 15
        ("redis+sentinel://host:26379,host2:26379/mymaster/0",
         RedisURL("sentinel", False, (("host", 26379), ("host2", 26379)), "mymaster", 0)),
        # DESIGN.md §2: default port, IPv6, a database
        ("redis+sentinel://s1,s2:26380,[::1]:26381/mymaster/2",
         RedisURL("sentinel", False, (("s1", 26379), ("s2", 26380), ("::1", 26381)),
                  "mymaster", 2)),
        # TLS, a user, a percent-encoded password, no database (0)
        ("rediss+sentinel://user:p%40ss@s1:26379/mymaster",
         RedisURL("sentinel", True, (("s1", 26379),), "mymaster", 0, "user", "p@ss")),
        # the sentinels' own credentials, trailing slash, upper-case scheme
        ("REDIS+SENTINEL://:pw@127.0.0.1:5000/mymaster/1/"
         "?sentinel_username=watch&sentinel_password=s%26cret%2B+x",
         RedisURL("sentinel", False, (("127.0.0.1", 5000),), "mymaster", 1, None, "pw",
                  {"sentinel_username": "watch", "sentinel_password": "s&cret+ x"})),
        # a bracketed IPv6 without a port; a master name with an encoded slash
        ("redis+sentinel://[2001:db8::7]/team%2Fchat",
         RedisURL("sentinel", False, (("2001:db8::7", 26379),), "team/chat", 0)),
        # the database as redis-py's ?db= option; a user name alone
        ("redis+sentinel://alice@s1/mymaster?db=4&socket_timeout=2",
         RedisURL("sentinel", False, (("s1", 26379),), "mymaster", 4, "alice", None,
                  {"socket_timeout": "2"})),
        # an empty password is no password; empty items between commas are ignored
        ("redis+sentinel://bob:@s1,,s2:1/m",
         RedisURL("sentinel", False, (("s1", 26379), ("s2", 1)), "m", 0, "bob")),
    ])
    def test_forms(self, url: str, expected: RedisURL) -> None:
        assert parse_redis_url(url) == expected

    def test_the_issues_form_reads_as_the_setup_writes_it(self) -> None:
        url = parse_redis_url("redis+sentinel://127.0.0.1:41001,127.0.0.1:41002,"
                              "127.0.0.1:41003/mymaster/0")
        assert url.addresses == (("127.0.0.1", 41001), ("127.0.0.1", 41002),
                                 ("127.0.0.1", 41003))


class TestCluster:
    @pytest.mark.parametrize("url, expected", [
        # issue 15
        ("redis+cluster://host:7000,host:7001/",
         RedisURL("cluster", False, (("host", 7000), ("host", 7001)))),
        # DESIGN.md §2: default port 6379, no slash
        ("redis+cluster://h1", RedisURL("cluster", False, (("h1", 6379),))),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/",
         RedisURL("cluster", False, (("127.0.0.1", 7000), ("127.0.0.1", 7001)))),
        ("rediss+cluster://default:s%3Acr%2Fet@[::1]:7000,[fe80::1%25eth0]/0",
         RedisURL("cluster", True, (("::1", 7000), ("fe80::1%eth0", 6379)), None, 0,
                  "default", "s:cr/et")),
        ("redis+cluster://h1:7000?db=0&read_from_replicas=no",
         RedisURL("cluster", False, (("h1", 7000),), options={"read_from_replicas": "no"})),
    ])
    def test_forms(self, url: str, expected: RedisURL) -> None:
        assert parse_redis_url(url) == expected


@pytest.mark.parametrize("url, message", [
    # DESIGN.md §2 and §8, word for word
    ("redis+sentinel://s1:26379/", f"no master name: {SENTINEL_FORM}"),
    ("redis+sentinel://s1:26379", f"no master name: {SENTINEL_FORM}"),
    ("redis+sentinel://s1//0", f"no master name: {SENTINEL_FORM}"),
    ("redis+cluster://h1/3", "a Redis Cluster has only database 0"),
    ("redis+cluster://h1?db=1", "a Redis Cluster has only database 0"),
    ("redis+sentinel://s1:x/mymaster", "bad address 's1:x'"),
    ("http://example.com/", "unknown scheme 'http': use redis://, redis+sentinel:// or "
                            "redis+cluster://"),
    # the other schemes
    ("redis+sentinal://s1/m", "unknown scheme 'redis+sentinal': use redis://, "
                              "redis+sentinel:// or redis+cluster://"),
    ("unix+sentinel://s1/m", "unknown scheme 'unix+sentinel': use redis://, "
                             "redis+sentinel:// or redis+cluster://"),
    ("sentinel://s1/m", "unknown scheme 'sentinel': use redis://, redis+sentinel:// or "
                        "redis+cluster://"),
    ("localhost:6379", "not a URL: use redis://, redis+sentinel:// or redis+cluster://"),
    ("", "not a URL: use redis://, redis+sentinel:// or redis+cluster://"),
    # addresses
    ("redis+sentinel:///mymaster", f"no address: {SENTINEL_FORM}"),
    ("redis+cluster://", f"no address: {CLUSTER_FORM}"),
    ("redis+cluster://user:pw@/", f"no address: {CLUSTER_FORM}"),
    ("redis+cluster://h1:0", "bad address 'h1:0'"),
    ("redis+cluster://h1:65536", "bad address 'h1:65536'"),
    ("redis+cluster://h1:-1", "bad address 'h1:-1'"),
    ("redis+cluster://h1:7000:7001", "bad address 'h1:7000:7001'"),
    ("redis+cluster://h1:\u0667", "bad address 'h1:\u0667'"),  # an Arabic-Indic 7
    ("redis+cluster://::1:7000", "bad address '::1:7000'"),
    ("redis+cluster://[::1", "bad address '[::1'"),
    ("redis+cluster://[::1]7000", "bad address '[::1]7000'"),
    ("redis+cluster://[::1]:x", "bad address '[::1]:x'"),
    ("redis+cluster://[not-v6]:7000", "bad address '[not-v6]:7000'"),
    ("redis+cluster://:7000", "bad address ':7000'"),
    ("redis+cluster://h 1", "bad address 'h 1'"),
    # path, database, query
    ("redis+sentinel://s1/mymaster/x", f"bad database 'x': {SENTINEL_FORM}"),
    ("redis+sentinel://s1/mymaster/-1", f"bad database '-1': {SENTINEL_FORM}"),
    ("redis+sentinel://s1/mymaster/0/1", f"unexpected path '/mymaster/0/1': {SENTINEL_FORM}"),
    ("redis+cluster://h1/0/0", f"unexpected path '/0/0': {CLUSTER_FORM}"),
    ("redis+sentinel://s1/mymaster?db=x", f"bad database 'x': {SENTINEL_FORM}"),
    ("redis+sentinel://s1/mymaster/1?db=1",
     "the database is given twice (in the path and as ?db=)"),
    ("redis+sentinel://s1/mymaster?a=1&a=2", "option 'a' given twice"),
    ("redis+sentinel://s1/mymaster?flag", "bad query: options are name=value, joined by '&'"),
    ("redis+sentinel://s1/mymaster?=1", "bad query: options are name=value, joined by '&'"),
    # a password with a character that had to be percent-encoded
    ("redis+sentinel://:se/cret@s1/mymaster",
     "an '@' after the addresses: percent-encode '/' as %2F in a user name or password"),
    ("redis+sentinel://:se#cret@s1/mymaster",
     "a '#' in the URL: percent-encode it as %23 (in a password, say)"),
])
def test_errors_are_one_line(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_redis_url(url)
    assert str(caught.value) == message
    assert "\n" not in message


@pytest.mark.parametrize("url", [
    "redis+sentinel://:s3cret@s1:x/m",
    "redis+sentinel://u:s3cret@s1/m/x",
    "redis+cluster://:s3cret@h1/3",
    "redis+sentinel://s1/m?sentinel_password=s3cret&s3cret",
    "redis+sentinel://:se/s3cret@s1/mymaster",
    "redis+sentinel://:s3cret@/m",
])
def test_no_error_tells_the_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_redis_url(url)
    assert "s3cret" not in str(caught.value)


def test_repr_masks_the_passwords_and_the_url_is_frozen() -> None:
    url = parse_redis_url("redis+sentinel://u:s3cret@s1/m?sentinel_password=t0ps3cret&x=1")
    assert (url.password, url.options["sentinel_password"]) == ("s3cret", "t0ps3cret")
    text = repr(url)
    assert "s3cret" not in text
    assert "password='***'" in text and "'sentinel_password': '***'" in text
    assert "'x': '1'" in text and "username='u'" in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        url.db = 1  # type: ignore[misc]


def test_it_imports_without_redis_py() -> None:
    """The module must work without the redis extra: it imports nothing of redis-py."""
    code = ("import sys; sys.modules['redis'] = None; "
            "from tether.hub.redis_url import parse_redis_url; "
            "print(parse_redis_url('redis+cluster://h1').mode)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300 * UNIT)
    assert (done.returncode, done.stdout.strip()) == (0, "cluster"), done.stderr


class TestSafeURL:
    @pytest.mark.parametrize("url, safe", [
        # single: redis-py's forms (as RedisBackend's messages show them today)
        ("redis://user:s3cret@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("redis://:s3cret@localhost/0", "redis://:***@localhost/0"),
        ("rediss://:s%2F3cret@[::1]:6380/1", "rediss://:***@[::1]:6380/1"),
        ("redis://user@localhost/0", "redis://user@localhost/0"),  # a user name is no secret
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("unix://:s3cret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        ("redis://localhost:x/0?password=s3cret", "redis://localhost:x/0?password=***"),
        # sentinel and cluster, with the sentinels' password in the query
        ("redis+sentinel://u:s3cret@s1:26379,[::1]:26380/mymaster/0",
         "redis+sentinel://u:***@s1:26379,[::1]:26380/mymaster/0"),
        ("rediss+sentinel://:s3cret@s1/mymaster?sentinel_username=w&sentinel_password=t0p",
         "rediss+sentinel://:***@s1/mymaster?sentinel_username=w&sentinel_password=***"),
        ("redis+sentinel://s1/mymaster?Sentinel_Password=t0p&db=1",
         "redis+sentinel://s1/mymaster?Sentinel_Password=***&db=1"),
        ("redis+sentinel://s1/m?sentinel%5Fpassword=t0p", "redis+sentinel://s1/m?"
                                                          "sentinel%5Fpassword=***"),
        ("redis+cluster://:s3cret@h1:7000,h2:7001/", "redis+cluster://:***@h1:7000,h2:7001/"),
        # unencoded characters that end the host part early, or '@' in the password
        ("redis://:se/cr?et@h/0", "redis://:***@h/0"),
        ("redis://:se#cret@h/0", "redis://:***@h/0"),
        ("redis://:se?x=cret@h/0", "redis://:***@h/0"),
        ("redis://u:se@cret@h/0", "redis://u:***@h/0"),
        ("redis+sentinel://s1:1/m?sentinel_password=p@ss", "redis+sentinel://s1:1/m?"
                                                           "sentinel_password=***"),
        # nothing to hide, or not a URL at all: unchanged
        ("redis+sentinel://s1/m?socket_timeout=1&x", "redis+sentinel://s1/m?socket_timeout=1&x"),
        ("", ""),
        ("://", "://"),
        ("not a url", "not a url"),
    ])
    def test_masks(self, url: str, safe: str) -> None:
        assert safe_url(url) == safe

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_never_raises(self, text: str) -> None:
        assert isinstance(safe_url(text), str)


# -- properties -------------------------------------------------------------------------------

hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
ports = st.one_of(st.none(), st.integers(1, 65535))
secrets_ = st.one_of(st.none(), st.text(min_size=1, max_size=20))


@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from(["sentinel", "cluster"]), tls=st.booleans(),
       addresses=st.lists(st.tuples(hosts, ports), min_size=1, max_size=4),
       username=secrets_, password=secrets_,
       service=st.text(min_size=1, max_size=12), db=st.integers(0, 15),
       options=st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(
           lambda name: name != "db"), st.text(max_size=12), max_size=3))
def test_every_url_built_by_the_grammar_reads_back(
        mode: str, tls: bool, addresses: list[tuple[str, int | None]], username: str | None,
        password: str | None, service: str, db: int, options: dict[str, str]) -> None:
    """Percent-encoded user names and passwords (any characters), IPv4, bracketed IPv6 and
    names, default ports: parsed back as built; safe_url hides the password."""
    def quote(text: str) -> str:
        return urllib.parse.quote(text, safe="")

    userinfo = ""
    if username is not None or password is not None:
        userinfo = quote(username or "") + (f":{quote(password)}" if password else "") + "@"
    netloc = ",".join(host if port is None else f"{host}:{port}" for host, port in addresses)
    path = f"/{quote(service)}/{db}" if mode == "sentinel" else ("/0" if db % 2 else "/")
    query = urllib.parse.urlencode(options)
    url = (f"redis{'s' if tls else ''}+{mode}://{userinfo}{netloc}{path}"
           + (f"?{query}" if query else ""))

    parsed = parse_redis_url(url)
    default = 26379 if mode == "sentinel" else 6379
    assert parsed == RedisURL(
        mode, tls,  # type: ignore[arg-type]
        tuple((host.strip("[]"), default if port is None else port)
              for host, port in addresses),
        service if mode == "sentinel" else None, db if mode == "sentinel" else 0,
        username or None, password or None, options)
    masked = safe_url(url)
    if password:
        assert masked == url.replace(f":{quote(password)}@", ":***@", 1)
    else:
        assert masked == url


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_anything_else_is_a_value_error(text: str) -> None:
    for url in (text, f"redis+sentinel://{text}", f"redis+cluster://{text}"):
        try:
            parse_redis_url(url)
        except ValueError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(password=st.text(alphabet="abcXYZ019/?#+=-_.~!$", min_size=8, max_size=24),
       template=st.sampled_from([
           "redis://:{}@h/0", "redis://user:{}@h:6379/0", "rediss://:{}@[::1]/0",
           "redis+sentinel://:{}@s1:26379,s2/mymaster/0?sentinel_password={}",
           "redis+cluster://u:{}@h1:7000,h2:7001/"]))
def test_safe_url_hides_even_an_unencoded_password(password: str, template: str) -> None:
    """A password pasted as it is, with '/', '?' or '#' in it (which end the host part
    early): never shown."""
    assert password not in template
    url = template.format(password, urllib.parse.quote(password, safe=""))
    assert password not in safe_url(url)
