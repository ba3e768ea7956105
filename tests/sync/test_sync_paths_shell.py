"""SyncShell with backup paths (no socket: a recorder in its place): where each
frame goes, heartbeats over every path, the multicast group while a peer is
on its first path, a path the kernel has no route for left at once, the
flood guard's admitted senders, and a reload that adds a path."""

from __future__ import annotations

import dataclasses
import errno

import trio
from cluster.configs import node, parse

from meshd.node.core import NodeCore
from meshd.sync.actions import SendFrame
from meshd.sync.shell import SyncShell

LAN = {"id": 1, "name": "lan", "interface": "eth0", "addresses": ["192.0.2.1/24"]}
PEERS = [{"id": 2, "addresses": ["203.0.113.2", "192.0.2.3"]}, {"id": 3, "address": "203.0.113.3"}]
HEARTBEAT = b"\x02\x03" + bytes(60)        # the shell reads the type byte only
DATA = b"\x02\x01" + bytes(60)


class Recorder:
    """The socket's sendto: what went where; addresses in `down` have no route."""

    def __init__(self):
        self.sent: list[tuple[bytes, str]] = []
        self.down: set[str] = set()

    def sendto(self, data, dest):
        if dest[0] in self.down:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        self.sent.append((data, dest[0]))

    def take(self) -> list[tuple[str, str]]:
        out = [("hb" if d == HEARTBEAT else "data", a) for d, a in self.sent]
        self.sent.clear()
        return sorted(out)


def shell_for(**sync_options):
    cfg = parse(node(1, [LAN], sync={"interface": "sync0", "peers": PEERS, **sync_options}))
    logs: list[tuple[str, dict]] = []
    shell = SyncShell(cfg, NodeCore(cfg, 1_700_000_000), lambda acts: None,
                      lambda e, **f: logs.append((e, f)))
    rec = Recorder()
    shell.sock = type("Sock", (), {"_sock": rec})()
    return shell, rec, logs, cfg


def test_frames_go_over_the_path_in_use_and_heartbeats_over_every_path():
    async def main():
        shell, rec, logs, _ = shell_for()
        assert shell.sync.multipath and set(shell.guard._known) == {"203.0.113.2", "192.0.2.3", "203.0.113.3"}
        assert shell._peer_of("192.0.2.3") == 2
        shell.send(SendFrame(None, DATA))
        shell.send(SendFrame(2, DATA))
        assert rec.take() == [("data", "203.0.113.2"), ("data", "203.0.113.2"), ("data", "203.0.113.3")]
        shell.send(SendFrame(None, HEARTBEAT))
        shell.send(SendFrame(3, HEARTBEAT))              # a single-path peer: once
        assert rec.take() == [("hb", "192.0.2.3"), ("hb", "203.0.113.2"), ("hb", "203.0.113.3"),
                              ("hb", "203.0.113.3")]
        # No route to sync0's address: the LAN at once, logged; the probes of
        # sync0 fail quietly from then on.
        rec.down.add("203.0.113.2")
        shell.send(SendFrame(2, DATA))
        switches = [f for e, f in logs if e == "sync_path"]
        assert len(switches) == 1 and switches[0]["new"] == "192.0.2.3", switches
        assert "unreachable" in switches[0]["reason"]
        rec.sent.clear()
        shell.send(SendFrame(2, DATA))
        shell.send(SendFrame(2, HEARTBEAT))
        assert rec.take() == [("data", "192.0.2.3"), ("hb", "192.0.2.3")]
        assert shell.probe_errors == 1 and shell.send_errors == 1
        assert shell.path_counts() == {2: (1, 1)}
        shell.reader = type("Reader", (), {"stats": lambda self: {}})()
        stats = await shell.handle_control("stats", {})
        assert list(stats["paths"]) == [2] and stats["paths"][2]["address"] == "192.0.2.3"
        assert stats["probe_errors"] == 1
    trio.run(main)


def test_with_multicast_a_peer_on_its_backup_path_gets_a_unicast_copy():
    async def main():
        shell, rec, _, cfg = shell_for(multicast_group="239.255.71.13")
        shell.send(SendFrame(None, DATA))
        assert rec.take() == [("data", "239.255.71.13")]
        rec.down.add("203.0.113.2")
        shell.send(SendFrame(2, DATA))                    # the switch
        rec.sent.clear()
        shell.send(SendFrame(None, DATA))
        assert rec.take() == [("data", "192.0.2.3"), ("data", "239.255.71.13")]     # peer 3 is on the group
        # Every peer off the group's link: the group gets nothing.
        peers = (shell.sync.peers[0], dataclasses.replace(shell.sync.peers[1], backups=("192.0.2.4",)))
        new = dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, peers=peers))
        shell.reconfigure(cfg, new)
        rec.down.add("203.0.113.3")
        shell.send(SendFrame(3, DATA))
        rec.sent.clear()
        shell.send(SendFrame(None, DATA))
        assert rec.take() == [("data", "192.0.2.3"), ("data", "192.0.2.4")]
    trio.run(main)


def test_a_reload_adds_a_path_and_keeps_the_one_in_use():
    async def main():
        shell, rec, _, cfg = shell_for()
        rec.down.add("203.0.113.2")
        shell.send(SendFrame(2, DATA))
        peers = (dataclasses.replace(cfg.sync.peers[0], backups=("192.0.2.3", "198.51.100.3")),
                 cfg.sync.peers[1])
        new = dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, peers=peers))
        shell.reconfigure(cfg, new)
        assert shell.paths.address(2) == "192.0.2.3" and shell.path_counts() == {2: (1, 1)}
        assert shell._peer_of("198.51.100.3") == 2 and "198.51.100.3" in shell.guard._known
        rec.sent.clear()
        shell.send(SendFrame(2, HEARTBEAT))
        assert rec.take() == [("hb", "192.0.2.3"), ("hb", "198.51.100.3")]    # 203.0.113.2: no route
    trio.run(main)
