"""meshd.kernel against the real kernel, inside throw-away network namespaces.

Topology: namespace A (the "master", interface va) <-veth-> namespace B (a
"host" on the segment, interface vb). The code under test runs in python
subprocesses inside A via `ip netns exec`; B checks what arrives on the wire
and what its neighbour cache learned from it.
"""

import json
import os

import pytest

from netns import Netns, read_line, veth

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

V4, V6 = "192.0.2.1/24", "2001:db8:1::1/64"


@pytest.fixture
def pair():
    """Namespaces A and B joined by veth va <-> vb; always deleted afterwards."""
    made = []
    try:
        a = Netns()
        made.append(a)
        b = Netns()
        made.append(b)
        veth(a, "va", b, "vb")
        yield a, b
    finally:
        for ns in made:
            ns.close()


def mac_of(ns: Netns, dev: str) -> str:
    return json.loads(ns.ip("-j", "link", "show", "dev", dev).stdout)[0]["address"]


ADDR_SCRIPT = r"""
import json, sys, time
from meshd.kernel.addresses import add_addresses, remove_addresses, interface_addresses, AddressError
V4, V6 = sys.argv[1:3]
out = {}
t = time.perf_counter()
out["add"] = add_addresses("va", (V4, V6))
out["add_ms"] = (time.perf_counter() - t) * 1000
out["after_add"] = sorted(interface_addresses("va"))
out["readd"] = add_addresses("va", (V4, V6))
out["other_prefix"] = add_addresses("va", ("2001:db8:1::1/48",))
out["bad"] = add_addresses("va", ("ff02::5/64", "0.0.0.0/8", "nonsense"))
out["remove"] = remove_addresses("va", (V4, V6))
out["after_remove"] = sorted(interface_addresses("va"))
out["reremove"] = remove_addresses("va", (V4, V6))
try:
    add_addresses("nosuch0", (V4,))
except AddressError as e:
    out["missing"] = str(e)
print(json.dumps(out))
"""


def test_addresses(pair):
    a, _ = pair
    out = json.loads(a.run_py(ADDR_SCRIPT, V4, V6))
    assert out["add"] == []
    assert {V4, V6} <= set(out["after_add"])
    assert out["readd"] == []                       # idempotent
    assert len(out["other_prefix"]) == 1 and "different prefix" in out["other_prefix"][0]
    assert len(out["bad"]) == 3
    assert all(" on va: " in e for e in out["bad"])
    assert "EADDRNOTAVAIL" in out["bad"][0]
    assert out["remove"] == []
    assert not {V4, V6} & set(out["after_remove"])
    assert out["reremove"] == []                    # idempotent
    assert "nosuch0" in out["missing"]
    assert out["add_ms"] < 500


def test_ipv6_vip_is_usable_at_once(pair):
    """NODAD: the address is never tentative, so it can be used immediately."""
    a, _ = pair
    a.run_py("from meshd.kernel.addresses import add_addresses as f; assert f('va', ('%s',)) == []" % V6)
    info = json.loads(a.ip("-j", "addr", "show", "dev", "va").stdout)[0]["addr_info"]
    (vip,) = [x for x in info if x["local"] == V6.split("/")[0]]
    assert vip.get("nodad") and not vip.get("tentative")


RECEIVER = r"""
import json, socket, sys, time
count = int(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
s.bind(("vb", 0))
s.settimeout(0.2)
print("ready", flush=True)
arp, na = [], []
deadline = time.monotonic() + 10
while time.monotonic() < deadline and (len(arp) < count or len(na) < count):
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if f[12:14] == b"\x08\x06":
        arp.append(f.hex())
    elif f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136:
        na.append(f.hex())
print(json.dumps({"arp": arp, "na": na}))
"""

ANNOUNCE = r"""
import sys, trio
from meshd.kernel.announce import announce
trio.run(announce, "va", tuple(sys.argv[1:3]), int(sys.argv[3]), 50)
"""

FRAMES = r"""
import json, sys
from meshd.kernel.announce import Announcer
with Announcer("va") as a:
    print(json.dumps([a.frame(x).hex() for x in sys.argv[1:3]] + [a.router]))
"""


def neigh(ns: Netns, dev: str) -> dict:
    return {n["dst"]: n for n in json.loads(ns.ip("-j", "neigh", "show", "dev", dev).stdout)}


def test_announce_received_and_learned(pair):
    a, b = pair
    b.ip("addr", "add", "192.0.2.2/24", "dev", "vb")
    b.ip("addr", "add", "2001:db8:1::2/64", "dev", "vb", "nodad")
    # B believes the VIPs live at some other (old master's) MAC.
    old = "02:00:00:00:00:99"
    b.ip("neigh", "replace", "192.0.2.1", "lladdr", old, "dev", "vb", "nud", "stale")
    b.ip("neigh", "replace", "2001:db8:1::1", "lladdr", old, "dev", "vb", "nud", "stale")
    a.run_py("from meshd.kernel.addresses import add_addresses as f; assert f('va', %r) == []" % ((V4, V6),))

    rx = b.start_py(RECEIVER, 2)
    assert read_line(rx, 20) == "ready"
    a.run_py(ANNOUNCE, V4, V6, 2)
    out, err = rx.communicate(timeout=20)
    got = json.loads(out)

    garp, na, router = json.loads(a.run_py(FRAMES, V4, V6))
    assert router is False                       # forwarding off in a fresh namespace
    assert got["arp"] == [garp, garp]            # exactly our frames, count bursts
    assert got["na"] == [na, na]

    # The receiving kernel accepted them: B's cache now points at A's MAC.
    # (For the NA this also proves hop limit, checksum and option are right.)
    mac = mac_of(a, "va")
    n = neigh(b, "vb")
    assert n["192.0.2.1"]["lladdr"] == mac
    assert n["2001:db8:1::1"]["lladdr"] == mac
    assert "router" not in n["2001:db8:1::1"]


def test_announce_router_flag_follows_forwarding(pair):
    a, b = pair
    b.ip("addr", "add", "2001:db8:1::2/64", "dev", "vb", "nodad")
    b.ip("neigh", "replace", "2001:db8:1::1", "lladdr", "02:00:00:00:00:99", "dev", "vb", "nud", "stale")
    a.sysctl("net.ipv6.conf.va.forwarding", "1")
    a.run_py(ANNOUNCE, V6, V6, 1)
    entry = neigh(b, "vb")["2001:db8:1::1"]
    assert entry["lladdr"] == mac_of(a, "va")
    assert "router" in entry


ANNOUNCE_ERRORS = r"""
import json, trio
from meshd.kernel.announce import announce, AnnounceError
out = []
for dev in ("va", "nosuch0"):
    try:
        trio.run(announce, dev, ("192.0.2.1/24",), 1, 10)
        out.append(None)
    except AnnounceError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def test_announce_errors(pair):
    a, _ = pair
    a.ip("link", "set", "va", "down")
    down, missing = json.loads(a.run_py(ANNOUNCE_ERRORS))
    assert "va" in down and "192.0.2.1" in down and "ENETDOWN" in down
    assert "nosuch0" in missing and "192.0.2.1" in missing


MONITOR = r"""
import json, socket, subprocess, sys, time
import trio
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from meshd.kernel.links import LinkMonitor, initial_state, parse_link_messages, is_up
peer_ns = sys.argv[1]

# A second raw subscriber records the same datagrams for the pyroute2 cross-check.
raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
raw.bind((0, 1))
mon = LinkMonitor(["va"])
out = {"initial": initial_state(["va", "nosuch0"]), "steps": []}
events = []

async def until(pred):
    with trio.fail_after(5):
        while not any(pred(e) for e in events):
            await trio.sleep(0.01)

steps = [
    (["ip", "link", "set", "va", "down"], False, False),
    (["ip", "link", "set", "va", "up"], True, False),
    (["ip", "-n", peer_ns, "link", "set", "vb", "down"], False, False),  # carrier loss
    (["ip", "-n", peer_ns, "link", "set", "vb", "up"], True, False),
    (["ip", "link", "del", "va"], False, True),
]

async def main():
    async with trio.open_nursery() as n:
        n.start_soon(mon.run, events.append)
        for cmd, up, deleted in steps:
            events.clear()
            subprocess.run(cmd, check=True)
            await until(lambda e: e.name == "va" and e.up == up and e.deleted == deleted)
            out["steps"].append([cmd[-1], up, deleted])
        n.cancel_scope.cancel()

trio.run(main)
mon.close()

ours, theirs = [], []
while True:
    try:
        data = raw.recv(1 << 16)
    except BlockingIOError:
        break
    ours += [[e.index, e.name, e.up, e.deleted] for e in parse_link_messages(data)]
    for m in MarshalRtnl().parse(data):
        if m["header"]["type"] in (16, 17) and m["family"] == 0:
            deleted = m["header"]["type"] == 17
            theirs.append([m["index"], m.get_attr("IFLA_IFNAME"), is_up(m["flags"]) and not deleted, deleted])
out["ours"], out["theirs"] = ours, theirs
print(json.dumps(out))
"""


def test_link_monitor(pair):
    a, b = pair
    out = json.loads(a.run_py(MONITOR, b.name))
    assert out["initial"] == {"va": True, "nosuch0": False}
    assert len(out["steps"]) == 5
    assert out["ours"] and out["ours"] == out["theirs"]   # decoder agrees with pyroute2
    assert any(e[1] == "va" and e[3] for e in out["ours"])


OVERFLOW = r"""
import json, sys
import trio
from pyroute2 import IPRoute
from meshd.kernel.links import LinkMonitor

watch = None if sys.argv[1] == "all" else ["va"]
mon = LinkMonitor(watch, rcvbuf=1)   # the kernel rounds this up to its minimum
with IPRoute() as ipr:
    idx = ipr.link_lookup(ifname="va")[0]
    for i in range(200):               # far more notifications than fit
        ipr.link("set", index=idx, state="down" if i % 2 == 0 else "up")
    ipr.link("set", index=idx, state="down")
events = []

async def main():
    async with trio.open_nursery() as n:
        n.start_soon(mon.run, events.append)
        with trio.move_on_after(5):
            while not mon.resyncs:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        n.cancel_scope.cancel()

trio.run(main)
mon.close()
va = [e for e in events if e.name == "va"]
print(json.dumps({"resyncs": mon.resyncs, "last": [va[-1].up, va[-1].deleted] if va else None}))
"""


@pytest.mark.parametrize("watch", ["va", "all"])
def test_link_monitor_survives_overflow(pair, watch):
    a, _ = pair
    out = json.loads(a.run_py(OVERFLOW, watch))
    assert out["resyncs"] >= 1
    assert out["last"] == [False, False]               # the resync's current state: down


BRIDGE_PORT = r"""
import json, subprocess
import trio
from meshd.kernel.links import LinkMonitor

mon = LinkMonitor(["va"])
events = []

async def main():
    async with trio.open_nursery() as n:
        n.start_soon(mon.run, events.append)
        for cmd in ("ip link add br0 type bridge", "ip link set va master br0",
                    "ip link set va nomaster", "ip link del br0"):
            subprocess.run(cmd.split(), check=True)
        with trio.fail_after(5):
            while not any(e.name == "br0" and e.deleted for e in events):
                await trio.sleep(0.01)
        n.cancel_scope.cancel()

trio.run(main)
mon.close()
print(json.dumps([[e.name, e.deleted] for e in events]))
"""


def test_bridge_port_release_is_not_deletion(pair):
    """The bridge sends RTM_DELLINK (family AF_BRIDGE) when a port leaves it."""
    a, _ = pair
    events = json.loads(a.run_py(BRIDGE_PORT))
    assert ["va", False] in events
    assert ["va", True] not in events
