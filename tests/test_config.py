"""Configuration parsing: defaults, and errors that name the file and the key path."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from meshd.config import (ALL_GROUPS, DEFAULT_MCAST_V4, DEFAULT_MCAST_V6, DEFAULT_PORT,
                          Config, ConfigError, GroupConfig, TrackInterfaceConfig,
                          TrackScriptConfig, load_config)


def write_secret(path: Path, size: int = 32, mode: int = 0o600) -> Path:
    path.write_bytes(bytes((i * 7 + size) % 256 for i in range(size)))
    os.chmod(path, mode)
    return path


MINIMAL = """\
[node]
id = 1

[[cluster.keys]]
id = 1
secret_file = "k1.key"

[[group]]
id = 1
interface = "eth0"
addresses = ["192.0.2.1/24"]
"""

FULL = """\
[node]
id = 7
name = "fw1"
state_dir = "/var/lib/meshd-test"
control_socket = "/run/meshd-test.sock"

[cluster]
port = 7200
multicast_v4 = "224.0.0.19"
multicast_v6 = "ff02::13"
send_key = 1

[[cluster.keys]]
id = 1
secret_file = "k1.key"

[[cluster.keys]]
id = 2
secret_file = "k2.key"

[[group]]
id = 10
name = "lan"
interface = "eth1"
addresses = ["192.0.2.1/24", "2001:DB8:0:1::1/64"]
advbase_ms = 200
advskew = 100
preempt = false
sync_set = "fw"
demotion_groups = ["uplinks"]
check_ttl = false
advert_copies = 2
garp_count = 5
garp_interval_ms = 50
notify = ["/usr/local/bin/meshd-notify"]
notify_timeout_ms = 1000

[[group]]
id = 20
name = "wan"
interface = "eth0"
addresses = ["198.51.100.1"]
peers = ["198.51.100.3"]
sync_set = "fw"

[[track_interface]]
interface = "eth2"

[[track_interface]]
interface = "eth3"
weight = 20
demotion_group = "uplinks"

[[track_script]]
name = "upstream"
command = ["/usr/bin/ping", "-c1", "192.0.2.254"]

[[track_script]]
name = "dns"
command = ["/usr/local/bin/check-dns"]
interval_ms = 5000
timeout_ms = 500
rise = 3
fall = 1
weight = 100
demotion_group = "fw"
"""


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    write_secret(tmp_path / "k1.key")
    write_secret(tmp_path / "k2.key", 64)
    return tmp_path


def load(confdir: Path, text: str, name: str = "meshd.toml") -> Config:
    path = confdir / name
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def problems(confdir: Path, text: str, name: str = "meshd.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(confdir, text, name)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only_problem(confdir: Path, text: str) -> str:
    found = problems(confdir, text)
    assert len(found) == 1, found
    return found[0]


# ----------------------------------------------------------------- valid files


def test_minimal_config_defaults(confdir):
    c = load(confdir, MINIMAL)
    assert c.path == str(confdir / "meshd.toml")
    assert c.node.id == 1
    assert c.node.name == os.uname().nodename.split(".")[0]
    assert c.node.state_dir == "/var/lib/meshd"
    assert c.node.control_socket == "/run/meshd/meshd.sock"
    assert c.cluster.port == DEFAULT_PORT == 7112
    assert c.cluster.multicast_v4 == DEFAULT_MCAST_V4 == "224.0.0.18"
    assert c.cluster.multicast_v6 == DEFAULT_MCAST_V6 == "ff02::12"
    assert c.cluster.send_key == 1
    # secret_file is relative to the configuration file's directory
    assert c.cluster.keys[0].secret_file == os.path.join(str(confdir.resolve()), "k1.key")
    assert c.secrets == {1: (confdir / "k1.key").read_bytes()}
    (g,) = c.groups
    assert g == GroupConfig(1, "g1", "eth0", ("192.0.2.1/24",))
    assert (g.advbase_ms, g.advskew, g.preempt, g.sync_set, g.demotion_groups, g.peers,
            g.check_ttl, g.advert_copies, g.garp_count, g.garp_interval_ms, g.notify,
            g.notify_timeout_ms) == (1000, 0, True, None, (), (), True, 3, 3, 100, (), 5000)
    assert g.family == 4
    assert g.counters() == (ALL_GROUPS, "g1")
    assert c.track_interfaces == () and c.track_scripts == ()
    assert c.demotion_names() == {"all", "g1"}


def test_full_config(confdir):
    c = load(confdir, FULL)
    assert (c.node.id, c.node.name, c.node.state_dir, c.node.control_socket) == \
        (7, "fw1", "/var/lib/meshd-test", "/run/meshd-test.sock")
    assert (c.cluster.port, c.cluster.multicast_v4, c.cluster.multicast_v6, c.cluster.send_key) == \
        (7200, "224.0.0.19", "ff02::13", 1)
    assert [k.id for k in c.cluster.keys] == [1, 2]
    assert set(c.secrets) == {1, 2} and len(c.secrets[2]) == 64
    lan, wan = c.groups
    assert lan == GroupConfig(
        10, "lan", "eth1", ("192.0.2.1/24", "2001:db8:0:1::1/64"), advbase_ms=200, advskew=100,
        preempt=False, sync_set="fw", demotion_groups=("uplinks",), peers=(), check_ttl=False,
        advert_copies=2, garp_count=5, garp_interval_ms=50,
        notify=("/usr/local/bin/meshd-notify",), notify_timeout_ms=1000)
    # An address without a prefix length is a host address.
    assert wan.addresses == ("198.51.100.1/32",)
    assert wan.peers == ("198.51.100.3",)
    assert lan.counters() == ("all", "lan", "uplinks", "fw")
    assert wan.counters() == ("all", "wan", "fw")
    assert c.track_interfaces == (TrackInterfaceConfig("eth2", 50, "all"),
                                  TrackInterfaceConfig("eth3", 20, "uplinks"))
    assert c.track_scripts == (
        TrackScriptConfig("upstream", ("/usr/bin/ping", "-c1", "192.0.2.254"), 2000, 1000, 2, 2, 50, "all"),
        TrackScriptConfig("dns", ("/usr/local/bin/check-dns",), 5000, 500, 3, 1, 100, "fw"))
    assert c.demotion_names() == {"all", "lan", "wan", "uplinks", "fw"}
    assert c.group("wan") is wan and c.group("nope") is None


def test_send_key_is_required_with_two_keys(confdir):
    """Guessing would let a node sign with a key its peers do not hold yet."""
    msg = only_problem(confdir, MINIMAL + '\n[[cluster.keys]]\nid = 2\nsecret_file = "k2.key"\n')
    assert msg.endswith("cluster.send_key: required when two keys are listed (rotation): "
                        "name the key id this node signs with")


def test_read_secrets_false_skips_the_files(tmp_path):
    path = tmp_path / "meshd.toml"
    path.write_text(MINIMAL)          # k1.key does not exist
    c = load_config(path, read_secrets=False)
    assert c.secrets == {}


# ----------------------------------------------------------------- errors


def test_error_format_names_file_and_key_path(confdir):
    msg = only_problem(confdir, MINIMAL + "advbase_ms = 5\n")
    assert msg == f"{confdir / 'meshd.toml'}: group[0].advbase_ms: expected an integer from 10 to 60000, found 5"


def test_relative_path_is_reported_as_given(confdir, monkeypatch):
    monkeypatch.chdir(confdir)
    (confdir / "meshd.toml").write_text(MINIMAL + "advbase_ms = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config("meshd.toml")
    assert info.value.problems == [
        "meshd.toml: group[0].advbase_ms: expected an integer from 10 to 60000, found 5"]


def test_unknown_top_level_key(confdir):
    msg = only_problem(confdir, "colour = 1\n" + MINIMAL)
    assert msg.endswith("meshd.toml: colour: unknown key (known keys: cluster, group, health, metrics, node, "
                        "sync, track_interface, track_script)")


def test_unknown_nested_keys(confdir):
    text = MINIMAL.replace("id = 1\n\n[[cluster", "id = 1\nnmae = \"fw1\"\n\n[[cluster", 1)
    text += "advskw = 10\n[[track_script]]\nname = \"x\"\ncommand = [\"true\"]\nweigth = 5\n"
    text = text.replace('secret_file = "k1.key"', 'secret_file = "k1.key"\nsecret = "x"')
    found = problems(confdir, text)
    assert len(found) == 4, found
    assert any(": node.nmae: unknown key (known keys: address_lifetime_s, control_socket, id, name, run_dir, script_group, script_user, state_dir, wire_user)" in p
               for p in found)
    assert any(": cluster.keys[0].secret: unknown key (known keys: id, secret_file)" in p for p in found)
    assert any(": group[0].advskw: unknown key (known keys: " in p and "advskew" in p for p in found)
    assert any(": track_script[0].weigth: unknown key" in p for p in found)


@pytest.mark.parametrize("line, path, expected", [
    ('advbase_ms = "fast"', "group[0].advbase_ms", 'expected an integer from 10 to 60000, found "fast"'),
    ("advbase_ms = 1.5", "group[0].advbase_ms", "expected an integer from 10 to 60000, found 1.5"),
    ("advbase_ms = true", "group[0].advbase_ms", "expected an integer from 10 to 60000, found true"),
    ('preempt = "yes"', "group[0].preempt", 'expected true or false, found "yes"'),
    ('peers = "192.0.2.2"', "group[0].peers", 'expected a list of strings, found "192.0.2.2"'),
    ("notify = [1]", "group[0].notify", "expected a list of strings, found a list"),
    ('sync_set = ""', "group[0].sync_set", 'expected a non-empty string, found ""'),
    ("interface = 3", None, None),   # replaces the existing key: checked below
])
def test_wrong_type(confdir, line, path, expected):
    if path is None:
        msg = only_problem(confdir, MINIMAL.replace('interface = "eth0"', line))
        assert msg.endswith(": group[0].interface: expected a non-empty string, found 3")
        return
    msg = only_problem(confdir, MINIMAL + line + "\n")
    assert msg == f"{confdir / 'meshd.toml'}: {path}: {expected}"


def test_wrong_type_for_a_table(confdir):
    # node is not a table: reported, and node.id is then missing
    found = problems(confdir, MINIMAL.replace("[node]\nid = 1\n", "node = 5\n"))
    assert any(p.endswith(": node: expected a table, found 5") for p in found), found


@pytest.mark.parametrize("line, path, expected", [
    ("advbase_ms = 5", "group[0].advbase_ms", "expected an integer from 10 to 60000, found 5"),
    ("advbase_ms = 60001", "group[0].advbase_ms", "expected an integer from 10 to 60000, found 60001"),
    ("advskew = 255", "group[0].advskew", "expected an integer from 0 to 254, found 255"),
    ("advskew = -1", "group[0].advskew", "expected an integer from 0 to 254, found -1"),
    ("advert_copies = 0", "group[0].advert_copies", "expected an integer from 1 to 5, found 0"),
    ("garp_count = 101", "group[0].garp_count", "expected an integer from 0 to 100, found 101"),
    ("notify_timeout_ms = 9", "group[0].notify_timeout_ms",
     "expected an integer from 10 to 600000, found 9"),
])
def test_out_of_range(confdir, line, path, expected):
    assert only_problem(confdir, MINIMAL + line + "\n") == \
        f"{confdir / 'meshd.toml'}: {path}: {expected}"


def test_out_of_range_elsewhere(confdir):
    found = problems(confdir, MINIMAL.replace("id = 1\n\n[[cluster", "id = 0\n\n[[cluster", 1)
                     .replace("[[cluster.keys]]", "[cluster]\nport = 70000\n\n[[cluster.keys]]")
                     + "[[track_script]]\nname = \"s\"\ncommand = [\"true\"]\nrise = 0\n")
    assert sorted(p.split(": ", 1)[1] for p in found) == sorted([
        "node.id: expected an integer from 1 to 4294967295, found 0",
        "cluster.port: expected an integer from 1 to 65535, found 70000",
        "track_script[0].rise: expected an integer from 1 to 100, found 0",
    ])


GROUP2 = """
[[group]]
id = {id}
name = "{name}"
interface = "eth1"
addresses = [{addrs}]
"""


def test_duplicate_group_id(confdir):
    msg = only_problem(confdir, MINIMAL + GROUP2.format(id=1, name="other", addrs='"192.0.2.9/24"'))
    assert msg.endswith(": group[1].id: duplicate group id 1 (also group[0])")


def test_duplicate_group_name(confdir):
    text = MINIMAL.replace('id = 1\ninterface', 'id = 1\nname = "lan"\ninterface')
    msg = only_problem(confdir, text + GROUP2.format(id=2, name="lan", addrs='"192.0.2.9/24"'))
    assert msg.endswith(': group[1].name: duplicate group name "lan" (also group[0])')


def test_duplicate_address_across_groups(confdir):
    # Same address, other prefix length and notation: still the same address.
    msg = only_problem(confdir, MINIMAL + GROUP2.format(id=2, name="b", addrs='"192.0.2.1/32"'))
    assert msg.endswith(": group[1].addresses[0]: duplicate address 192.0.2.1 (also group[0].addresses[0])")
    text = MINIMAL.replace('"192.0.2.1/24"', '"2001:db8::1/64"')
    msg = only_problem(confdir, text + GROUP2.format(id=2, name="b", addrs='"2001:DB8:0::1/128"'))
    assert msg.endswith(": group[1].addresses[0]: duplicate address 2001:db8::1 (also group[0].addresses[0])")


@pytest.mark.parametrize("addr", ["192.0.2.300/24", "192.0.2.1/33", "eth0", "2001:db8::g/64", ""])
def test_bad_address(confdir, addr):
    msg = only_problem(confdir, MINIMAL.replace('"192.0.2.1/24"', f'"192.0.2.1/24", "{addr}"'))
    assert msg.endswith(": group[0].addresses[1]: expected an address with prefix length like "
                        f'192.0.2.1/24, found "{addr}"')


def test_empty_address_list(confdir):
    msg = only_problem(confdir, MINIMAL.replace('["192.0.2.1/24"]', "[]"))
    assert msg.endswith(": group[0].addresses: expected at least one virtual address")


def test_bad_peer(confdir):
    msg = only_problem(confdir, MINIMAL + 'peers = ["fw2.example"]\n')
    assert msg.endswith(': group[0].peers[0]: expected an IP address, found "fw2.example"')
    msg = only_problem(confdir, MINIMAL + 'peers = ["2001:db8::2"]\n')
    assert msg.endswith(": group[0].peers: peers must use an address family of the group's addresses")


def test_missing_keys(confdir):
    found = problems(confdir, "[node]\nname = \"fw1\"\n[cluster]\n[[group]]\nid = 3\n")
    rest = sorted(p.split(": ", 1)[1] for p in found)
    assert rest == sorted([
        "node.id: missing (expected an integer from 1 to 4294967295)",
        "cluster.keys: missing (expected a list)",
        "group[0].interface: missing (expected a non-empty string)",
        "group[0].addresses: missing (expected a list of strings)",
    ])


def test_no_groups(confdir):
    text = MINIMAL.split("[[group]]")[0]
    msg = only_problem(confdir, text)
    assert msg.endswith(": group: expected at least one [[group]] table")


def test_secret_too_short(confdir):
    write_secret(confdir / "k1.key", 31)
    msg = only_problem(confdir, MINIMAL)
    assert msg == (f"{confdir / 'meshd.toml'}: cluster.keys[0].secret_file: "
                   f"{confdir.resolve() / 'k1.key'} holds 31 bytes, expected at least 32 random bytes")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_secret_readable_by_others(confdir, mode):
    write_secret(confdir / "k1.key", 32, mode)
    msg = only_problem(confdir, MINIMAL)
    assert msg == (f"{confdir / 'meshd.toml'}: cluster.keys[0].secret_file: "
                   f"{confdir.resolve() / 'k1.key'} is readable by group or others "
                   f"(mode {mode:o}); chmod 600 it")


def test_secret_missing(confdir):
    msg = only_problem(confdir, MINIMAL.replace("k1.key", "nope.key"))
    assert ": cluster.keys[0].secret_file: cannot read " in msg
    assert msg.endswith("nope.key: No such file or directory")


def test_send_key_not_in_keys(confdir):
    msg = only_problem(confdir, MINIMAL.replace("[[cluster.keys]]", "[cluster]\nsend_key = 2\n\n[[cluster.keys]]"))
    assert msg.endswith(": cluster.send_key: key id 2 is not in cluster.keys")


def test_duplicate_key_id_and_too_many_keys(confdir):
    extra = '[[cluster.keys]]\nid = 1\nsecret_file = "k2.key"\n'
    text = MINIMAL.replace("[[group]]", extra + "\n[[group]]")
    assert only_problem(confdir, text).endswith(": cluster.keys[1].id: duplicate key id 1")
    three = ''.join(f'[[cluster.keys]]\nid = {i}\nsecret_file = "k2.key"\n' for i in (2, 3))
    text = MINIMAL.replace("[[group]]", three + "\n[[group]]")
    assert only_problem(confdir, text).endswith(
        ": cluster.keys: expected one or two keys (two while rotating), found 3")


@pytest.mark.parametrize("key, value, version", [
    ("multicast_v4", "192.0.2.1", 4),       # not multicast
    ("multicast_v4", "ff02::12", 4),        # wrong family
    ("multicast_v4", "banana", 4),
    ("multicast_v6", "224.0.0.18", 6),
    ("multicast_v6", "2001:db8::1", 6),
])
def test_bad_multicast_address(confdir, key, value, version):
    text = MINIMAL.replace("[[cluster.keys]]", f'[cluster]\n{key} = "{value}"\n\n[[cluster.keys]]')
    msg = only_problem(confdir, text)
    assert msg.endswith(f': cluster.{key}: expected an IPv{version} multicast address, found "{value}"')


def test_toml_syntax_error(confdir):
    found = problems(confdir, "[node\nid = 1\n")
    assert len(found) == 1
    assert found[0].startswith(f"{confdir / 'meshd.toml'}: TOML syntax: ")
    assert "line 1" in found[0]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.problems == [f"{tmp_path / 'absent.toml'}: cannot read: No such file or directory"]


def test_not_utf8(tmp_path):
    (tmp_path / "meshd.toml").write_bytes(b"[node]\nname = \"\xff\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "meshd.toml")
    assert "not UTF-8 text" in info.value.problems[0]


def test_sync_set_names(confdir):
    text = MINIMAL.replace('id = 1\ninterface', 'id = 1\nname = "lan"\ninterface')
    assert only_problem(confdir, text + 'sync_set = "lan"\n').endswith(
        ': group[0].sync_set: "lan" is also a group name; use a distinct name')
    assert only_problem(confdir, MINIMAL + 'sync_set = "all"\n').endswith(
        ': group[0].sync_set: "all" is reserved')


def test_bad_names(confdir):
    found = problems(confdir, MINIMAL + 'name = "my group"\ndemotion_groups = ["ok", "not ok"]\n')
    rest = sorted(p.split(": ", 1)[1] for p in found)
    assert rest == sorted([
        "group[0].name: expected a name of letters, digits, '_.-' (at most 32), found \"my group\"",
        'group[0].demotion_groups[1]: expected a name, found "not ok"',
    ])


def test_track_script_errors(confdir):
    text = MINIMAL + textwrap.dedent("""
        [[track_script]]
        command = ["a"]
        [[track_script]]
        command = ["b"]
        [[track_script]]
        name = "x"
        command = []
        [[track_script]]
        name = "x"
        command = ["c"]
        """)
    rest = sorted(p.split(": ", 1)[1] for p in problems(confdir, text))
    assert rest == sorted([
        "track_script[0].name: missing (expected a non-empty string)",
        "track_script[1].name: missing (expected a non-empty string)",
        "track_script[2].command: expected a non-empty list: the program and its arguments",
        'track_script[3].name: duplicate track script name "x"',
    ])


def test_several_errors_reported_at_once(confdir):
    write_secret(confdir / "k1.key", 8)
    text = "colour = 1\n" + MINIMAL + 'advbase_ms = 5\nadvskew = 255\npreempt = "yes"\n' + \
        GROUP2.format(id=1, name="g1", addrs='"192.0.2.1/24", "bogus"')
    found = problems(confdir, text)
    rest = [p.split(": ", 1)[1] for p in found]
    assert all(p.startswith(f"{confdir / 'meshd.toml'}: ") for p in found)
    for expected in [
        "colour: unknown key",
        "group[0].advbase_ms: expected an integer from 10 to 60000, found 5",
        "group[0].advskew: expected an integer from 0 to 254, found 255",
        "group[0].preempt: expected true or false, found \"yes\"",
        "group[1].id: duplicate group id 1 (also group[0])",
        "group[1].name: duplicate group name \"g1\" (also group[0])",
        "group[1].addresses[0]: duplicate address 192.0.2.1 (also group[0].addresses[0])",
        "group[1].addresses[1]: expected an address with prefix length",
        "cluster.keys[0].secret_file: ",
    ]:
        assert any(p.startswith(expected) for p in rest), (expected, rest)
    assert len(found) == 9


def test_documented_examples_parse():
    """The TOML examples in docs/configuration.md are valid configurations."""
    import re
    import tomllib

    from meshd.config import parse_config

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        if "[node]" not in block:  # a fragment (one section): complete it with the minimal file
            block = MINIMAL + block
        c = parse_config(tomllib.loads(block), "meshd.toml", read_secrets=False)
        assert c.groups


def test_group_named_all_is_refused(confdir):
    msg = only_problem(confdir, MINIMAL + 'name = "all"\n')
    assert msg.endswith('group[0].name: "all" is reserved for the counter every group follows')


def test_track_counter_no_group_follows_is_refused(confdir):
    text = MINIMAL + '\n[[track_interface]]\ninterface = "eth1"\ndemotion_group = "LAN"\n'
    msg = only_problem(confdir, text)
    assert 'track_interface[0].demotion_group: no group follows counter "LAN"' in msg


def test_track_counter_followed_by_a_group_is_accepted(confdir):
    text = MINIMAL + 'demotion_groups = ["uplink"]\n\n[[track_script]]\nname = "bgp"\ncommand = ["/bin/true"]\ndemotion_group = "uplink"\n'
    c = load(confdir, text)
    assert c.track_scripts[0].demotion_group == "uplink"


SYNC = '''
[sync]
interface = "sync0"
peers = [{ id = 2, address = "203.0.113.2" }, { id = 3, address = "203.0.113.3" }]
commit = "continuous"
[sync.filter]
ignore_protocols = ["udp"]
ignore_addresses = ["10.0.0.0/8"]
ignore_tcp_states = ["time_wait"]
only_assured = true
'''


def test_sync_section_absent_means_no_replication(confdir):
    assert load(confdir, MINIMAL).sync is None


def test_sync_section_parses_with_defaults(confdir):
    c = load(confdir, MINIMAL + SYNC)
    s = c.sync
    assert [p.id for p in s.peers] == [2, 3] and s.peers[0].address == "203.0.113.2"
    assert (s.port, s.max_datagram, s.commit, s.commit_scope) == (7113, 1400, "continuous", "all")
    assert s.event_buffer_bytes == 32 * 1024 * 1024
    assert s.filter.ignore_protocols == (17,) and s.filter.ignore_tcp_states == ("TIME_WAIT",)
    assert s.filter.only_assured


def test_sync_errors_name_the_key(confdir):
    text = MINIMAL + '''
[sync]
peers = [{ id = 1, address = "203.0.113.2" }, { id = 2, address = "nope" }]
commit = "sometimes"
[sync.filter]
ignore_protocols = ["tcp", "ipx"]
ignore_tcp_states = ["HALF_OPEN"]
'''
    found = problems(confdir, text)
    assert any(p.endswith("sync.peers[0].id: 1 is this node's own id") for p in found)
    assert any(p.endswith('sync.peers[1].address: expected an IP address, found "nope"') for p in found)
    assert any(p.endswith('sync.commit: expected one of takeover, continuous, found "sometimes"') for p in found)
    assert any('sync.filter.ignore_protocols[1]: expected one of' in p for p in found)
    assert any('sync.filter.ignore_tcp_states[0]: expected one of' in p for p in found)


def test_sync_bulk_deadline_defaults_and_bounds(confdir):
    s = load(confdir, MINIMAL + SYNC).sync
    assert (s.bulk_timeout_ms, s.bulk_attempts) == (10000, 3)
    s = load(confdir, MINIMAL + SYNC.replace("[sync]", "[sync]\nbulk_timeout_ms = 60000\nbulk_attempts = 1")).sync
    assert (s.bulk_timeout_ms, s.bulk_attempts) == (60000, 1)
    found = problems(confdir, MINIMAL + SYNC.replace("[sync]", "[sync]\nbulk_timeout_ms = 500\nbulk_attempts = 0"))
    assert any("sync.bulk_timeout_ms: expected" in p and "1000" in p for p in found), found
    assert any("sync.bulk_attempts: expected" in p for p in found), found


SYNC_MIN = '[sync]\npeers = [{ id = 2, address = "203.0.113.2" }]\n[sync.filter]\n'


@pytest.mark.parametrize("value,on,helpers", [(None, True, ()), ("true", True, ()), ("false", False, ()),
                                              ('["ftp", "sip", "ftp"]', True, ("ftp", "sip"))])
def test_sync_filter_expectations(confdir, value, on, helpers):
    f = load(confdir, MINIMAL + SYNC_MIN + (f"expectations = {value}\n" if value else "")).sync.filter
    assert (f.expectations, f.expectation_helpers) == (on, helpers)


@pytest.mark.parametrize("value,problem", [
    ("[]", 'sync.filter.expectations: expected true, false or a non-empty list of helper names'),
    ('"ftp"', 'sync.filter.expectations: expected true, false or a non-empty list of helper names'),
    ('["ftp", "far too long a name"]', 'sync.filter.expectations[1]: expected a conntrack helper\'s name'),
])
def test_sync_filter_expectations_errors_name_the_key(confdir, value, problem):
    assert any(problem in p for p in problems(confdir, MINIMAL + SYNC_MIN + f"expectations = {value}\n"))


def test_sync_disabled_explicitly(confdir):
    assert load(confdir, MINIMAL + "[sync]\nenabled = false\n").sync is None


def test_sync_peer_address_is_required_even_with_multicast(confdir):
    text = MINIMAL + '[sync]\ninterface = "sync0"\nmulticast_group = "239.255.71.13"\npeers = [{ id = 2 }]\n'
    assert any(p.endswith("sync.peers[0].address: missing (expected a non-empty string)")
               for p in problems(confdir, text))


def test_node_defaults_follow_run_dir(confdir):
    c = load(confdir, MINIMAL.replace("id = 1\n\n[[cluster", 'id = 1\nrun_dir = "/run/fw"\n\n[[cluster', 1))
    assert c.node.run_dir == "/run/fw"
    assert c.node.control_socket == "/run/fw/meshd.sock"
    assert c.node.address_lifetime_s == 1


@pytest.mark.parametrize("line, path, expected", [
    ('state_dir = "var/lib/meshd"', "node.state_dir", 'expected an absolute path, found "var/lib/meshd"'),
    ('run_dir = "run"', "node.run_dir", 'expected an absolute path, found "run"'),
    ('control_socket = "meshd.sock"', "node.control_socket", "expected an absolute path"),
    ('control_socket = "/' + "s" * 107 + '"', "node.control_socket",
     "is 108 bytes long; a Unix socket path holds at most 107"),
    ("address_lifetime_s = -1", "node.address_lifetime_s", "expected an integer from 0 to 3600"),
])
def test_node_paths_and_lifetime(confdir, line, path, expected):
    found = problems(confdir, MINIMAL.replace("id = 1\n\n[[cluster", f"id = 1\n{line}\n\n[[cluster", 1))
    assert any(f": {path}: " in p and expected in p for p in found), found


# ----------------------------------------------------------------- [sync] discover


def test_sync_discover_without_peers(confdir):
    c = load(confdir, MINIMAL + '[sync]\ninterface = "sync0"\ndiscover = true\n')
    assert c.sync.discover is True and c.sync.peers == ()


def test_sync_discover_with_peers_keeps_them(confdir):
    c = load(confdir, MINIMAL + '[sync]\ninterface = "sync0"\ndiscover = true\n'
             'peers = [{ id = 2, address = "203.0.113.2" }]\n')
    assert c.sync.discover is True and [(p.id, p.address) for p in c.sync.peers] == [(2, "203.0.113.2")]


def test_sync_discover_defaults_to_false(confdir):
    assert load(confdir, MINIMAL + SYNC).sync.discover is False


def test_sync_discover_needs_the_sync_interface(confdir):
    found = only_problem(confdir, MINIMAL + "[sync]\ndiscover = true\n")
    assert found.endswith("sync.interface: required with sync.discover (the link to announce and listen on)"), found


def test_sync_discover_must_be_a_bool(confdir):
    found = only_problem(confdir, MINIMAL + '[sync]\ninterface = "sync0"\ndiscover = "yes"\n'
                         'peers = [{ id = 2, address = "203.0.113.2" }]\n')
    assert "sync.discover: expected true or false" in found, found


def test_sync_without_peers_or_discover_names_both(confdir):
    found = only_problem(confdir, MINIMAL + '[sync]\ninterface = "sync0"\n')
    assert "sync.peers: expected a list of peers" in found and "sync.discover = true" in found, found
    found = only_problem(confdir, MINIMAL + '[sync]\ninterface = "sync0"\npeers = []\n')
    assert "sync.discover = true" in found, found


def test_sync_discover_with_peers_still_checks_them(confdir):
    found = only_problem(confdir, MINIMAL + '[sync]\ninterface = "sync0"\ndiscover = true\n'
                         'peers = [{ id = 2 }]\n')
    assert found.endswith("sync.peers[0].address: missing (expected a non-empty string)"), found
