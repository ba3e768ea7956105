"""Election features on real kernels: reload, IPv6, unicast peers, FAULT, tracks, meshctl, notify.

Root only (tests/lab/conftest.py skips otherwise).  Every test builds one lab
through the `lab` fixture, which always tears it down with every process
started in it; on failure the daemons' log tails are in the report section
"lab daemon logs".  Adverts every 100 ms; time bounds are generous (a loaded
2-core machine), the assertions are about what happens, not how fast.

Some tests pin down daemon bugs this file found (removed groups bowing out, track
demotions after reload, peer address spelling, IPv6 source selection).
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import struct
import subprocess
import time
from typing import Any, Callable

import pytest

from meshlab import meshd_node as md
from meshlab.nsutil import in_netns, ns_socket
from meshlab.topology import CLIENT4, LAN_VIRTUAL, SRV_VIRTUAL, SYNC4, VIRTUAL_ADDRESSES

pytestmark = pytest.mark.lab

GROUPS = ["lan", "srv"]
ELECTION_PORT = 7112
MCAST4, MCAST6 = "224.0.0.18", "ff02::12"
ADVBASE = 100


# --------------------------------------------------------------------------- helpers


def meshd_name(n: int) -> str:
    return md.MESHD_LOG.format(n=n)


def start(lab, n: int, groups=None, **kw):
    """Start meshd on fw n (config written by meshd_node.write_config; kw: track_* tables...)."""
    return md.start_meshd(lab.procs, lab.topo, n, groups, ADVBASE, **kw)


def start_pair(lab, groups=None, names=GROUPS, **kw) -> dict:
    groups = groups if groups is not None else md.default_groups(ADVBASE)
    for n in (1, 2):
        start(lab, n, groups, **kw)
    return lab.wait_states({1: "MASTER", 2: "BACKUP"}, names, timeout=15)


def groups_with(groups: list[dict], **changes: dict[str, Any]) -> list[dict]:
    """A deep copy of groups with changes[group name] = {key: value} applied."""
    out = copy.deepcopy(groups)
    for g in out:
        g.update(changes.get(g["name"], {}))
    return out


def sighup(lab, n: int) -> None:
    # The daemon's pid only: a SIGHUP to its process group would also hit a
    # running track script or notify hook.
    os.kill(lab.procs.get(meshd_name(n)).pid, signal.SIGHUP)


def log_events(lab, n: int, event: str, **match: Any) -> list[dict]:
    """JSON log records of fw n's daemon with this event (and these field values)."""
    return [rec for rec, _line in md.find_log_event(
        lab.procs.get(meshd_name(n)).log,
        lambda rec, line: rec.get("event") == event and all(rec.get(k) == v for k, v in match.items()))]


def wait_for(what: str, fn: Callable[[], Any], lab, timeout: float = 10.0, poll: float = 0.1) -> Any:
    """Poll fn() until it returns something truthy; fail naming `what` with the daemon logs."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{lab.logs(30)}")
        time.sleep(poll)


def wait_log_count(lab, n: int, event: str, count: int, timeout: float = 10.0, **match) -> list[dict]:
    return wait_for(f"{count} {event} event(s) in fw{n}'s log",
                    lambda: (lambda r: r if len(r) >= count else None)(log_events(lab, n, event, **match)),
                    lab, timeout)


def snapshot(lab, nodes=(1, 2)) -> dict:
    """{node: {group: (state, transitions)}}."""
    return {n: {g["name"]: (g.get("state"), g.get("transitions")) for g in st.get("groups", [])}
            for n, st in lab.statuses(nodes).items()}


def group_status(st: dict, name: str) -> dict:
    for g in st.get("groups", []):
        if g.get("name") == name:
            return g
    raise AssertionError(f"no group {name} in status {st}")


def holders(lab, addr: str) -> list[str]:
    return lab.topo.holders(addr)


def wait_holders(lab, addresses, want: list[str], timeout: float = 10.0) -> None:
    """Until each address is configured exactly in the namespaces `want` (may be [])."""
    def ok():
        return all(sorted(holders(lab, a)) == sorted(want) for a in addresses)
    wait_for(f"{list(addresses)} held by {want} (now: "
             f"{ {a: holders(lab, a) for a in addresses} })", ok, lab, timeout)


def kill_and_unplug(lab, n: int) -> None:
    """A crashed master: SIGKILL (reaped) and all its links down."""
    lab.procs.kill(meshd_name(n), signal.SIGKILL)
    lab.topo.fw_links(n, up=False)


def cluster_keyring(lab):
    from meshd.crypto import ELECTION_INFO, KeyRing
    with open(os.path.join(lab.run_dir, "cluster.key"), "rb") as f:
        return KeyRing.from_secrets({1: f.read()}, 1, ELECTION_INFO)


def write_notify_script(lab, n: int) -> tuple[str, str]:
    """An executable that appends `GROUP name STATE prio vip=yes|no` to fwN/notify.out.

    vip tells whether the group's IPv4 virtual address was on the node when the
    hook ran (documented: a MASTER hook runs after the addresses are added).
    """
    d = md.node_dir(lab.run_dir, n)
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "notify.out")
    script = os.path.join(d, "notify.sh")
    lan4, srv4 = LAN_VIRTUAL[0].split("/")[0], SRV_VIRTUAL[0].split("/")[0]
    with open(script, "w") as f:
        f.write("#!/bin/sh\n"
                f'case "$2" in lan) a={lan4} ;; srv) a={srv4} ;; *) a=none ;; esac\n'
                'if ip -o -4 addr show | grep -q " $a/"; then v=yes; else v=no; fi\n'
                f'echo "$* vip=$v" >> {out}\n')
    os.chmod(script, 0o755)
    # The hook runs as script_user ("nobody"): it may append to this one file.
    if not os.path.exists(out):
        open(out, "w").close()
        os.chmod(out, 0o666)
    return script, out


def read_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def per_group(lines: list[str], group: str) -> list[str]:
    """The group's notify lines; vip= is kept on MASTER lines only.

    Hooks run one at a time after the state change, so a BACKUP hook may run
    after the next takeover has already added the address back; a MASTER hook
    runs after its addresses were added (and each MASTER here lasts).
    """
    out = []
    for line in lines:
        if line.split()[1:2] == [group]:
            out.append(line if " MASTER " in line else line.split(" vip=")[0])
    return out


# --------------------------------------------------------------------------- 1. SIGHUP reload


def test_reload_unchanged_tunables_and_bad_config_keep_state(meshd_ready, lab):
    groups = md.default_groups(ADVBASE)
    start_pair(lab, groups)
    time.sleep(0.3)
    before = snapshot(lab)

    # (a) the same file: nothing moves, and the log says so (never "reloaded").
    for n in (1, 2):
        sighup(lab, n)
    for n in (1, 2):
        wait_log_count(lab, n, "reload_unchanged", 1)
        assert log_events(lab, n, "reloaded") == []
    time.sleep(0.5)
    assert snapshot(lab) == before

    # (b) only notify and advskew change: no restart, no state change, the new values apply.
    true = subprocess.run(["sh", "-c", "command -v true"], capture_output=True, text=True).stdout.strip()
    tuned = groups_with(groups, lan={"advskew": {1: 5, 2: 20}}, srv={"notify": [true or "/bin/true"]})
    for n in (1, 2):
        md.write_config(lab.run_dir, n, tuned)
        sighup(lab, n)
    for n, lan in ((1, "group lan: advskew 0 -> 5"), (2, "group lan: advskew 10 -> 20")):
        rec = wait_log_count(lab, n, "reloaded", 1)[-1]
        assert rec.get("changes") == [lan, f"group srv: notify [] -> [{true or '/bin/true'}]"], rec
    wait_for("fw2 to see fw1's new advskew 5 in its adverts",
             lambda: group_status(lab.status(2), "lan").get("peers", {}).get("1", {}).get("advskew") == 5,
             lab, timeout=5)
    time.sleep(0.3)
    assert snapshot(lab) == before
    sts = lab.statuses((1, 2))
    assert group_status(sts[1], "lan")["advskew"] == 5
    assert group_status(sts[2], "lan")["advskew"] == 20

    # (d) a file with an error: refused as a whole, naming the file and the key; old config stays.
    config1 = os.path.join(md.node_dir(lab.run_dir, 1), "meshd.toml")
    bad = groups_with(tuned, lan={"advskew": 300}, srv={"advskew": 7})
    md.write_config(lab.run_dir, 1, bad)
    sighup(lab, 1)
    rec = wait_log_count(lab, 1, "reload_failed", 1)[-1]
    errors = rec.get("errors")
    text = "\n".join(errors) if isinstance(errors, list) else str(errors)
    assert config1 in text and "group[0].advskew" in text and "300" in text, rec
    time.sleep(0.5)
    assert lab.procs.get(meshd_name(1)).alive(), "meshd on fw1 exited after a bad reload"
    assert len(log_events(lab, 1, "reloaded")) == 1, "a refused file must not be reported as reloaded"
    st1 = lab.status(1)
    assert group_status(st1, "lan")["advskew"] == 5, "the running config must stay after a bad reload"
    assert group_status(st1, "srv")["advskew"] == 0, "the valid part of a bad file must not apply either"
    assert snapshot(lab) == before


def test_reload_changed_addresses_restart_only_that_group(meshd_ready, lab):
    groups = md.default_groups(ADVBASE)
    start_pair(lab, groups)
    time.sleep(0.3)
    before = snapshot(lab)
    srv_events = {n: len(log_events(lab, n, "state", group="srv")) for n in (1, 2)}
    new_lan = ("192.0.2.5/24", "2001:db8:1::5/64")
    changed = groups_with(groups, lan={"addresses": list(new_lan)})
    for n in (1, 2):
        md.write_config(lab.run_dir, n, changed)
    for n in (1, 2):           # the master first, the backup right after (as an operator would)
        sighup(lab, n)
    for n in (1, 2):
        rec = wait_log_count(lab, n, "reloaded", 1)[-1]
        changes = rec.get("changes") or []
        assert changes and all(c.startswith("group lan: addresses ") and c.endswith("(the group restarts)")
                               for c in changes), rec
    sts = lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)
    assert group_status(sts[1], "lan")["addresses"] == list(new_lan)
    wait_holders(lab, new_lan, [lab.fw(1)])
    wait_holders(lab, LAN_VIRTUAL, [])           # the old addresses are gone everywhere
    for a in SRV_VIRTUAL:
        assert holders(lab, a) == [lab.fw(1)], a
    after = snapshot(lab)
    for n in (1, 2):
        assert after[n]["srv"] == before[n]["srv"], f"fw{n}: srv must not restart ({before[n]} -> {after[n]})"
    # lan restarted: a fresh runtime on fw1 (BACKUP then MASTER again).
    assert after[1]["lan"][0] == "MASTER"
    for n in (1, 2):
        assert len(log_events(lab, n, "state", group="srv")) == srv_events[n], \
            f"srv changed state on fw{n} during the reload"


def test_reload_removed_group_bows_out(meshd_ready, lab):
    script1, out1 = write_notify_script(lab, 1)
    groups = groups_with(md.default_groups(ADVBASE), lan={"notify": [script1]}, srv={"notify": [script1]})
    start_pair(lab, groups)
    time.sleep(0.3)
    md.write_config(lab.run_dir, 1, [g for g in groups if g["name"] == "lan"])
    sighup(lab, 1)
    wait_log_count(lab, 1, "reloaded", 1)
    lab.wait_states({1: {"lan": "MASTER"}, 2: {"lan": "BACKUP", "srv": "MASTER"}}, GROUPS, timeout=10)
    wait_holders(lab, SRV_VIRTUAL, [lab.fw(2)])
    takeover = log_events(lab, 2, "state", group="srv", new="MASTER")
    assert takeover, "fw2 logged no srv takeover"
    assert takeover[-1].get("reason") == "master node 1 bowed out", \
        f"fw2 took srv over after a timeout instead of at fw1's bow-out: {takeover[-1]}"
    wait_for("fw1's INIT notify for the removed group srv",
             lambda: any(line.startswith("GROUP srv INIT 255") for line in read_lines(out1)), lab, timeout=3)


def test_reload_removing_track_interface_clears_its_demotion(meshd_ready, lab):
    groups = md.default_groups(ADVBASE)
    start(lab, 1, groups, track_interfaces=[{"interface": "sync0", "weight": 50, "demotion_group": "all"}])
    start(lab, 2, groups)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=15)
    lab.topo.ip(lab.fw(1), "link", "set", "sync0", "down")
    lab.wait_states({1: "BACKUP", 2: "MASTER"}, GROUPS, timeout=10)
    assert lab.status(1).get("demotions", {}).get("all") == 50
    md.write_config(lab.run_dir, 1, groups)          # the track_interface is gone
    sighup(lab, 1)
    wait_log_count(lab, 1, "reloaded", 1)
    time.sleep(0.5)
    assert lab.status(1).get("demotions", {}).get("all", 0) == 0, \
        f"demotion of the removed track stays: {lab.status(1).get('demotions')}"
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)


# --------------------------------------------------------------------------- 2. IPv6 election


def capture_v6_advert(lab, group_id: int, node_id: int, timeout: float = 5.0):
    """(advert bytes, source, hop limit, destination) of one advert seen by the client on ff02::12."""
    from meshd.election.wire import ADVERT_LEN, HEADER
    s = ns_socket(lab.client, socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s.bind(("::", ELECTION_PORT))
        index = in_netns(lab.client, socket.if_nametoindex, "eth0")
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     socket.inet_pton(socket.AF_INET6, MCAST6) + struct.pack("=I", index))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, anc, _flags, addr = s.recvmsg(2048, 256)
            except socket.timeout:
                break
            hops = dst = None
            for level, kind, payload in anc:
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
                    hops = struct.unpack("=i", payload[:4])[0]
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    dst = socket.inet_ntop(socket.AF_INET6, payload[:16])
            if len(data) == ADVERT_LEN:
                f = HEADER.unpack_from(data)
                if f[2] == group_id and f[3] == node_id:
                    return data, addr[0], hops, dst
    finally:
        s.close()
    raise AssertionError(f"no IPv6 advert of group {group_id} from node {node_id} on the LAN in {timeout} s")


def test_ipv6_only_groups_elect_and_fail_over(meshd_ready, lab):
    lan6, srv6 = LAN_VIRTUAL[1], SRV_VIRTUAL[1]
    groups = groups_with(md.default_groups(ADVBASE), lan={"addresses": [lan6]}, srv={"addresses": [srv6]})
    start_pair(lab, groups)
    data, source, hops, dst = capture_v6_advert(lab, group_id=1, node_id=1)
    assert dst == MCAST6, f"IPv6 adverts must go to {MCAST6}, went to {dst}"
    assert hops == 255, f"hop limit {hops}, expected 255"
    assert source.startswith("fe80:"), f"adverts should leave from the link-local address, not {source}"
    time.sleep(0.3)
    st2 = lab.status(2)
    for g in GROUPS:
        gs = group_status(st2, g)
        assert gs["adverts"]["received"] > 0, f"fw2 heard no {g} advert: {gs}"
        assert not gs["adverts"]["rejected"], f"fw2 rejected {g} adverts: {gs['adverts']}"
    for a in (lan6, srv6):
        assert holders(lab, a) == [lab.fw(1)], a

    kill_and_unplug(lab, 1)
    lab.wait_states({2: "MASTER"}, GROUPS, timeout=10)
    for a in (lan6, srv6):
        wait_for(f"fw2 to hold {a}", lambda a=a: lab.fw(2) in holders(lab, a), lab, timeout=5)


# --------------------------------------------------------------------------- 3. unicast peers


SYNC_PEERS = {1: [f"{SYNC4}.2"], 2: [f"{SYNC4}.1"]}


def multicast_adverts_on_lan(lab, seconds: float) -> int:
    """How many datagrams reach 224.0.0.18:7112 on the LAN (client side) within `seconds`."""
    s = ns_socket(lab.client, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((MCAST4, ELECTION_PORT))
        index = in_netns(lab.client, socket.if_nametoindex, "eth0")
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(MCAST4) + struct.pack("=4si", b"\0" * 4, index))
        count = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                s.recvfrom(2048)
                count += 1
            except socket.timeout:
                break
        return count
    finally:
        s.close()


def send_unicast_from_client(lab, dest: str, data: bytes, copies: int = 3, ttl: int = 255) -> None:
    s = ns_socket(lab.client, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        s.bind((CLIENT4, 0))
        for _ in range(copies):
            s.sendto(data, (dest, ELECTION_PORT))
            time.sleep(0.01)
    finally:
        s.close()


def test_unicast_peers_elect_fail_over_and_reject_strangers(meshd_ready, lab):
    from meshd.election.wire import Advert, AdvertType, config_digest, encode_advert
    groups = groups_with(md.default_groups(ADVBASE), lan={"peers": SYNC_PEERS}, srv={"peers": SYNC_PEERS})
    start_pair(lab, groups)
    time.sleep(0.3)
    st2 = lab.status(2)
    for g in GROUPS:
        gs = group_status(st2, g)
        assert gs["adverts"]["received"] > 0 and not gs["adverts"]["rejected"], gs
        assert gs["peers"]["1"]["source"] == f"{SYNC4}.1", gs["peers"]
    assert multicast_adverts_on_lan(lab, 0.6) == 0, "a unicast group must not multicast on its interface"

    # An authentic advert (real key) from a host that is not a peer: refused as "unknown peer".
    # Were it believed, the bow-out would hand lan to fw2 at once.
    before_snap = snapshot(lab)
    before = md.rejected(st2, "lan").get("unknown peer", 0)
    keys = cluster_keyring(lab)
    digest = config_digest(1, ADVBASE, LAN_VIRTUAL)
    for kind in (AdvertType.BOWOUT, AdvertType.ADVERT):
        forged = Advert(kind, group_id=1, node_id=1, advbase_ms=ADVBASE, advskew=0, demotion=0,
                        config_digest=digest, key_id=1, epoch=2**32 - 1, counter=2**40)
        send_unicast_from_client(lab, "192.0.2.3", encode_advert(forged, keys.send_key))
    counts = wait_for("fw2 to count the stranger's adverts as unknown peer",
                      lambda: (lambda c: c if c.get("unknown peer", 0) > before else None)(
                          md.rejected(lab.status(2), "lan")), lab, timeout=5)
    print(f"fw2 lan rejected counters: {counts}")
    time.sleep(0.5)
    assert snapshot(lab) == before_snap

    kill_and_unplug(lab, 1)
    lab.wait_states({2: "MASTER"}, GROUPS, timeout=10)
    for a in VIRTUAL_ADDRESSES:
        wait_for(f"fw2 to hold {a}", lambda a=a: lab.fw(2) in holders(lab, a), lab, timeout=5)


def start_lan_unicast_pair(lab, peers: dict[int, list[str]]) -> None:
    """Only the lan group (LAN_VIRTUAL, IPv4 + IPv6), adverts unicast to `peers`."""
    groups = [g for g in groups_with(md.default_groups(ADVBASE), lan={"peers": peers, "sync_set": None})
              if g["name"] == "lan"]
    for n in (1, 2):
        start(lab, n, groups)


def assert_lan_converges_without_rejects(lab) -> None:
    # Both nodes are BACKUP for the first 300 ms: a single look could catch fw1
    # MASTER / fw2 BACKUP on the way to a split brain, so look again a second later.
    wait_for("a lan MASTER", lambda: "MASTER" in [md.group_states(st).get("lan")
                                                  for st in lab.statuses((1, 2)).values()], lab, timeout=10)
    time.sleep(1.0)
    sts = lab.statuses((1, 2))
    states = {n: md.group_states(st).get("lan") for n, st in sts.items()}
    rejects = {n: md.rejected(st) for n, st in sts.items()}
    assert states == {1: "MASTER", 2: "BACKUP"}, \
        f"lan states {states}, rejected adverts {rejects}\n{lab.logs(12)}"
    assert all(r.get("unknown peer", 0) == 0 for r in rejects.values()), rejects


def test_unicast_ipv6_peer_written_in_upper_case(meshd_ready, lab):
    # IPv6 on the sync link, away from the virtual addresses (see the next test for why).
    for n in (1, 2):
        lab.topo.ip(lab.fw(n), "addr", "add", f"2001:db8:3::{n}/64", "dev", "sync0", "nodad")
    start_lan_unicast_pair(lab, {1: ["2001:DB8:3::2"], 2: ["2001:0db8:3::1"]})
    assert_lan_converges_without_rejects(lab)


def test_unicast_ipv6_peers_on_the_virtual_address_subnet(meshd_ready, lab):
    start_lan_unicast_pair(lab, {1: ["2001:db8:1::3"], 2: ["2001:db8:1::2"]})   # each other's lan0
    assert_lan_converges_without_rejects(lab)


# --------------------------------------------------------------------------- 4. interface down


def test_group_interface_down_faults_and_sync_set_follows(meshd_ready, lab):
    start_pair(lab)
    lab.topo.ip(lab.fw(1), "link", "set", "lan0", "down")
    sts = lab.wait_states({1: {"lan": "FAULT", "srv": "BACKUP"}, 2: "MASTER"}, GROUPS, timeout=10)
    lan1 = group_status(sts[1], "lan")
    assert "interface down" in lan1["faults"], lan1
    assert sts[1].get("demotions", {}).get("edge") == 100, sts[1].get("demotions")
    srv2 = group_status(sts[2], "srv")
    assert srv2["last_reason"].startswith("lower demotion"), \
        f"fw2 should take srv because fw1's sync set is demoted: {srv2['last_reason']}"
    # fw1 removed its lan addresses itself (the link being down does not remove them).
    wait_holders(lab, LAN_VIRTUAL, [lab.fw(2)])
    wait_holders(lab, SRV_VIRTUAL, [lab.fw(2)])

    lab.topo.ip(lab.fw(1), "link", "set", "lan0", "up")
    sts = lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)
    assert not group_status(sts[1], "lan")["faults"]
    assert sts[1].get("demotions", {}).get("edge", 0) == 0, sts[1].get("demotions")
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(1)])


# --------------------------------------------------------------------------- 5. tracks


def test_track_script_and_track_interface_move_both_groups(meshd_ready, lab):
    flags = {n: os.path.join(md.node_dir(lab.run_dir, n), "fail-flag") for n in (1, 2)}
    test_bin = subprocess.run(["sh", "-c", "command -v test"], capture_output=True, text=True).stdout.strip()
    if not test_bin.startswith("/"):
        test_bin = "/usr/bin/test"
    scripts = [{"name": "flag", "command": {n: [test_bin, "!", "-e", flags[n]] for n in (1, 2)},
                "interval_ms": 100, "fall": 2, "rise": 2, "weight": 50, "demotion_group": "all"}]
    groups = md.default_groups(ADVBASE)
    start(lab, 1, groups, track_scripts=scripts,
          track_interfaces=[{"interface": "sync0", "weight": 50, "demotion_group": "edge"}])
    start(lab, 2, groups, track_scripts=scripts)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=15)

    open(flags[1], "w").close()
    sts = lab.wait_states({1: "BACKUP", 2: "MASTER"}, GROUPS, timeout=10)
    assert sts[1].get("demotions", {}).get("all") == 50, sts[1].get("demotions")
    assert all(group_status(sts[1], g)["demotion"] == 50 for g in GROUPS)
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(2)])
    assert log_events(lab, 1, "track_script", name="flag", healthy=False), "no track_script event logged"
    os.unlink(flags[1])
    sts = lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)
    assert sts[1].get("demotions", {}).get("all", 0) == 0, sts[1].get("demotions")
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(1)])

    # track_interface: fw1 tracks sync0 (fw2 does not), weight into the sync set counter.
    lab.topo.ip(lab.fw(1), "link", "set", "sync0", "down")
    sts = lab.wait_states({1: "BACKUP", 2: "MASTER"}, GROUPS, timeout=10)
    assert sts[1].get("demotions", {}).get("edge") == 50, sts[1].get("demotions")
    lab.topo.ip(lab.fw(1), "link", "set", "sync0", "up")
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(1)])


def test_track_interface_with_weight_0_faults_the_groups(meshd_ready, lab):
    """keepalived's convention: a track without weight takes the groups out of service."""
    groups = md.default_groups(ADVBASE)
    start(lab, 1, groups, track_interfaces=[{"interface": "sync0", "weight": 0, "demotion_group": "all"}])
    start(lab, 2, groups)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=15)
    lab.topo.ip(lab.fw(1), "link", "set", "sync0", "down")
    sts = lab.wait_states({1: "FAULT", 2: "MASTER"}, GROUPS, timeout=10)
    assert all("tracked interface sync0 failed" in group_status(sts[1], g)["faults"] for g in GROUPS)
    assert sts[1].get("demotions", {}).get("all", 0) == 0   # a fault, not a demotion
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(2)])
    lab.topo.ip(lab.fw(1), "link", "set", "sync0", "up")
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(1)])


# --------------------------------------------------------------------------- 6. meshctl


def test_meshctl_demote_promote_disable_and_bad_requests(meshd_ready, lab):
    from meshd.control.meshctl import request
    # fw2 never preempts; fw1 does: demotion must move the groups all the same.
    groups = groups_with(md.default_groups(ADVBASE), lan={"preempt": {1: True, 2: False}},
                         srv={"preempt": {1: True, 2: False}})
    start_pair(lab, groups)

    r = md.meshctl(lab.run_dir, 1, "demote", "all", "10")
    assert r.returncode == 0, r.stderr
    assert "all is now 10" in r.stdout, r.stdout
    sts = lab.wait_states({1: "BACKUP", 2: "MASTER"}, GROUPS, timeout=10)
    assert all(group_status(sts[2], g)["last_reason"].startswith("lower demotion") for g in GROUPS), \
        [group_status(sts[2], g)["last_reason"] for g in GROUPS]
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(2)])

    r = md.meshctl(lab.run_dir, 1, "promote", "all")
    assert r.returncode == 0, r.stderr
    assert "all is now 0" in r.stdout, r.stdout
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(1)])
    time.sleep(0.3)

    # Bad requests: an error, a clear message, nothing changed.
    before_snap = snapshot(lab)
    before_dem = lab.status(1).get("demotions")
    r = md.meshctl(lab.run_dir, 1, "demote", "nosuch", "5")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert 'unknown demotion counter "nosuch"' in r.stderr and "all" in r.stderr, r.stderr
    r = md.meshctl(lab.run_dir, 1, "disable", "nosuch")
    assert r.returncode == 1 and 'unknown group "nosuch"' in r.stderr, (r.returncode, r.stderr)
    # A non-integer amount is a usage error caught by meshctl itself: exit 2 (documented codes:
    # 1 = meshd answered with an error, 2 = usage); the daemon refuses it the same way.
    r = md.meshctl(lab.run_dir, 1, "demote", "all", "x")
    assert r.returncode == 2 and "invalid int value: 'x'" in r.stderr, (r.returncode, r.stderr)
    answer = request(md.control_socket(lab.run_dir, 1), {"cmd": "demote", "name": "all", "by": "x"})
    assert answer.get("ok") is False, answer
    assert answer["error"].startswith('demote: "by" must be an integer'), answer
    assert answer["error"].endswith('found "x"'), answer
    time.sleep(0.3)
    assert snapshot(lab) == before_snap
    assert lab.status(1).get("demotions") == before_dem

    # disable on the master: it bows out and fw2 takes lan at once; srv stays on fw1.
    r = md.meshctl(lab.run_dir, 1, "disable", "lan")
    assert r.returncode == 0 and "lan is now DISABLED" in r.stdout, (r.stdout, r.stderr)
    sts = lab.wait_states({1: {"lan": "DISABLED", "srv": "MASTER"}, 2: {"lan": "MASTER", "srv": "BACKUP"}},
                          GROUPS, timeout=10)
    assert group_status(sts[2], "lan")["last_reason"] == "master node 1 bowed out", \
        group_status(sts[2], "lan")["last_reason"]
    wait_holders(lab, LAN_VIRTUAL, [lab.fw(2)])
    assert all(holders(lab, a) == [lab.fw(1)] for a in SRV_VIRTUAL)

    r = md.meshctl(lab.run_dir, 1, "enable", "lan")
    assert r.returncode == 0, r.stderr
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=10)
    wait_holders(lab, VIRTUAL_ADDRESSES, [lab.fw(1)])


# --------------------------------------------------------------------------- 7. notify hooks


def test_notify_hooks_after_failover_and_restart(meshd_ready, lab):
    scripts = {n: write_notify_script(lab, n) for n in (1, 2)}
    notify = {n: [scripts[n][0]] for n in (1, 2)}
    groups = groups_with(md.default_groups(ADVBASE), lan={"notify": notify}, srv={"notify": notify})
    out1, out2 = scripts[1][1], scripts[2][1]
    # fw1 first: started together, fw2 may win the first 300 ms and add a MASTER/BACKUP pair.
    start(lab, 1, groups)
    lab.wait_states({1: "MASTER"}, GROUPS, timeout=15)
    start(lab, 2, groups)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=15)

    def expect(path: str, want: dict[str, list[str]], timeout: float = 5.0) -> None:
        def ok():
            lines = read_lines(path)
            return all(per_group(lines, g) == w for g, w in want.items())
        try:
            wait_for(f"notify lines {want} in {path}", ok, lab, timeout)
        except AssertionError as e:
            raise AssertionError(f"{path} holds:\n" + "\n".join(read_lines(path)) + f"\n{e}") from None

    # fw2's advskew is 10: priority 255 - 10 = 245.  vip= tells whether the address was there.
    expect(out1, {g: [f"GROUP {g} BACKUP 255", f"GROUP {g} MASTER 255 vip=yes"] for g in GROUPS})
    expect(out2, {g: [f"GROUP {g} BACKUP 245"] for g in GROUPS})

    kill_and_unplug(lab, 1)
    lab.wait_states({2: "MASTER"}, GROUPS, timeout=10)
    expect(out2, {g: [f"GROUP {g} BACKUP 245", f"GROUP {g} MASTER 245 vip=yes"] for g in GROUPS})

    lab.topo.reset_fw(1)                  # links up, the dead master's addresses gone
    start(lab, 1, groups)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=15)
    expect(out1, {g: [f"GROUP {g} BACKUP 255", f"GROUP {g} MASTER 255 vip=yes"] * 2 for g in GROUPS})
    expect(out2, {g: [f"GROUP {g} BACKUP 245", f"GROUP {g} MASTER 245 vip=yes",
                      f"GROUP {g} BACKUP 245"] for g in GROUPS})


def test_announcements_stop_when_the_group_stops_being_master(meshd_ready, lab):
    """A node that loses mastership mid-burst stops announcing the addresses as its own
    (otherwise its late GARPs would point the neighbours back at it)."""
    groups = md.default_groups(100)
    for g in groups:
        g.update({"garp_count": 40, "garp_interval_ms": 100})     # 4 s of announcements
    md.start_meshd(lab.procs, lab.topo, 2, groups, 100)
    names = [g["name"] for g in groups]
    lab.wait_states({2: "MASTER"}, names, timeout=10)
    md.start_meshd(lab.procs, lab.topo, 1, groups, 100)           # preferred: preempts at once
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, names, timeout=10)
    deadline = time.monotonic() + 5
    while True:
        cancelled = {r.get("group") for r in md.log_events(lab.procs.get("meshd-fw2").log, "announce_cancelled")}
        if cancelled == set(names) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert cancelled == set(names)
