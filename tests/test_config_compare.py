"""`meshd --check --peer FILE`: two nodes' files side by side (meshd/config/compare.py)."""

from __future__ import annotations

import re

from meshd.cli import main
from meshd.config import load_config
from meshd.config.compare import compare, key_fingerprint


def node_file(tmp_path, n: int, *, key_id: int = 1, secret: bytes = b"k" * 32, advbase: int = 100,
              lan: str = "192.0.2.1/24", extra_group: str = "", sync_extra: str = "", peer_address=None,
              peer_paths=None):
    d = tmp_path / f"fw{n}"
    d.mkdir(exist_ok=True)
    key = d / "cluster.key"
    key.write_bytes(secret)
    key.chmod(0o600)
    other = 3 - n
    path = d / "meshd.toml"
    path.write_text(f"""
[node]
id = {n}
name = "fw{n}"
state_dir = "{d}/state"

[cluster]
keys = [{{ id = {key_id}, secret_file = "cluster.key" }}]
send_key = {key_id}

[[group]]
id = 10
name = "lan"
interface = "eth0"
addresses = ["{lan}"]
advbase_ms = {advbase}
advskew = {0 if n == 1 else 100}
{extra_group}

[sync]
interface = "sync0"
peers = [{{ id = {other}, {f"addresses = {peer_paths}" if peer_paths else
                          f'address = "{peer_address or f"203.0.113.{other}"}"'} }}]
{sync_extra}
""")
    return path


def findings(a, b, **kw):
    return [str(f) for f in compare(load_config(a), load_config(b), "fw2", **kw)]


def test_two_files_that_agree_have_no_finding(tmp_path, capsys):
    a, b = node_file(tmp_path, 1), node_file(tmp_path, 2)
    assert findings(a, b) == []
    assert main(["--config", str(a), "--check", "--peer", str(b)]) == 0
    assert "agree (0 warning(s)): node fw1 (id 1) and fw2 (id 2)" in capsys.readouterr().out


def test_a_key_id_changed_by_a_text_substitution_is_named(tmp_path, capsys):
    """The case of issue 12: fw2's file written from fw1's with a substitution
    meant for the node id, which changed the key id too.  Both files pass
    `meshd --check`; the comparison says why the nodes would not hear each other."""
    a = node_file(tmp_path, 1)
    b = node_file(tmp_path, 2)
    text = a.read_text().replace('"fw1"', '"fw2"').replace("203.0.113.2", "203.0.113.1")
    text = re.sub(r"\bid = 1\b", "id = 2", text).replace("id = 2, address", "id = 1, address")
    text = text.replace("send_key = 1", "send_key = 2").replace(str(tmp_path / "fw1"), str(tmp_path / "fw2"))
    b.write_text(text)
    assert main(["--config", str(b), "--check"]) == 0      # each file alone is valid
    capsys.readouterr()
    assert main(["--config", str(a), "--check", "--peer", str(b)]) == 2
    err = capsys.readouterr().err
    assert ("error: cluster keys: here {1}, fw2 {2}: no key in common: each node rejects the other's "
            "adverts and frames as `unknown key`") in err
    assert "error: cluster.send_key: 1 here, and fw2 has no key 1" in err
    assert "break the cluster" in err


def test_group_settings_that_must_agree(tmp_path):
    a = node_file(tmp_path, 1)
    b = node_file(tmp_path, 2, advbase=200, lan="192.0.2.254/24",
                  extra_group='\n[[group]]\nid = 11\nname = "dmz"\ninterface = "eth2"\naddresses = ["198.51.100.1/24"]\n')
    out = findings(a, b)
    assert any(f.startswith("error: group lan: advbase_ms: 100 here, 200 on fw2: fw2 rejects this node's "
                            "adverts for it as `peer config differs`") for f in out), out
    assert any("group lan: addresses: only here ['192.0.2.1/24'], only on fw2 ['192.0.2.254/24']" in f
               for f in out), out
    assert "warning: group dmz: id 11 is on fw2 only: this node never backs it up" in out


def test_secrets_are_compared_by_fingerprint_never_shown(tmp_path, capsys):
    a = node_file(tmp_path, 1, secret=b"a" * 32)
    b = node_file(tmp_path, 2, secret=b"b" * 32)
    assert main(["--config", str(a), "--check", "--peer", str(b)]) == 2
    err = capsys.readouterr().err
    assert f"the secrets differ (fingerprint {key_fingerprint(b'a' * 32)} here, " in err
    assert "aaaa" not in err and "bbbb" not in err
    assert key_fingerprint(b"a" * 32) != key_fingerprint(b"b" * 32)
    assert len(key_fingerprint(b"a" * 32)) == 16
    # Not readable here: compared without the secrets, and said.
    (tmp_path / "fw2" / "cluster.key").unlink()
    assert main(["--config", str(a), "--check", "--peer", str(b)]) == 0
    captured = capsys.readouterr()
    assert "the secrets are not compared, only the key ids" in captured.err


def test_collisions_of_what_must_differ(tmp_path):
    a = node_file(tmp_path, 1)
    b = node_file(tmp_path, 2, peer_address="203.0.113.2")      # fw2 reaches fw1 at fw2's own address
    out = findings(a, b)
    assert any(f.startswith("error: sync.peers: this file reaches fw2 at 203.0.113.2, and fw2's file "
                            "reaches this node at the same address") for f in out), out
    same = findings(a, a)
    assert any(f.startswith("error: node.id: 1 here and on fw2") for f in same), same
    assert any(f.startswith("warning: node.name:") for f in same), same


def test_sync_settings(tmp_path):
    a = node_file(tmp_path, 1)
    b = node_file(tmp_path, 2, sync_extra="port = 7200\n[sync.filter]\nonly_assured = true\n")
    out = findings(a, b)
    assert "error: sync.port: 7113 here, 7200 on fw2: no frame arrives" in out
    assert any(f.startswith("warning: sync.filter.only_assured: False here, True on fw2") for f in out), out
    (tmp_path / "other").mkdir()
    c = node_file(tmp_path / "other", 2, sync_extra="[sync.filter]\nexpectations = false\n")
    assert any(f.startswith("warning: sync.filter.expectations: True here, False on fw2") for f in findings(a, c))


def test_peer_needs_check_and_a_bad_peer_file_is_named(tmp_path, capsys):
    a = node_file(tmp_path, 1)
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nid = 0\n")
    assert main(["--config", str(a), "--check", "--peer", str(bad)]) == 2
    assert "in the peer's file" in capsys.readouterr().err
    try:
        main(["--config", str(a), "--peer", str(bad)])
    except SystemExit as e:
        assert e.code == 2
    assert "--peer compares two files and needs --check" in capsys.readouterr().err


def test_paths_between_two_nodes_go_both_ways(tmp_path):
    """A backup path in one file only: the other node takes the heartbeats that
    come over it for replays, and cannot switch when its one path fails."""
    a = node_file(tmp_path, 1, peer_paths='["203.0.113.2", "192.0.2.3"]')
    b = node_file(tmp_path, 2)
    out = findings(a, b)
    assert out == ["error: sync.peers: 2 path(s) to fw2 here (203.0.113.2, 192.0.2.3), 1 from fw2 to "
                   "this node (203.0.113.1): the paths between two nodes go both ways"], out
    b = node_file(tmp_path, 2, peer_paths='["203.0.113.1", "192.0.2.2"]')
    assert findings(a, b) == []
    b = node_file(tmp_path, 2, peer_paths='["203.0.113.1", "192.0.2.3"]')    # fw1 at fw2's own LAN address
    assert any("reaches this node at the same address" in f and "192.0.2.3" in f for f in findings(a, b))
