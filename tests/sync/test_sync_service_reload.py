"""A reload of [sync], carried out by the node core and the state mesh's shell.

The node core and SyncShell run on trio with the shell's kernel and UDP sides
faked (a kernel table for dump_table, a committer that records, a socket
that records sendto), wired as the daemon wires them, so what a change does
to the kernel shows: the dump that makes the internal cache match a new
filter, the commit of the replicated flows when commit turns continuous, the
frames to a peer's new address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib

import trio

from meshd.config import parse_config
from meshd.kernel import conntrack as kct
from meshd.kernel.ctnetlink import CtEvent
from meshd.node.core import NodeCore
from meshd.reload import keys_changed
from meshd.sync.actions import SendFrame
from meshd.sync.shell import SyncShell
from meshd.timers import CoreTimer

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
peers = [{ id = 2, address = "203.0.113.2" }]
commit = "takeover"
"""
TCP, UDP = 6, 17


def config(text: str = CONFIG):
    cfg = parse_config(tomllib.loads(text), "meshd.toml", read_secrets=False)
    return dataclasses.replace(cfg, secrets={1: b"s" * 32})


def flow(n: int, proto: int) -> CtEvent:
    src = ipaddress.ip_address(f"10.0.0.{n}").packed
    return CtEvent(1, b"key%d" % n, b"attrs%d" % n, 0, proto, src,
                   ipaddress.ip_address("198.51.100.1").packed, 0, 3 if proto == TCP else None)


class FakeCommitter:
    portid = 99

    def __init__(self):
        self.committed: list[bytes] = []

    def commit(self, entries, pipeline=None):
        self.committed += list(entries)
        return kct.CommitResult(len(entries), 0, {}, 0.0, {})

    def delete(self, entries=(), keys=(), pipeline=None):
        return kct.CommitResult(0, 0, {}, 0.0, {})


class FakeReader:
    def __init__(self):
        self.rcvbuf = None

    def set_rcvbuf(self, size):
        self.rcvbuf = size
        return size


class FakeSocket:
    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []
        self._sock = self

    def sendto(self, data, address):
        self.sent.append((data, address))


class Node:
    """The node core and its state-mesh shell, dispatched to as the daemon does."""

    def __init__(self, cfg, table, monkeypatch):
        self.cfg = cfg
        self.logs = []
        self.node = NodeCore(cfg, 5)
        self.core = self.node.sync
        self.shell = SyncShell(cfg, self.node, self.dispatch, lambda event, **kw: self.logs.append((event, kw)))
        self.shell.committer, self.shell.reader, self.shell.sock = FakeCommitter(), FakeReader(), FakeSocket()
        self.timer = CoreTimer(self.node, self.dispatch)
        monkeypatch.setattr(kct, "dump_table", lambda: list(table))
        monkeypatch.setattr(kct, "dump_expectations", lambda: [])

    def dispatch(self, actions):
        for a in actions:
            if type(a) is SendFrame:
                self.shell.send(a)
            else:
                self.shell.carry_out(a)
        self.timer.kick()

    async def start(self, nursery):
        self.shell.nursery = nursery
        nursery.start_soon(self.timer.run)
        nursery.start_soon(self.shell._apply_loop)
        if self.cfg.sync.commit != "continuous":
            await self.shell.resync_from_kernel("start")
        self.dispatch(self.node.start(trio.current_time()))

    def reconfigure(self, new):
        old, self.cfg = self.cfg, new
        self.shell.reconfigure(old, new)
        self.dispatch(self.node.reconfigure(old, new, keys_changed(old, new), trio.current_time()))


async def settle():
    for _ in range(50):
        await trio.sleep(0.01)


def test_a_new_filter_rebuilds_the_internal_cache_from_the_kernel(monkeypatch):
    table = [flow(1, TCP), flow(2, UDP), flow(3, UDP)]
    svc = Node(config(), table, monkeypatch)

    async def main():
        async with trio.open_nursery() as nursery:
            await svc.start(nursery)
            assert len(svc.core.internal) == 3
            svc.reconfigure(config(CONFIG + 'filter = { ignore_protocols = ["udp"] }\n'))
            await settle()
            assert dict(svc.core.dump_internal()) == {b"key1": b"attrs1"}
            assert [r["reason"] for e, r in svc.logs if e == "ct_resync"] == ["start", "filter changed"]
            # The filter the event consumer holds is the new one (changed in place).
            assert not svc.node.flows.filter.keep(flow(4, UDP)) and svc.node.flows.filter.keep(flow(5, TCP))
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_commit_turning_continuous_commits_the_replicated_flows(monkeypatch):
    svc = Node(config(), [], monkeypatch)
    peer = svc.core.peers[2]
    peer.ext.apply(((b"p1", b"peer flow 1"), (b"p2", b"peer flow 2")), 7, False)

    async def main():
        async with trio.open_nursery() as nursery:
            svc.shell.nursery = nursery
            nursery.start_soon(svc.timer.run)
            nursery.start_soon(svc.shell._apply_loop)
            await settle()
            assert svc.shell.committer.committed == []
            svc.reconfigure(config(CONFIG.replace('commit = "takeover"', 'commit = "continuous"')))
            await settle()
            assert sorted(svc.shell.committer.committed) == [b"peer flow 1", b"peer flow 2"]
            assert svc.core.report is True and svc.shell.sync.commit == "continuous"
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_peers_added_removed_and_moved(monkeypatch):
    svc = Node(config(), [], monkeypatch)
    moved = CONFIG.replace('peers = [{ id = 2, address = "203.0.113.2" }]',
                           'peers = [{ id = 2, address = "203.0.113.22" }, { id = 3, address = "203.0.113.3" }]\n'
                           'event_buffer_bytes = 65536')

    async def main():
        async with trio.open_nursery() as nursery:
            svc.shell.nursery = nursery
            svc.dispatch(svc.core.start(trio.current_time()))
            sock = svc.shell.sock
            sock.sent.clear()
            svc.reconfigure(config(moved))
            assert sorted(svc.core.peers) == [2, 3]
            assert {a for _d, a in sock.sent} == {("203.0.113.3", 7113)}   # node 3's bulk request
            assert svc.shell.peer_by_address == {"203.0.113.22": 2, "203.0.113.3": 3}
            assert svc.shell.reader.rcvbuf == 65536
            sock.sent.clear()
            svc.dispatch(svc.core.handle_timer(trio.current_time() + 1))       # a heartbeat to all
            assert {a for _d, a in sock.sent} >= {("203.0.113.22", 7113), ("203.0.113.3", 7113)}
            svc.reconfigure(config())
            assert sorted(svc.core.peers) == [2]
            assert [kw["state"] for e, kw in svc.logs if e == "sync_peer"] == ["added", "removed"]
            nursery.cancel_scope.cancel()
    trio.run(main)
