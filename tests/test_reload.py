"""The reload plan (meshd/reload.py): every change named, every restart-only change refused."""

from __future__ import annotations

import dataclasses
import tomllib

from meshd.config import Config, parse_config
from meshd.reload import ReloadOutcome, keys_changed, plan_reload

BASE = """\
[node]
id = 1
name = "fw1"

[cluster]
keys = [{ id = 1, secret_file = "k1.key" }]

[[group]]
id = 1
name = "lan"
interface = "eth0"
addresses = ["192.0.2.1/24", "2001:db8::1/64"]

[sync]
interface = "sync0"
peers = [{ id = 2, address = "203.0.113.2" }]
"""

HEALTH = """
[health]
[[health.host]]
name = "web1"
address = "10.1.0.11"

[[health.table]]
name = "web"
hosts = ["web1"]
port = 80
check = { method = "http", path = "/health" }
"""


def config(text: str = BASE, secrets: dict[int, bytes] | None = None) -> Config:
    cfg = parse_config(tomllib.loads(text), "meshd.toml", base_dir="/etc/meshd", read_secrets=False)
    return dataclasses.replace(cfg, secrets=secrets if secrets is not None else {1: b"a" * 32})


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_the_same_file_changes_nothing():
    plan = plan_reload(config(), config())
    assert plan.changes == () and plan.refusals == ()
    assert not keys_changed(plan.old, plan.new)


def test_the_rotation_procedure_step_by_step():
    one = config()
    both_text = edit('keys = [{ id = 1, secret_file = "k1.key" }]',
                     'keys = [{ id = 1, secret_file = "k1.key" }, { id = 2, secret_file = "k2.key" }]\n'
                     'send_key = 1')
    secrets = {1: b"a" * 32, 2: b"b" * 32}
    both = config(both_text, secrets)
    switched = config(edit("send_key = 1", "send_key = 2", both_text), secrets)
    new_only = config(edit('keys = [{ id = 1, secret_file = "k1.key" }]',
                           'keys = [{ id = 2, secret_file = "k2.key" }]'), {2: b"b" * 32})
    steps = [(one, both, ["cluster.keys: key 2 added"]),
             (both, switched, ["cluster.send_key: 1 -> 2"]),
             (switched, new_only, ["cluster.keys: key 1 removed"])]
    for old, new, lines in steps:
        plan = plan_reload(old, new)
        assert list(plan.changes) == lines and plan.refusals == ()
        assert keys_changed(old, new)


def test_a_secret_changed_in_its_file_is_a_change():
    plan = plan_reload(config(), config(secrets={1: b"c" * 32}))
    assert plan.changes == ("cluster.keys: key 1 secret changed (in /etc/meshd/k1.key)",)


def test_group_changes_are_named_and_say_which_restart_the_group():
    text = edit('addresses = ["192.0.2.1/24", "2001:db8::1/64"]',
                'addresses = ["192.0.2.1/24", "2001:db8::1/64"]\nadvskew = 50')
    assert plan_reload(config(), config(text)).changes == ("group lan: advskew 0 -> 50",)
    text = edit('["192.0.2.1/24", "2001:db8::1/64"]', '["192.0.2.5/24", "2001:db8::1/64"]')
    assert plan_reload(config(), config(text)).changes == (
        ("group lan: addresses [192.0.2.1/24, 2001:db8::1/64] -> [192.0.2.5/24, 2001:db8::1/64] "
         "(the group restarts)"),)
    reordered = edit('["192.0.2.1/24", "2001:db8::1/64"]', '["2001:db8::1/64", "192.0.2.1/24"]')
    plan = plan_reload(config(), config(reordered))
    assert plan.refusals == ()
    assert plan.changes == ()  # the election compares the set: nothing to do


def test_groups_and_tracks_added_and_removed():
    text = BASE + """
[[group]]
id = 2
name = "wan"
interface = "eth1"
addresses = ["198.51.100.1/24"]

[[track_interface]]
interface = "uplink"
"""
    plan = plan_reload(config(), config(text))
    assert plan.changes == ("group wan: added", "track_interface uplink (counter all): added")
    back = plan_reload(config(text), config())
    assert back.changes == ("group wan: removed (bows out if master)",
                            "track_interface uplink (counter all): removed")


def test_sync_peers_timers_commit_and_filter_apply_live():
    text = edit('peers = [{ id = 2, address = "203.0.113.2" }]',
                'peers = [{ id = 2, address = "203.0.113.20" }, { id = 3, address = "203.0.113.3" }]\n'
                'heartbeat_ms = 100\ncommit = "takeover"\nevent_buffer_bytes = 4096\nbulk_attempts = 5\n'
                'filter = { ignore_protocols = ["icmp", "udp"], only_assured = true }')
    plan = plan_reload(config(), config(text))
    assert plan.refusals == ()
    assert list(plan.changes) == [
        "sync.peers: peer 3 added (203.0.113.3)",
        "sync.peers: peer 2 address 203.0.113.2 -> 203.0.113.20",
        "sync.event_buffer_bytes: 33554432 -> 4096",
        "sync.commit: continuous -> takeover",
        "sync.heartbeat_ms: 200 -> 100",
        "sync.filter.ignore_protocols: [] -> [icmp, udp] (the internal cache is rebuilt from the kernel table)",
        "sync.filter.only_assured: false -> true (the internal cache is rebuilt from the kernel table)",
        "sync.bulk_attempts: 3 -> 5",
    ]
    removed = plan_reload(config(text), config())
    assert "sync.peers: peer 3 removed (203.0.113.3)" in removed.changes


def test_what_needs_a_restart_is_refused_naming_the_file_and_the_key():
    text = edit("id = 1\nname", "id = 3\nname")
    text = edit('interface = "sync0"', 'interface = "sync0"\nport = 7200\nmax_datagram = 9000', text)
    text = edit("[cluster]", "[cluster]\nport = 7300", text)
    text = edit('addresses = ["192.0.2.1/24", "2001:db8::1/64"]',
                'addresses = ["192.0.2.1/24", "2001:db8::1/64"]\nadvskew = 7', text)
    plan = plan_reload(config(), config(text))
    assert list(plan.refusals) == [
        ("meshd.toml: node.id: changing it needs a restart (1 -> 3; peers know this node by it: "
         "adverts, frames, replay marks)"),
        ("meshd.toml: cluster.port: changing it needs a restart (7112 -> 7300; the election's "
         "sockets are bound and joined at start)"),
        ("meshd.toml: sync.port: changing it needs a restart (7113 -> 7200; the state mesh's "
         "socket is bound at start)"),
        ("meshd.toml: sync.max_datagram: changing it needs a restart (1400 -> 9000; it sizes the "
         "frames and caches that hold live state)"),
    ]
    assert plan.changes == ("group lan: advskew 0 -> 7",)   # listed, but a refused plan applies nothing
    outcome = ReloadOutcome.refusing(plan.refusals)
    assert not outcome.ok and outcome.error == "reload refused: 4 change(s) need a restart"


def test_a_new_peer_family_and_sections_added_or_removed_are_refused():
    v6 = edit('peers = [{ id = 2, address = "203.0.113.2" }]', 'peers = [{ id = 2, address = "2001:db8::2" }]')
    plan = plan_reload(config(), config(v6))
    assert plan.refusals == (("meshd.toml: sync.peers: changing it needs a restart (the peers' "
                              "addresses are IPv6 now, the state mesh's socket is IPv4)"),)
    no_sync = BASE[:BASE.index("[sync]")]
    assert plan_reload(config(), config(no_sync)).refusals == (
        ("meshd.toml: sync: changing it needs a restart (section removed; the state mesh opens "
         "its sockets and reads the kernel table at start)"),)
    assert plan_reload(config(no_sync), config()).refusals[0].startswith(
        "meshd.toml: sync: changing it needs a restart (section added;")
    disabled = edit('interface = "sync0"', 'interface = "sync0"\nenabled = false')
    assert plan_reload(config(), config(disabled)).refusals[0].startswith(
        "meshd.toml: sync: changing it needs a restart (section removed;")
    assert plan_reload(config(), config(BASE + HEALTH)).refusals[0].startswith(
        "meshd.toml: health: changing it needs a restart (section added;")


def test_health_changes_apply_live_but_not_its_table_or_reset_watcher():
    weighted = edit('address = "10.1.0.11"', 'address = "10.1.0.11"\nweight = 3', BASE + HEALTH)
    plan = plan_reload(config(BASE + HEALTH), config(weighted))
    assert plan.changes == ("health: host web1: weight 1 -> 3",) and plan.refusals == ()
    path = edit('path = "/health"', 'path = "/ready"', BASE + HEALTH)
    assert plan_reload(config(BASE + HEALTH), config(path)).changes == (
        "health: table web: check.path /health -> /ready",)
    renamed = edit("[health]", '[health]\nnft_table = "lb"', BASE + HEALTH)
    assert plan_reload(config(BASE + HEALTH), config(renamed)).refusals == (
        ("meshd.toml: health.nft_table: changing it needs a restart (meshd -> lb; the table is "
         "created under its name at start)"),)
    watcher_off = edit("[health]", "[health]\nrst_burst = 0", BASE + HEALTH)
    redirect = '\n[[health.redirect]]\nname = "www"\naddress = "192.0.2.1"\nport = 80\ntable = "web"\n'
    assert plan_reload(config(watcher_off + redirect), config(BASE + HEALTH + redirect)).refusals == (
        ("meshd.toml: health.rst_burst: changing it needs a restart (it turns the reset watcher on; "
         "its NFLOG socket is opened at start)"),)
    # Turning it off needs nothing: the rules stop logging.
    assert plan_reload(config(BASE + HEALTH + redirect), config(watcher_off + redirect)).refusals == ()


def test_node_name_applies_live():
    plan = plan_reload(config(), config(edit('name = "fw1"', 'name = "edge1"')))
    assert plan.changes == ("node.name: fw1 -> edge1",) and plan.refusals == ()


def test_a_file_with_errors_fails_with_every_error_in_the_text():
    outcome = ReloadOutcome.failing(["meshd.toml: group[0].advskew: expected ...", "meshd.toml: x: y"],
                                    "2 error(s) in the file")
    assert not outcome.ok and outcome.refused == ()
    assert outcome.error == ("reload failed (2 error(s) in the file; the running configuration "
                             "stays): meshd.toml: group[0].advskew: expected ...; meshd.toml: x: y")


def test_a_backup_path_needs_a_restart_only_when_it_unbinds_the_socket():
    """With sync.interface, the socket is bound to it only while no peer has a
    backup path: the first backup path changes that (a restart); a further
    path, or a path changed, applies live (meshd/sync/shell.py)."""
    two = edit('peers = [{ id = 2, address = "203.0.113.2" }]',
               'peers = [{ id = 2, addresses = ["203.0.113.2", "192.0.2.3"] }]')
    plan = plan_reload(config(), config(two))
    assert plan.refusals == (
        "meshd.toml: sync.peers: changing it needs a restart (a backup path added: the state mesh's "
        "socket is bound to sync.interface only while every peer has one path, as a backup path "
        "arrives on another one)",), plan.refusals
    three = edit('peers = [{ id = 2, address = "203.0.113.2" }]',
                 'peers = [{ id = 2, addresses = ["203.0.113.2", "192.0.2.3", "198.51.100.3"] }]')
    plan = plan_reload(config(two), config(three))
    assert plan.refusals == ()
    assert list(plan.changes) == ["sync.peers: peer 2 addresses 203.0.113.2, 192.0.2.3 -> "
                                  "203.0.113.2, 192.0.2.3, 198.51.100.3"]
