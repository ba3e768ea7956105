"""`[[health.relay]]`: values, defaults, and errors that name the file and the key path."""

from __future__ import annotations

import tomllib

import pytest

from meshd.config import ConfigError, parse_config
from meshd.config.relay import RelayBackendTls, RelayTcp, RelayTls, protocol_parser
from meshd.reload import plan_reload

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

[[health.host]]
name = "web1"
address = "10.1.0.11"

[[health.table]]
name = "web"
hosts = ["web1", "10.1.0.12"]
port = 8080
check = { method = "tcp" }

[[health.table]]
name = "sorry"
hosts = ["10.1.0.99"]
port = 8080
check = { method = "tcp" }
"""

RELAY = """
[[health.relay]]
name = "www"
address = "192.0.2.1"
port = 443
table = "web"
"""


def parse(text: str):
    return parse_config(tomllib.loads(text), "meshd.toml", read_secrets=False)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def only_problem(extra: str) -> str:
    found = problems(BASE + RELAY + extra)
    assert len(found) == 1, found
    return found[0]


def test_defaults():
    cfg = parse(BASE + RELAY).health
    (relay,) = cfg.relays
    assert (relay.name, relay.address, relay.port, relay.table) == ("www", "192.0.2.1", 443, "web")
    assert relay.protocol == "tcp" and relay.mode == "roundrobin" and relay.backup_table is None
    assert (relay.connect_timeout_ms, relay.idle_timeout_ms, relay.session_timeout_ms) == (5000, 600_000, 0)
    assert relay.tcp == RelayTcp() and relay.tls is None and relay.backend_tls is None
    assert not relay.disabled
    assert relay.listener() == ("192.0.2.1", 443, "tcp")
    # The relay engine runs as the check engine's user unless told otherwise.
    assert (cfg.relay_user, cfg.relay_uid) == (cfg.check_user, cfg.check_uid)


def test_every_key():
    cfg = parse(BASE + """
[health]
relay_user = "daemon"

[[health.relay]]
name = "www"
address = "2001:DB8::1"
port = 443
protocol = "tcp"
table = "web"
backup_table = "sorry"
mode = "source-hash"
connect_timeout_ms = 300
idle_timeout_ms = 1000
session_timeout_ms = 60000
disabled = true
tcp = { backlog = 64, nodelay = false, sndbuf = 65536, rcvbuf = 131072, ip_ttl = 64, ip_minttl = 255 }
tls = { certificate = "/etc/meshd/www.pem", key = "/etc/meshd/www.key", ciphers = "ECDHE+AESGCM", min_version = "TLSv1.3", session_cache = false }
backend_tls = { verify = true, ca = "/etc/meshd/ca.pem", sni = "web.internal" }
""").health
    (relay,) = cfg.relays
    assert relay.address == "2001:db8::1" and relay.backup_table == "sorry"
    assert relay.mode == "source-hash" and relay.disabled
    assert (relay.connect_timeout_ms, relay.idle_timeout_ms, relay.session_timeout_ms) == (300, 1000, 60000)
    assert relay.tcp == RelayTcp(64, False, 65536, 131072, 64, 255)
    assert relay.tls == RelayTls("/etc/meshd/www.pem", "/etc/meshd/www.key", "ECDHE+AESGCM", "TLSv1.3", False)
    assert relay.backend_tls == RelayBackendTls(True, "/etc/meshd/ca.pem", "web.internal")
    assert cfg.relay_user == "daemon" and cfg.relay_uid != cfg.check_uid


@pytest.mark.parametrize(("extra", "expected"), [
    ("colour = 1", "meshd.toml: health.relay[0].colour: unknown key"),
    ('protocol = "udp"', "health.relay[0].protocol: expected one of tcp, http, dns, found \"udp\""),
    ('mode = "weighted"', "health.relay[0].mode: expected one of roundrobin, loadbalance, hash, source-hash"),
    ('mode = "hash"', "health.relay[0].mode: mode hash needs a value the protocol feeds"),
    ('backup_table = "nope"', 'health.relay[0].backup_table: unknown table "nope" (tables: sorry, web)'),
    ('backup_table = "web"', 'health.relay[0].backup_table: "web" is already the main table'),
    ("connect_timeout_ms = 0", "health.relay[0].connect_timeout_ms: expected an integer from 10 to 600000"),
    ("session_timeout_ms = -1", "health.relay[0].session_timeout_ms: expected an integer from 0"),
    ("tcp = { backlog = 0 }", "health.relay[0].tcp.backlog: expected an integer from 1 to 65535"),
    ("tcp = { sndbuf = 100 }", "health.relay[0].tcp.sndbuf: expected 0 (the kernel's default) or at least 1024"),
    ("tcp = { ip_minttl = 256 }", "health.relay[0].tcp.ip_minttl: expected an integer from 1 to 255"),
    ("tcp = { sack = true }", "health.relay[0].tcp.sack: unknown key"),
    ('tls = { key = "/k" }', "health.relay[0].tls.certificate: missing"),
    ('tls = { certificate = "c.pem", key = "/k" }', "health.relay[0].tls.certificate: expected an absolute path"),
    ('tls = { certificate = "/c", key = "/k", ciphers = "NOPE-NOTHING" }',
     "health.relay[0].tls.ciphers: OpenSSL knows no cipher"),
    ('tls = { certificate = "/c", key = "/k", min_version = "SSLv3" }',
     "health.relay[0].tls.min_version: expected one of TLSv1.2, TLSv1.3"),
    ('backend_tls = { ca = "/ca.pem" }', "health.relay[0].backend_tls.ca: only with verify = true"),
    ('backend_tls = { verify = "yes" }', "health.relay[0].backend_tls.verify: expected true or false"),
])
def test_errors_name_the_key(extra, expected):
    assert expected in only_problem(extra)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('address = "192.0.2.1"', 'address = "192.0.2.1/24"', "health.relay[0].address: expected an IPv4 or IPv6"),
    ("port = 443", "port = 70000", "health.relay[0].port: expected an integer from 1 to 65535"),
])
def test_listener_errors(old, new, expected):
    (problem,) = problems(BASE + RELAY.replace(old, new))
    assert expected in problem


def test_table_is_required_and_must_exist():
    text = BASE + RELAY.replace('table = "web"', 'table = "www"')
    (problem,) = problems(text)
    assert 'health.relay[0].table: unknown table "www"' in problem
    (problem,) = problems(BASE + RELAY.replace('table = "web"\n', ""))
    assert "health.relay[0].table: missing" in problem


def test_a_broken_table_is_not_reported_again_by_the_relay():
    text = BASE.replace('port = 8080\ncheck = { method = "tcp" }\n\n[[health.table]]\nname = "sorry"',
                        'port = 0\ncheck = { method = "tcp" }\n\n[[health.table]]\nname = "sorry"') + RELAY
    (problem,) = problems(text)
    assert "health.table[0].port" in problem


def test_two_relays_on_one_listener_or_a_relay_under_a_redirect():
    second = RELAY.replace('name = "www"', 'name = "www2"')
    (problem,) = problems(BASE + RELAY + second)
    assert "health.relay[1].port: 192.0.2.1:443 is already the listener of health.relay[0]" in problem
    duplicate = RELAY.replace("port = 443", "port = 444")
    (problem,) = problems(BASE + RELAY + duplicate)
    assert 'health.relay[1].name: duplicate relay name "www"' in problem
    redirect = '\n[[health.redirect]]\nname = "l3"\naddress = "192.0.2.1"\nport = 443\ntable = "web"\n'
    (problem,) = problems(BASE + redirect + RELAY)
    assert "health.relay[0].port: 192.0.2.1:443 is redirected by redirect l3" in problem


def test_dns_takes_no_tls_and_protocol_tables_match_the_protocol():
    dns = 'protocol = "dns"\ntls = { certificate = "/c", key = "/k" }\n'
    found = problems(BASE + RELAY + dns)
    assert any("health.relay[0].tls: not with protocol dns" in p for p in found), found
    found = problems(BASE + RELAY + "http = {}\n")
    assert any("health.relay[0].http: only with protocol http (this relay is tcp)" in p for p in found)


def test_an_http_hash_action_needs_mode_hash():
    feeding = 'protocol = "http"\nhttp = { request = [ { cookie = "SID", hash = true } ] }\n'
    found = problems(BASE + RELAY + feeding)
    assert any('health.relay[0].mode: the http `hash` action feeds mode hash only; this relay\'s mode '
               'is roundrobin' in p for p in found), found
    (relay,) = parse(BASE + RELAY + feeding + 'mode = "hash"\n').health.relays
    assert relay.mode == "hash"


@pytest.mark.parametrize("protocol", ["http", "dns"])
def test_a_protocol_without_its_module_is_refused_with_a_clear_word(protocol):
    if protocol_parser(protocol) is not None:
        pytest.skip(f"meshd/config/relay_{protocol}.py is here: its own tests cover it")
    (problem,) = problems(BASE + RELAY + f'protocol = "{protocol}"\n')
    assert f"health.relay[0].protocol: protocol {protocol} is not built into this meshd" in problem


def test_relay_user_must_exist_and_not_be_root():
    (problem,) = problems(BASE + '[health]\nrelay_user = "root"\n' + RELAY)
    assert "health.relay_user: 'root' is root: the relay engine must run as an unprivileged user" in problem


def test_reload_names_the_relay_change():
    old = parse(BASE + RELAY)
    new = parse(BASE + RELAY + "idle_timeout_ms = 2000\n")
    plan = plan_reload(old, new)
    assert not plan.refusals
    assert "health: relay www: idle_timeout_ms 600000 -> 2000" in plan.changes
