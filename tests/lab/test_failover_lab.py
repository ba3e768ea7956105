"""Failover in the netns lab: topology sanity, meshd takeover, replay and wrong-key adverts.

Root only (tests/lab/conftest.py skips otherwise).  Bounds are generous: the
point is the order of magnitude on a loaded 2-core machine, not a benchmark.
On failure the daemons' log tails are in the report section "lab daemon logs".
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from meshlab import meshd_node as md
from meshlab import scenarios
from meshlab.nsutil import EchoServer, in_netns, ns_socket, tcp_connect
from meshlab.topology import (CLIENT4, CLIENT6, LAN_VIRTUAL, SERVER4, SERVER6, SYNC4,
                              VIRTUAL_ADDRESSES, nsexec)
from meshlab.watch import start_watch

pytestmark = pytest.mark.lab

PORT = 7009
MCAST4 = "224.0.0.18"
ELECTION_PORT = 7112
REPLAY_REASONS = ("replayed", "old epoch")


def _sysctl(ns: str, key: str) -> str:
    p = subprocess.run(nsexec(ns, "sysctl", "-n", key), capture_output=True, text=True, check=True)
    return p.stdout.strip()


# --------------------------------------------------------------------------- topology


def test_topology_client_reaches_server_through_fw1(lab):
    topo = lab.topo
    assert _sysctl(lab.fw(1), "net.ipv4.ip_forward") == "1"
    assert _sysctl(lab.fw(1), "net.netfilter.nf_conntrack_tcp_loose") == "0"
    topo.add_virtual(1)
    assert topo.holders("192.0.2.1") == [lab.fw(1)]
    assert topo.holders("2001:db8:2::1") == [lab.fw(1)]
    with EchoServer(lab.server, "::", PORT) as echo:      # dual stack listener
        for host in (SERVER4, SERVER6):
            assert tcp_connect(lab.client, host, PORT, timeout=3, payload=b"x" * 100) == b"x" * 100, host
        assert echo.accepted == 2
    ct = subprocess.run(nsexec(lab.fw(1), "conntrack", "-L", "-p", "tcp", "--dport", str(PORT)),
                        capture_output=True, text=True)
    assert len(ct.stdout.splitlines()) == 2, f"fw1 should have tracked both flows:\n{ct.stdout}{ct.stderr}"


def test_topology_stateful_ruleset_drops_new_tcp_from_server(lab):
    lab.topo.add_virtual(1)
    with EchoServer(lab.client, "::", PORT) as echo:
        for host in (CLIENT4, CLIENT6):
            with pytest.raises(OSError):
                tcp_connect(lab.server, host, PORT, timeout=1.0)
        assert echo.accepted == 0
        # The drop is the ruleset's doing: without it the same connection works.
        subprocess.run(nsexec(lab.fw(1), "nft", "flush", "ruleset"), check=True)
        assert tcp_connect(lab.server, CLIENT4, PORT, timeout=3) == b"ping\n"


def test_topology_sync_links(lab):
    # 2 nodes: a direct veth fw1 <-> fw2.
    with EchoServer(lab.fw(2), f"{SYNC4}.2", PORT):
        assert tcp_connect(lab.fw(1), f"{SYNC4}.2", PORT, timeout=3) == b"ping\n"


def test_topology_three_nodes(lab3):
    addrs = lab3.topo.addresses(lab3.fw(3))
    assert addrs["lan0"] == ["192.0.2.4/24", "2001:db8:1::4/64"]
    assert addrs["srv0"] == ["198.51.100.4/24", "2001:db8:2::4/64"]
    assert addrs["sync0"] == [f"{SYNC4}.3/24"]
    # 3 nodes: sync0 of every firewall on the brsync bridge.
    with EchoServer(lab3.fw(3), f"{SYNC4}.3", PORT):
        for n in (1, 2):
            assert tcp_connect(lab3.fw(n), f"{SYNC4}.3", PORT, timeout=3) == b"ping\n"


# --------------------------------------------------------------------------- meshd


GROUP_NAMES = [g["name"] for g in md.default_groups()]


def _start_pair(lab, advbase_ms: int = 100):
    for n in (1, 2):
        lab.start_meshd(n, advbase_ms=advbase_ms)
    return lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUP_NAMES, timeout=10)


def test_failover_sigkill_within_1s(meshd_ready, lab):
    result = scenarios.failover(json_out=True, lab=lab.topo, run_dir=os.path.join(lab.run_dir, "failover"),
                                advbase_ms=100, out=None)
    print(result)
    assert result["new_master"] == "fw2"
    assert result["advbase_ms"] == 100
    assert result["takeover_ms"] < 1000, result


def test_graceful_stop_hands_over_within_one_interval(meshd_ready, lab):
    _start_pair(lab)
    time.sleep(0.5)
    watch = start_watch(lab.procs, lab.fw(2), VIRTUAL_ADDRESSES, name="watch-fw2", timeout=10)
    t_term = lab.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGTERM)
    ev = watch.wait_result(timeout=10)
    assert ev.get("event") == "present", f"fw2 did not get every virtual address: {ev}"
    handover_ms = (ev["time"] - t_term) * 1000
    print(f"graceful handover: {handover_ms:.0f} ms")
    assert handover_ms < 500, f"handover took {handover_ms:.0f} ms (bound 500 ms at advbase 100 ms)"
    code = lab.procs.wait(md.MESHD_LOG.format(n=1), timeout=10)
    assert code == 0, f"meshd on fw1 exited {code} after SIGTERM"
    lab.wait_states({2: "MASTER"}, GROUP_NAMES, timeout=5)
    for a in VIRTUAL_ADDRESSES:
        assert lab.topo.holders(a) == [lab.fw(2)], f"{a} after fw1's graceful stop"


def test_three_nodes_active_active(meshd_ready, lab3):
    groups = md.active_active_groups(100)
    addrs = {g["name"]: g["addresses"] for g in groups}
    for n in (1, 2, 3):
        lab3.start_meshd(n, groups)
    sts = lab3.wait_states({1: {"a": "MASTER", "b": "BACKUP"}, 2: {"a": "BACKUP", "b": "MASTER"},
                            3: {"a": "BACKUP", "b": "BACKUP"}}, ["a", "b"], timeout=10)
    for g in ("a", "b"):
        masters = [n for n, st in sts.items() if md.group_states(st).get(g) == "MASTER"]
        assert len(masters) == 1, f"group {g}: masters {masters}"
    for a in addrs["a"]:
        assert lab3.topo.holders(a) == [lab3.fw(1)], a
    for a in addrs["b"]:
        assert lab3.topo.holders(a) == [lab3.fw(2)], a

    lab3.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGKILL)
    lab3.topo.fw_links(1, up=False)
    sts = lab3.wait_states({2: "MASTER", 3: "BACKUP"}, ["a", "b"], timeout=5)
    for g in ("a", "b"):
        masters = [n for n in (2, 3) if md.group_states(sts[n]).get(g) == "MASTER"]
        assert masters == [2], f"group {g}: survivors' masters {masters}"
    for a in addrs["a"] + addrs["b"]:
        survivors = [ns for ns in lab3.topo.holders(a) if ns != lab3.fw(1)]
        assert survivors == [lab3.fw(2)], a


# --------------------------------------------------------------------------- forged adverts


def _eth0_index(lab) -> int:
    return in_netns(lab.client, socket.if_nametoindex, "eth0")


def capture_advert(lab, group_id: int, node_id: int, timeout: float = 5.0) -> bytes:
    """One advert of (group, node) as seen on the LAN from the client namespace."""
    from meshd.election.wire import ADVERT_LEN, HEADER, AdvertType
    s = ns_socket(lab.client, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((MCAST4, ELECTION_PORT))
        mreq = socket.inet_aton(MCAST4) + struct.pack("=4si", b"\0" * 4, _eth0_index(lab))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _src = s.recvfrom(2048)
            except socket.timeout:
                break
            if len(data) == ADVERT_LEN:
                f = HEADER.unpack_from(data)
                if f[1] == AdvertType.ADVERT and f[2] == group_id and f[3] == node_id:
                    return data
    finally:
        s.close()
    raise AssertionError(f"no advert of group {group_id} from node {node_id} seen on the LAN in {timeout} s")


def send_advert(lab, data: bytes, copies: int = 3, ttl: int = 255) -> None:
    """Multicast data to 224.0.0.18:7112 out of the client's eth0 with the given TTL."""
    s = ns_socket(lab.client, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                     struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, _eth0_index(lab)))
        s.bind((CLIENT4, 0))
        for _ in range(copies):
            s.sendto(data, (MCAST4, ELECTION_PORT))
            time.sleep(0.01)
    finally:
        s.close()


def _snapshot(lab, nodes=(1, 2)) -> dict:
    """{node: {group: (state, transitions)}} plus the raw statuses."""
    sts = lab.statuses(nodes)
    snap = {n: {g["name"]: (g.get("state"), g.get("transitions")) for g in st.get("groups", [])}
            for n, st in sts.items()}
    return snap


def _wait_rejected(lab, n: int, reasons, before: int, group: str | None, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = lab.status(n)
        counts = _rejected(st, group)
        if sum(counts.get(r, 0) for r in reasons) > before:
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"fw{n} did not count the advert as rejected ({' or '.join(reasons)}); "
                                 f"rejected counters: {counts}; status: {st}")
        time.sleep(0.2)


def _rejected(st: dict, group: str | None) -> dict:
    """Rejected counters of one group, or of the whole node (group None)."""
    if group is None and isinstance(st.get("rejected"), dict):
        return dict(st["rejected"])
    return md.rejected(st, group)


def test_replayed_advert_is_rejected(meshd_ready, lab):
    _start_pair(lab)
    advert = capture_advert(lab, group_id=1, node_id=1)
    time.sleep(0.5)                    # fw1 has sent newer adverts since
    before_snap = _snapshot(lab)
    before = sum(_rejected(lab.status(2), "lan").get(r, 0) for r in REPLAY_REASONS)
    send_advert(lab, advert, ttl=255)
    counts = _wait_rejected(lab, 2, REPLAY_REASONS, before, "lan")
    print(f"fw2 rejected counters after the replay: {counts}")
    time.sleep(0.5)                    # a few advert intervals: nothing may move
    assert _snapshot(lab) == before_snap
    assert md.group_states(lab.status(1)) == {g: "MASTER" for g in GROUP_NAMES}


def test_advert_with_wrong_key_is_rejected(meshd_ready, lab):
    from meshd.crypto import ELECTION_INFO, KeyRing
    from meshd.election.wire import Advert, AdvertType, config_digest, encode_advert
    _start_pair(lab)
    before_snap = _snapshot(lab)
    before = _rejected(lab.status(2), None).get("bad mac", 0)
    wrong = KeyRing.from_secrets({1: os.urandom(32)}, 1, ELECTION_INFO)
    digest = config_digest(1, 100, LAN_VIRTUAL)
    # A bowout "from fw1" would make fw2 take over at once, were it believed.
    for kind in (AdvertType.BOWOUT, AdvertType.ADVERT):
        forged = Advert(kind, group_id=1, node_id=1, advbase_ms=100, advskew=0, demotion=0,
                        config_digest=digest, key_id=1, epoch=2**32 - 1, counter=2**40)
        send_advert(lab, encode_advert(forged, wrong.send_key), ttl=255)
    counts = _wait_rejected(lab, 2, ("bad mac",), before, None)
    print(f"fw2 rejected counters after the forged adverts: {counts}")
    time.sleep(0.5)
    assert _snapshot(lab) == before_snap


def test_advert_from_previous_epoch_is_rejected(meshd_ready, lab):
    _start_pair(lab)
    advert = capture_advert(lab, group_id=1, node_id=1)
    # fw1 restarts: a new boot epoch; it takes the groups back (preempt).
    assert lab.procs.kill(md.MESHD_LOG.format(n=1), signal.SIGTERM, wait=10) == 0
    lab.start_meshd(1)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUP_NAMES, timeout=10)
    capture_advert(lab, group_id=1, node_id=1)          # fw2 has seen the new epoch by now
    time.sleep(0.3)
    before_snap = _snapshot(lab)
    before = sum(_rejected(lab.status(2), "lan").get(r, 0) for r in REPLAY_REASONS)
    send_advert(lab, advert, ttl=255)
    counts = _wait_rejected(lab, 2, REPLAY_REASONS, before, "lan")
    print(f"fw2 rejected counters after replaying an advert of fw1's previous boot: {counts}")
    assert counts.get("old epoch", 0) >= 1, counts
    time.sleep(0.5)
    assert _snapshot(lab) == before_snap
