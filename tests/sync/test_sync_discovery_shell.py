"""SyncShell with discovery (no socket, no zeroconf): where frames go and whom
the flood guard admits, as the DiscoveryTable and the sync core decide.
Candidates get their heartbeats at their announced addresses but are never
admitted; a discovered peer is, at the address it proved the key from."""

from __future__ import annotations

import dataclasses
import tomllib

from meshd.config import parse_config
from meshd.node.core import NodeCore
from meshd.sync import membership
from meshd.sync.discovery import fingerprint
from meshd.sync.shell import SyncShell

SECRET = b"s" * 32
CONFIG = """\
[node]
id = 1

[cluster]
keys = [{ id = 1, secret_file = "k1.key" }]

[[group]]
id = 1
name = "lan"
interface = "eth0"
addresses = ["192.0.2.1/24"]

[sync]
interface = "sync0"
discover = true
peers = [{ id = 5, address = "203.0.113.5" }]
"""


def test_frames_go_to_candidates_and_discovered_peers_and_the_guard_admits_only_the_proven():
    cfg = dataclasses.replace(parse_config(tomllib.loads(CONFIG), "meshd.toml", read_secrets=False),
                              secrets={1: SECRET})
    node = NodeCore(cfg, 1_700_000_000)
    shell = SyncShell(cfg, node, lambda acts: None, lambda *a, **k: None)
    fp = fingerprint(SECRET)
    node.announced("fw2@a", 2, "fw2", "203.0.113.2", 7113, fp, 0.0)
    node.announced("fw2@b", 2, "fw2", "198.51.100.2", 7113, fp, 0.0)
    node.announced("other", 4, "fw4", "203.0.113.4", 7113, "0" * 16, 0.0)
    shell.discovery_changed()
    assert sorted(shell._targets(2)) == ["198.51.100.2", "203.0.113.2"]      # a candidate's heartbeats
    assert shell._targets(4) == []                                           # another cluster: nothing
    assert shell._targets(None) == ["203.0.113.5"]
    assert set(shell.guard._known) == {"203.0.113.5"}                        # candidates are not admitted
    assert shell._peer_of("203.0.113.2") == 2 and shell._peer_of("203.0.113.4") is None

    # node 2 proves the key from one of its addresses (as SyncCore.receive would)
    membership.promote(node.sync, node.sync.candidates[2], 1.0)
    node.discovery.promoted(2, "203.0.113.2", 1.0)
    shell.discovery_changed()
    assert shell._targets(2) == ["203.0.113.2"]
    assert sorted(shell._targets(None)) == ["203.0.113.2", "203.0.113.5"]
    assert set(shell.guard._known) == {"203.0.113.2", "203.0.113.5"}
    assert shell._peer_of("198.51.100.2") is None                            # not where it proved the key
