"""SyncShell.send_frames over a real UDP socket on loopback, with either sender:
every frame to every peer in order, in one batch (one sendmmsg with the
accelerator), and a failed datagram counted and logged as a failed sendto was.
No root: 127.0.0.0/8 is all local."""

from __future__ import annotations

import socket

import pytest
from cluster.configs import node, parse

from meshd import fastct
from meshd.node.core import NodeCore
from meshd.sync.actions import SendFrame
from meshd.sync.sender import DatagramSender
from meshd.sync.shell import SyncShell

LAN = {"id": 1, "name": "lan", "interface": "eth0", "addresses": ["192.0.2.1/24"]}


def receivers() -> tuple[list[socket.socket], int]:
    """Sockets on 127.0.0.2 and 127.0.0.3, one port for both (the shell sends to one port)."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.2", 0))
    port = a.getsockname()[1]
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.3", port))
    for s in (a, b):
        s.setblocking(False)
    return [a, b], port


def drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(2048))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("impl", ["python", "c"])
def test_a_burst_of_frames_goes_out_in_order_to_every_peer(impl, monkeypatch):
    fast = fastct.accelerator() if impl == "c" else None
    if impl == "c" and fast is None:
        pytest.skip("meshd._fastct is not built")
    monkeypatch.setattr(fastct, "FAST", fast)
    rx, port = receivers()
    peers = [{"id": 2, "address": "127.0.0.2"}, {"id": 3, "address": "127.0.0.3"}]
    cfg = parse(node(1, [LAN], sync={"interface": "sync0", "peers": peers, "port": port}))
    logs: list = []
    shell = SyncShell(cfg, NodeCore(cfg, 1_700_000_000), lambda acts: None, lambda e, **f: logs.append((e, f)))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        shell.sock = type("TrioSocket", (), {"_sock": tx})()        # what the shell uses of one
        frames = [SendFrame(None, b"\x02\x01" + b"%03d" % i) for i in range(20)] + \
            [SendFrame(3, b"\x02\x01only3")]
        shell.send_frames(frames)
        assert isinstance(shell._sender, DatagramSender) and (shell._sender.fast is fast)
        got = [drain(s) for s in rx]
        assert got[0] == [f.data for f in frames[:20]] and got[1] == [f.data for f in frames]
        assert shell.send_errors == 0
        assert shell._sender.stats() == {"batches": 1, "datagrams": 41, "calls": 1 if impl == "c" else 41,
                                         "implementation": impl}
        # a datagram the kernel refuses (EMSGSIZE: past 64 KiB): counted, logged, the rest still go
        shell.send_frames([SendFrame(2, b"\x02\x01" + bytes(70_000)), SendFrame(None, b"\x02\x01after"),
                           SendFrame(None, b"\x02\x01last")])
        assert shell.send_errors == 1 and [e for e, _f in logs] == ["sync_send_failed"]
        assert logs[0][1]["peer"] == "127.0.0.2" and logs[0][1]["total"] == 1
        assert [drain(s) for s in rx] == [[b"\x02\x01after", b"\x02\x01last"]] * 2
    finally:
        tx.close()
        for s in rx:
            s.close()
