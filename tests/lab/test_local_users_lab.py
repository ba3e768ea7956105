"""Local users against a running node: meshd's ports, secret file and control socket.

Root only (tests/lab/conftest.py skips otherwise); the `lab` fixture builds
two firewalls and always tears them down with every process started in them.

A process on fw2 that has dropped to uid nobody with no capability
(tests/lab/local_user.py) tries what issue 11 found it could do: bind the
election port (and the state mesh's) with SO_REUSEADDR / SO_REUSEPORT, on
the wildcard, on the node's own addresses and on the multicast group, and
take the unicast adverts meant for meshd, which then believed its master
dead and took over.  It also sends forged adverts and frames to both ports,
tries to read the cluster secret and to connect to the control socket.

What must hold: every bind that would share meshd's sockets fails, a socket
it does get receives nothing, meshd on fw2 receives every advert fw1 sends,
no state changes (no takeover, the state mesh stays in sync with the same
peer epoch), the forged adverts are counted as rejected, and the secret
file and the control socket are closed to it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
from meshlab import meshd_node as md
from meshlab.nsutil import in_netns
from meshlab.topology import LAN4, SYNC4

pytestmark = pytest.mark.lab

LOCAL_USER = Path(__file__).with_name("local_user.py")
ELECTION_PORT, SYNC_PORT = 7112, md.SYNC_PORT
MCAST4, MCAST6 = "224.0.0.18", "ff02::12"
ADVBASE = 100
GROUPS = ("lan", "srv")
LISTEN_S = 3.0     # ten times what fw2 waits before it takes over from a silent master
FW2_SYNC, FW2_LAN = f"{SYNC4}.2", f"{LAN4}.3"


def groups() -> list[dict]:
    """lan: adverts unicast over the sync link (the case of the finding); srv: multicast."""
    out = md.default_groups(ADVBASE)
    out[0]["peers"] = {1: [f"{SYNC4}.2"], 2: [f"{SYNC4}.1"]}
    return out


def group(st: dict, name: str) -> dict:
    return next(g for g in st["groups"] if g["name"] == name)


def forgeries() -> list[dict]:
    """Adverts under a key the cluster does not have (a bow-out from node 1 would hand
    fw2 the groups at once if believed), and a sync heartbeat with a made-up tag."""
    from meshd.crypto import ELECTION_INFO, KeyRing
    from meshd.election.wire import Advert, AdvertType, config_digest, encode_advert
    from meshd.sync.frames import HEADER, VERSION, FrameType
    wrong = KeyRing.from_secrets({1: os.urandom(32)}, 1, ELECTION_INFO).send_key
    out = []
    for gid, name in ((1, "lan"), (2, "srv")):
        addresses = md.default_groups(ADVBASE)[gid - 1]["addresses"]
        for kind in (AdvertType.BOWOUT, AdvertType.ADVERT):
            advert = Advert(kind, group_id=gid, node_id=1, advbase_ms=ADVBASE, advskew=0, demotion=0,
                            config_digest=config_digest(gid, ADVBASE, tuple(addresses)), key_id=1,
                            epoch=2**32 - 1, counter=2**40)
            for source, dest in ((FW2_SYNC, FW2_SYNC), ("127.0.0.1", "127.0.0.1"), (FW2_LAN, FW2_LAN)):
                out.append({"what": f"advert {name} {kind.name}", "from": source, "to": dest,
                            "port": ELECTION_PORT, "copies": 3,
                            "data": encode_advert(advert, wrong).hex()})
    frame = HEADER.pack(VERSION, FrameType.HEARTBEAT, 1, 0, 1, 2**32 - 1, os.urandom(16), 2**40) + os.urandom(48)
    for source, dest in ((FW2_SYNC, FW2_SYNC), ("127.0.0.1", "127.0.0.1")):
        out.append({"what": "sync heartbeat", "from": source, "to": dest, "port": SYNC_PORT,
                    "copies": 3, "data": frame.hex()})
    return out


def run_local_user(lab, plan: dict) -> dict:
    argv = [sys.executable, "-I", str(LOCAL_USER), json.dumps(plan)]
    proc = lab.procs.start("local-user-fw2", lab.fw(2), argv, stdout_pipe=True)
    out, _ = proc.popen.communicate(timeout=LISTEN_S + 30)
    assert proc.popen.returncode == 0, f"local_user.py failed:\n{lab.logs(20)}"
    return json.loads(out.strip().splitlines()[-1])


def test_local_user_can_neither_share_the_ports_nor_change_state(meshd_ready, lab):
    sync = md.sync_section()
    for n in (1, 2):
        md.start_meshd(lab.procs, lab.topo, n, groups(), ADVBASE, sync=sync)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=15)
    md.wait_in_sync(lab.run_dir, (1, 2), timeout=15, procs=lab.procs)
    # Open the run directory to everyone: only the files' own modes protect them now.
    os.chmod(lab.run_dir, 0o755)
    secret = os.path.join(lab.run_dir, "cluster.key")
    srv0 = in_netns(lab.fw(2), socket.if_nametoindex, "srv0")
    plan = {"ports": [ELECTION_PORT, SYNC_PORT],
            "addresses4": ["0.0.0.0", FW2_SYNC, FW2_LAN, "127.0.0.1", MCAST4], "addresses6": ["::"],
            "groups": [MCAST4, MCAST6], "ifindex": {MCAST4: srv0, MCAST6: srv0},
            "forgeries": forgeries(), "listen_s": LISTEN_S,
            "files": [secret], "control_sockets": [md.control_socket(lab.run_dir, 2)]}

    before1, before2 = lab.status(1), lab.status(2)
    sync_before = md.sync_stats(lab.run_dir, 2)
    result = run_local_user(lab, plan)
    after2, after1 = lab.status(2), lab.status(1)
    sync_after = md.sync_stats(lab.run_dir, 2)
    print(json.dumps(result, indent=1))

    # It really was an unprivileged user.
    assert (result["uid"], result["euid"]) == (65534, 65534), result
    assert int(result["cap_eff"], 16) == 0, result["cap_eff"]
    assert result["files"] == {secret: "Permission denied"}, result["files"]
    assert set(result["control"].values()) == {"Permission denied"}, result["control"]

    # No bind shares meshd's sockets: every IPv4 one, and every dual-stack IPv6 one
    # (it covers IPv4), fails whatever the options.  Both ports carry IPv4 here, so
    # meshd holds no IPv6 socket and an IPv6-only bind succeeds: it must hear nothing.
    covering = [b for b in result["binds"] if ":" not in b["address"] or not b["v6only"]]
    assert len(covering) == 2 * 6 * 3
    assert {b["bind"] for b in covering} == {"Address already in use"}, \
        [b for b in covering if b["bind"] != "Address already in use"]
    shared = [b for b in result["binds"] if b["bind"] == "bound" and b["received"]]
    assert not shared, f"a local user received meshd's datagrams: {shared}"

    # meshd on fw2 heard every advert fw1 sent meanwhile (slack: the two status reads
    # are not at the same instant), and nothing moved.
    for name in GROUPS:
        sent = group(after1, name)["adverts"]["sent"] - group(before1, name)["adverts"]["sent"]
        got = group(after2, name)["adverts"]["received"] - group(before2, name)["adverts"]["received"]
        assert sent > 20 and got >= sent - 15, f"{name}: fw1 sent {sent} adverts, fw2 received {got}"
        for st_before, st_after in ((before1, after1), (before2, after2)):
            b, a = group(st_before, name), group(st_after, name)
            assert (a["state"], a["transitions"], a["master"]) == (b["state"], b["transitions"], b["master"])
    assert md.group_states(after2) == {"lan": "BACKUP", "srv": "BACKUP"}

    # The forged adverts reached meshd and were refused, every copy.
    delivered = sum(f["sent"] for f in result["forgeries"] if f["port"] == ELECTION_PORT)
    assert delivered == 36, result["forgeries"]
    rejected = sum(after2["rejected"].values()) - sum(before2["rejected"].values())
    assert rejected >= delivered, (before2["rejected"], after2["rejected"])
    print(f"fw2 rejected adverts: {before2['rejected']} -> {after2['rejected']}")

    # The state mesh: still in sync with fw1's same epoch, still hearing it.
    assert md.in_sync(sync_after), sync_after.get("sync", {}).get("sync_reason")
    peer_b, peer_a = md.peer_stats(sync_before, 1), md.peer_stats(sync_after, 1)
    assert peer_a["epoch"] == peer_b["epoch"]
    assert peer_a["absent"] is False and peer_a["since_last_frame_s"] < 1.5, peer_a
    # The forged frames that reached it (those to its sync0 address: the socket is bound
    # to that device) were refused by the tag.
    rej_b, rej_a = sync_before["sync"]["rejected"], sync_after["sync"]["rejected"]
    assert rej_a.get("bad tag", 0) - rej_b.get("bad tag", 0) >= 3, (rej_b, rej_a)
    print(f"fw2 sync rejected: {rej_b} -> {rej_a}")
