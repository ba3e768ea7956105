"""The `[health]` section: values, defaults, and errors that name the file and the key path."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from meshd.config import ConfigError, parse_config
from meshd.config.health import HealthHost, HealthRedirect
from meshd.health.checkspec import CheckSpec, CheckTarget

BASE = """\
[node]
id = 1

[[cluster.keys]]
id = 1
secret_file = "k1.key"

[[group]]
id = 1
name = "lan"
interface = "eth0"
addresses = ["192.0.2.1/24"]
demotion_groups = ["web"]
"""

HOSTS = """
[[health.host]]
name = "web1"
address = "10.1.0.11"

[[health.host]]
name = "web2"
address = "10.1.0.12"
weight = 3
"""

TABLE = """
[[health.table]]
name = "web"
hosts = ["web1", "web2"]
port = 80
check = { method = "http", path = "/health", code = 200 }
"""

FULL = BASE + """
[health]
max_in_flight = 8
rst_burst = 4
rst_window_ms = 500
nflog_group = 12
keep_table_on_stop = true
nft_table = "lb"
""" + HOSTS + """
[[health.host]]
name = "web6"
address = "2001:DB8::6"
disabled = true

[[health.table]]
name = "web"
hosts = ["web1", "web2", "10.1.0.13"]
port = 80
interval_ms = 3000
fast_interval_ms = 700
down_interval_ms = 10000
rise = 3
fall = 2
jitter_percent = 20

[health.table.check]
method = "https"
path = "/health"
host = "www.example.org"
codes = "200-299"
sni = "www.example.org"
verify = true
ca_file = "/etc/ssl/internal-ca.pem"
expiry_warn_days = 14
timeout_ms = 300

[[health.table]]
name = "sorry"
hosts = ["10.1.0.99"]
port = 8080
check = { method = "send", send = "PING\\r\\n", expect = "+PONG*" }
disabled = true

[[health.table]]
name = "v6"
hosts = ["web6"]
port = 80
check = { method = "binary", send_hex = "0d0a", expect_hex = "2b 4f 4b" }

[[health.redirect]]
name = "www"
address = "192.0.2.80"
port = 80
table = "web"
backup_table = "sorry"
mode = "weighted"
sticky_timeout_s = 300
slots = 128
demote = "web"
delete_dead_states = true

[[health.redirect]]
name = "www6"
address = "2001:db8::80"
port = 80
protocol = "udp"
table = "v6"
mode = "source-hash"
disabled = true
"""


def parse(text: str):
    return parse_config(tomllib.loads(text), "meshd.toml", read_secrets=False)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# ----------------------------------------------------------------- valid files


def test_absent_section_means_no_health_checks():
    assert parse(BASE).health is None


def test_full_section():
    h = parse(FULL).health
    assert (h.max_in_flight, h.rst_burst, h.rst_window_ms, h.nflog_group, h.keep_table_on_stop,
            h.nft_table) == (8, 4, 500, 12, True, "lb")
    assert h.hosts == (HealthHost("web1", "10.1.0.11"), HealthHost("web2", "10.1.0.12", 3),
                       HealthHost("web6", "2001:db8::6", 1, True),
                       HealthHost("10.1.0.13", "10.1.0.13"), HealthHost("10.1.0.99", "10.1.0.99"))
    web, sorry, v6 = h.tables
    assert web.hosts == ("web1", "web2", "10.1.0.13")
    assert (web.port, web.interval_ms, web.fast_interval_ms, web.down_interval_ms, web.rise,
            web.fall, web.jitter_percent, web.disabled) == (80, 3000, 700, 10000, 3, 2, 20, False)
    assert web.check == CheckSpec("https", timeout_s=0.3, path="/health", host_header="www.example.org",
                                  codes=(200, 299), sni="www.example.org", verify=True,
                                  ca_file="/etc/ssl/internal-ca.pem", expiry_warn_days=14)
    assert sorry.disabled and sorry.check == CheckSpec("send", send=b"PING\r\n", expect="+PONG*")
    assert v6.check == CheckSpec("binary", send=b"\r\n", expect_bytes=b"+OK")
    www, www6 = h.redirects
    assert www == HealthRedirect("www", "192.0.2.80", 80, "web", "tcp", "sorry", "weighted", 300,
                                 128, "web", True, False)
    assert (www6.address, www6.protocol, www6.mode, www6.disabled) == ("2001:db8::80", "udp",
                                                                       "source-hash", True)
    assert h.table("web") is web and h.host("web6").address == "2001:db8::6"
    assert h.redirect("www6") is www6 and h.redirect("nope") is None


def test_defaults():
    h = parse(BASE + HOSTS + TABLE + '\n[[health.redirect]]\nname = "www"\naddress = "192.0.2.80"\n'
              'port = 80\ntable = "web"\n').health
    assert (h.max_in_flight, h.rst_burst, h.rst_window_ms, h.nflog_group, h.keep_table_on_stop,
            h.nft_table) == (32, 5, 1000, 7112, False, "meshd")
    (t,) = h.tables
    # HAProxy's inter 2 s, rise 2, fall 3; fast half the interval; down the interval
    assert (t.interval_ms, t.fast_interval_ms, t.down_interval_ms, t.rise, t.fall,
            t.jitter_percent, t.disabled) == (2000, 1000, 2000, 2, 3, 10, False)
    assert t.check == CheckSpec("http", timeout_s=1.0, path="/health", codes=(200, 200))
    (r,) = h.redirects
    assert (r.protocol, r.backup_table, r.mode, r.sticky_timeout_s, r.slots, r.demote,
            r.delete_dead_states, r.disabled) == ("tcp", None, "round-robin", None, 60, None,
                                                  False, False)


def test_fast_and_down_intervals_follow_a_given_interval():
    t = parse(BASE + HOSTS + TABLE + "interval_ms = 5000\n").health.tables[0]
    assert (t.fast_interval_ms, t.down_interval_ms) == (2500, 5000)


def test_an_address_in_a_table_refers_to_the_host_declared_with_it():
    h = parse(BASE + HOSTS + TABLE.replace('"web1", "web2"', '"10.1.0.11", "web2"')).health
    assert h.tables[0].hosts == ("web1", "web2") and len(h.hosts) == 2


def test_icmp_targets_have_no_port_and_other_checks_the_table_port():
    h = parse(BASE + HOSTS + TABLE + '\n[[health.table]]\nname = "ping"\nhosts = ["web1"]\n'
              'port = 443\ncheck = { method = "icmp" }\n').health
    web, ping = h.tables
    assert web.target(h.host("web1")) == CheckTarget("10.1.0.11", 80, web.check)
    assert ping.target(h.host("web1")) == CheckTarget("10.1.0.11", 0, CheckSpec("icmp"))


def test_check_methods_and_their_keys():
    cases = {
        '{ method = "tcp", timeout_ms = 200 }': CheckSpec("tcp", timeout_s=0.2),
        '{ method = "tls", sni = "a.example" }': CheckSpec("tls", sni="a.example"),
        '{ method = "http", digest = "SHA256:' + "AB" * 32 + '" }':
            CheckSpec("http", digest="sha256:" + "ab" * 32),
        '{ method = "http", digest = "md5:' + "0f" * 16 + '" }':
            CheckSpec("http", digest="md5:" + "0f" * 16),
        '{ method = "http", codes = "301" }': CheckSpec("http", codes=(301, 301)),
        '{ method = "send", expect = "220 *" }': CheckSpec("send", expect="220 *"),
        '{ method = "script", script = "/usr/local/bin/check-db" }':
            CheckSpec("script", script="/usr/local/bin/check-db"),
        '{ method = "https", verify = true, verify_name = "db.internal" }':
            CheckSpec("https", verify=True, verify_name="db.internal"),
    }
    for check, spec in cases.items():
        text = BASE + HOSTS + TABLE.replace('{ method = "http", path = "/health", code = 200 }', check)
        assert parse(text).health.tables[0].check == spec, check


# ----------------------------------------------------------------- errors


def with_check(check: str) -> str:
    return BASE + HOSTS + TABLE.replace('{ method = "http", path = "/health", code = 200 }', check)


@pytest.mark.parametrize("check, expected", [
    ('{ method = "ftp" }',
     'health.table[0].check.method: expected one of tcp, tls, http, https, send, binary, script, icmp, found "ftp"'),
    ('{ method = "tcp", path = "/" }',
     "health.table[0].check.path: not used by method tcp (only http, https)"),
    ('{ method = "http", sni = "x" }',
     "health.table[0].check.sni: not used by method http (only tls, https)"),
    ('{ method = "http", colour = "x" }',
     ("health.table[0].check.colour: unknown key (known keys: ca_file, code, codes, digest, "
      "expect, expect_hex, expiry_warn_days, host, method, path, script, send, send_hex, sni, "
      "timeout_ms, verify, verify_name)")),
    ('{ method = "send", send = "x" }', "health.table[0].check.expect: missing (method send needs it)"),
    ('{ method = "binary" }', "health.table[0].check.expect_hex: missing (method binary needs it)"),
    ('{ method = "script" }', "health.table[0].check.script: missing (method script needs it)"),
    ('{ method = "script", script = "check-db" }',
     'health.table[0].check.script: expected an absolute path, found "check-db"'),
    ('{ method = "binary", expect_hex = "zz" }',
     'health.table[0].check.expect_hex: expected hexadecimal bytes like "0d0a", found "zz"'),
    ('{ method = "http", code = 200, codes = "200-299" }',
     "health.table[0].check.codes: give either code or codes, not both"),
    ('{ method = "http", codes = "299-200" }',
     'health.table[0].check.codes: expected a status code or range like "200-299", found "299-200"'),
    ('{ method = "http", code = 99 }',
     "health.table[0].check.code: expected an integer from 100 to 599, found 99"),
    ('{ method = "http", digest = "sha1:abcd" }',
     'health.table[0].check.digest: expected "sha256:" and 64 hex digits or "md5:" and 32, found "sha1:abcd"'),
    ('{ method = "http", code = 200, digest = "md5:' + "0" * 32 + '" }',
     "health.table[0].check.digest: give either a digest or an expected code, not both"),
    ('{ method = "http", path = "health" }',
     'health.table[0].check.path: expected a path starting with \'/\', found "health"'),
    ('{ method = "tls", verify_name = "a.example" }',
     "health.table[0].check.verify_name: only with verify = true (nothing is verified otherwise)"),
    ('{ method = "tcp", timeout_ms = 5 }',
     "health.table[0].check.timeout_ms: expected an integer from 10 to 600000, found 5"),
])
def test_check_errors(check, expected):
    assert only_problem(with_check(check)) == f"meshd.toml: {expected}"


def test_one_mistake_gives_one_message_not_a_cascade():
    # The table is refused for its check and the host for its address; the
    # redirect and the table that refer to them do not add "unknown" errors.
    text = BASE + HOSTS.replace('"10.1.0.12"', '"10.1.0.300"') + \
        TABLE.replace('method = "http"', 'method = "htp"') + REDIRECT
    assert problems(text) == [
        'meshd.toml: health.host[1].address: expected an IPv4 or IPv6 address (no prefix length), found "10.1.0.300"',
        'meshd.toml: health.table[0].check.method: expected one of tcp, tls, http, https, send, binary, script, icmp, found "htp"',
    ]


def test_a_table_without_check_is_refused():
    text = BASE + HOSTS + '\n[[health.table]]\nname = "web"\nhosts = ["web1"]\nport = 80\n'
    assert only_problem(text) == ('meshd.toml: health.table[0].check: missing (expected a table like '
                                  '{ method = "http", path = "/", code = 200 })')


def test_host_errors():
    text = BASE + """
[[health.host]]
name = "web1"
address = "10.1.0.11/24"

[[health.host]]
name = "web1"
address = "10.1.0.12"

[[health.host]]
name = "10.1.0.20"
address = "10.1.0.20"

[[health.host]]
name = "web4"
address = "10.1.0.12"
weight = 0
"""
    assert problems(text) == [
        'meshd.toml: health.host[0].address: expected an IPv4 or IPv6 address (no prefix length), found "10.1.0.11/24"',
        'meshd.toml: health.host[1].name: duplicate host name "web1" (also health.host[0])',
        'meshd.toml: health.host[2].name: "10.1.0.20" is an address; give the host a name such as "web1"',
        "meshd.toml: health.host[3].weight: expected an integer from 1 to 1000, found 0",
        "meshd.toml: health.host[3].address: duplicate host address 10.1.0.12 (also health.host[1])",
    ]


def test_table_errors():
    text = BASE + HOSTS + """
[[health.table]]
name = "web"
hosts = ["web1", "web9", "web1"]
port = 0
check = { method = "tcp" }
fall = 0

[[health.table]]
name = "web"
hosts = []
port = 80
check = { method = "tcp" }
jitter_percent = 60
"""
    assert problems(text) == [
        'meshd.toml: health.table[0].hosts[1]: unknown host "web9" (hosts: web1, web2; or give an IP address)',
        'meshd.toml: health.table[0].hosts[2]: host "web1" is listed twice',
        "meshd.toml: health.table[0].port: expected an integer from 1 to 65535, found 0",
        "meshd.toml: health.table[0].fall: expected an integer from 1 to 100, found 0",
        'meshd.toml: health.table[1].name: duplicate table name "web" (also health.table[0])',
        "meshd.toml: health.table[1].hosts: expected at least one host",
        "meshd.toml: health.table[1].jitter_percent: expected an integer from 0 to 50, found 60",
    ]


REDIRECT = '\n[[health.redirect]]\nname = "www"\naddress = "192.0.2.80"\nport = 80\ntable = "web"\n'


@pytest.mark.parametrize("extra, expected", [
    ('backup_table = "web"', 'health.redirect[0].backup_table: "web" is already the main table'),
    ('backup_table = "sorry"', 'health.redirect[0].backup_table: unknown table "sorry" (tables: web)'),
    ('mode = "least-states"',
     'health.redirect[0].mode: expected one of round-robin, random, source-hash, weighted, found "least-states"'),
    ('mode = "source-hash"\nsticky_timeout_s = 60',
     "health.redirect[0].sticky_timeout_s: not with mode source-hash: the hash already keeps a source on one host"),
    ('demote = "wan"', 'health.redirect[0].demote: no group follows counter "wan" (followed: all, lan, web)'),
    ("slots = 1", 'health.redirect[0].slots: 1 slots cannot hold the 2 hosts of table "web"'),
    ('protocol = "sctp"', 'health.redirect[0].protocol: expected one of tcp, udp, found "sctp"'),
    ("port = 65536", "health.redirect[0].port: expected an integer from 1 to 65535, found 65536"),
    ('name = "www.example"',
     "health.redirect[0].name: \"www.example\": a redirect name may not contain '.' (it names nftables sets)"),
])
def test_redirect_errors(extra, expected):
    text = BASE + HOSTS + TABLE + REDIRECT + extra + "\n"
    if "port = 65536" in extra:
        text = text.replace("port = 80\ntable", "table")
    if "name =" in extra:
        text = text.replace('name = "www"\naddress', "address")
    assert only_problem(text) == f"meshd.toml: {expected}"


def test_redirect_table_is_required_and_must_exist():
    text = BASE + HOSTS + TABLE + '\n[[health.redirect]]\nname = "www"\naddress = "192.0.2.80"\nport = 80\n'
    assert only_problem(text) == "meshd.toml: health.redirect[0].table: missing (expected a non-empty string)"
    assert only_problem(BASE + HOSTS + TABLE + REDIRECT.replace('"web"', '"webs"')) == \
        'meshd.toml: health.redirect[0].table: unknown table "webs" (tables: web)'


def test_redirect_and_hosts_must_share_an_address_family():
    text = BASE + HOSTS + '\n[[health.host]]\nname = "web6"\naddress = "2001:db8::6"\n' + \
        TABLE.replace('"web1", "web2"', '"web1", "web6"') + REDIRECT
    assert only_problem(text) == ('meshd.toml: health.redirect[0].table: host "web6" (2001:db8::6) of '
                                  'table "web" is IPv6, the redirect address 192.0.2.80 is IPv4')


def test_sticky_sources_are_ipv4_only():
    text = BASE + '\n[[health.table]]\nname = "v6"\nhosts = ["2001:db8::6"]\nport = 80\n' \
        'check = { method = "tcp" }\n' + REDIRECT.replace('"192.0.2.80"', '"2001:db8::80"') \
        .replace('"web"', '"v6"') + "sticky_timeout_s = 60\n"
    assert only_problem(text) == ("meshd.toml: health.redirect[0].sticky_timeout_s: IPv4 redirects "
                                  "only: nftables cannot keep sticky IPv6 sources here")


def test_two_redirects_cannot_take_the_same_address_and_port():
    text = BASE + HOSTS + TABLE + REDIRECT + REDIRECT.replace('"www"', '"www2"') + \
        REDIRECT.replace('"www"', '"www"') + REDIRECT.replace('"www"', '"dns"') + 'protocol = "udp"\n'
    found = problems(text)
    assert found == [
        "meshd.toml: health.redirect[1].port: tcp 192.0.2.80:80 is already redirected by health.redirect[0]",
        'meshd.toml: health.redirect[2].name: duplicate redirect name "www" (also health.redirect[0])',
    ]


def test_global_errors():
    text = BASE + '[health]\nmax_in_flight = 0\nnft_table = "meshd-lb"\nrst_burst = -1\nhosts = []\n'
    assert problems(text) == [
        ("meshd.toml: health.hosts: unknown key (known keys: check_user, host, keep_table_on_stop, "
         "max_in_flight, nflog_group, nft_table, redirect, relay, relay_user, rst_burst, rst_window_ms, table)"),
        "meshd.toml: health.max_in_flight: expected an integer from 1 to 10000, found 0",
        "meshd.toml: health.rst_burst: expected an integer from 0 to 100000, found -1",
        ("meshd.toml: health.nft_table: expected an nftables name (a letter, then letters, digits or "
         "'_', at most 32), found \"meshd-lb\""),
    ]


def test_check_user_defaults_to_nobody_and_takes_a_name_or_a_uid():
    import pwd
    nobody = pwd.getpwnam("nobody")
    h = parse(BASE + "[health]\n" + HOSTS + TABLE).health
    assert (h.check_user, h.check_uid, h.check_gid) == ("nobody", nobody.pw_uid, nobody.pw_gid)
    h = parse(BASE + f"[health]\ncheck_user = {nobody.pw_uid}\n" + HOSTS + TABLE).health
    assert (h.check_user, h.check_uid, h.check_gid) == (str(nobody.pw_uid), nobody.pw_uid, nobody.pw_gid)


@pytest.mark.parametrize("value, message", [
    ('"no-such-user-meshd"', "health.check_user: no such user: 'no-such-user-meshd' (not in the user database)"),
    ("4242424", "health.check_user: no such user: 4242424 (not in the user database)"),
    ('"root"', "health.check_user: 'root' is root: the check engine must run as an unprivileged user"),
    ("0", "health.check_user: 0 is root: the check engine must run as an unprivileged user"),
    ("-1", "health.check_user: expected a uid (0 – 4294967294), found -1"),
    ('""', "health.check_user: expected a user name or a numeric uid, found \"\""),
    ("true", "health.check_user: expected a user name or a numeric uid, found"),
])
def test_check_user_errors_name_the_key_and_the_value(value, message):
    found = problems(BASE + f"[health]\ncheck_user = {value}\n" + HOSTS + TABLE)
    assert len(found) == 1 and found[0].startswith("meshd.toml: " + message), found


def test_health_errors_come_with_the_other_errors_of_the_file():
    text = BASE.replace("advbase", "x").replace('interface = "eth0"', 'interface = "eth0"\nadvskew = 300') \
        + HOSTS + TABLE.replace("port = 80", "port = 0")
    found = problems(text)
    assert any(p.endswith("group[0].advskew: expected an integer from 0 to 254, found 300") for p in found)
    assert any(p.endswith("health.table[0].port: expected an integer from 1 to 65535, found 0") for p in found)


# ----------------------------------------------------------------- docs


def test_documented_examples_parse():
    """Every TOML example in docs/health.md is a valid configuration."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "health.md"
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        if "[node]" not in block:      # a fragment: complete it with the base file
            block = BASE + block
        c = parse(block)
        assert c.health is not None and c.health.tables
