"""The nftables load balancer, the NFLOG reader and conntrack clean-up against the real kernel.

Topology (namespaces nf-<pid>-<n>, built once for the module, always deleted):

    client ──veth── firewall ──veth── backends
    10.9.1.2-21      10.9.1.1          10.9.2.11, .12, .13 (TCP 8080 answers its
    fd00:9:1::2      VIP 10.9.1.100    address and closes; 8090 answers and holds;
                     VIP fd00:9:1::100 UDP 8080 answers its address; 8081 closed)

The code under test runs in an agent process inside the firewall namespace
(a LoadBalancer, an NflogReader) driven over JSON lines; clients run in the
client namespace. Each test reconciles the table it needs, so tests do not
depend on each other's order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest

from netns import REPO, Netns, _env, read_line, veth

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs the nft command"),
]

VIP4, VIP6 = "10.9.1.100", "fd00:9:1::100"
B4 = ["10.9.2.11", "10.9.2.12", "10.9.2.13"]
B6 = ["fd00:9:2::11", "fd00:9:2::12", "fd00:9:2::13"]
CLIENTS4 = [f"10.9.1.{i}" for i in range(2, 22)]
CLIENT6 = "fd00:9:1::2"

BACKEND_SERVER = r"""
import socket, sys, threading
def tcp(addr, port, hold):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(256)
    while True:
        c, _ = s.accept()
        c.sendall(addr.encode() + b"\n")
        if hold:
            threading.Thread(target=lambda c=c: (c.recv(1), c.close()), daemon=True).start()
        else:
            c.close()
def udp(addr, port):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        _, peer = s.recvfrom(100)
        s.sendto(addr.encode(), peer)
for a in sys.argv[1:]:
    for args in ((tcp, a, 8080, False), (tcp, a, 8090, True), (udp, a, 8080)):
        threading.Thread(target=args[0], args=args[1:], daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

FIREWALL_AGENT = r"""
import json, select, sys, time, traceback
import trio
from meshd.kernel import conntrack
from meshd.kernel.nft import Backend, LbRedirect, LoadBalancer, Nft, NftError, matching_states
from meshd.kernel.nflog import NflogReader

current = {}
readers = {}

def lb():
    return current["lb"]

def reconcile(redirects, backend="library"):
    if current.get("backend") != backend:
        current.update(lb=LoadBalancer(nft=Nft(backend)), backend=backend)
    lb().reconcile([LbRedirect(**r) for r in redirects])

def set_backends(name, backends):
    return [[b.address, b.port] for b in lb().set_backends(name, [Backend(*b) for b in backends])]

def toggle(name, first, second, times):
    t0 = time.perf_counter()
    for i in range(times):
        lb().set_backends(name, [Backend(*b) for b in (first if i % 2 else second)])
    return (time.perf_counter() - t0) / times

def nft(script):
    return Nft().run_script(script)

def nft_text(script):
    return Nft().list_text(script)

def nft_json(commands, backend):
    return Nft(backend).run(commands)

def nflog_open(group):
    readers[group] = NflogReader(group)

def nflog_receive(group, timeout):
    async def main():
        with trio.move_on_after(timeout):
            return await readers[group].receive()
        return []
    return [list(r) for r in trio.run(main)]

def states(address, port):
    return len(matching_states(conntrack.dump_table(), address, port))

OPS = {f.__name__: f for f in (reconcile, set_backends, toggle, nft, nft_text, nft_json, nflog_open, nflog_receive,
                                states)}
OPS["rule_handles"] = lambda: lb().rule_handles()
OPS["slot_map"] = lambda name: sorted(lb().slot_map(name).items())
OPS["sticky_entries"] = lambda name: [[c, [str(ip), p]] for c, (ip, p) in lb().sticky_entries(name)]
OPS["remove"] = lambda: lb().remove()
OPS["exists"] = lambda: lb().exists()
OPS["delete_states"] = lambda address, port: lb().delete_states(address, port)

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    try:
        reply = {"ok": True, "result": OPS[req["op"]](*req["args"])}
    except Exception as e:
        reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    print(json.dumps(reply), flush=True)
"""

CLIENT = r"""
import json, socket, sys
target, port, n, proto, sources, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \
    json.loads(sys.argv[5]), float(sys.argv[6])
fam = socket.AF_INET6 if ":" in target else socket.AF_INET
out = []
for i in range(n):
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if sources:
            s.bind((sources[i % len(sources)], 0))
        s.connect((target, port))
        if proto == "udp":
            s.send(b"?")
        out.append(s.recv(100).decode().strip())
    except ConnectionRefusedError:
        out.append("refused")
    except socket.timeout:
        out.append("timeout")
    except OSError as e:
        out.append(f"error {e.errno}")
    finally:
        s.close()
print(json.dumps(out))
"""

# Connections for `seconds`, each answer counted; run while the firewall swaps maps.
CLIENT_LOOP = r"""
import json, socket, sys, time
target, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
counts = {}
print("started", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((target, port)); key = s.recv(100).decode().strip() or "empty answer"
    except ConnectionRefusedError:
        key = "refused"
    except socket.timeout:
        key = "timeout"
    except OSError as e:
        key = f"error {e.errno}"
    finally:
        s.close()
    counts[key] = counts.get(key, 0) + 1
print(json.dumps(counts), flush=True)
"""


class Agent:
    """A python process in a namespace answering JSON-line requests; killed by pid on close."""

    def __init__(self, ns: Netns, code: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", code],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env(), cwd=REPO)
        ready = read_line(self.proc, 30)
        assert json.loads(ready) == {"ready": True}, ready

    def call(self, op: str, *args, timeout: float = 60):
        self.proc.stdin.write(json.dumps({"op": op, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(read_line(self.proc, timeout))
        if not reply["ok"]:
            raise AgentError(reply["error"], reply["trace"])
        return reply["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class AgentError(AssertionError):
    def __init__(self, error: str, trace: str):
        super().__init__(f"{error}\n{trace}")
        self.error = error


class Lab:
    def __init__(self):
        self.made: list[Netns] = []
        self.agent: Agent | None = None
        try:
            self.client, self.fw, self.backends = (self._ns() for _ in range(3))
            veth(self.client, "vc", self.fw, "vfc")
            veth(self.fw, "vfb", self.backends, "vb")
            for a in CLIENTS4:
                self.client.ip("addr", "add", f"{a}/24", "dev", "vc")
            self.client.ip("addr", "add", f"{CLIENT6}/64", "dev", "vc", "nodad")
            self.client.ip("route", "add", "default", "via", "10.9.1.1")
            self.client.ip("-6", "route", "add", "default", "via", "fd00:9:1::1")
            for a in ("10.9.1.1/24", f"{VIP4}/32"):
                self.fw.ip("addr", "add", a, "dev", "vfc")
            for a in ("fd00:9:1::1/64", f"{VIP6}/128"):
                self.fw.ip("addr", "add", a, "dev", "vfc", "nodad")
            self.fw.ip("addr", "add", "10.9.2.1/24", "dev", "vfb")
            self.fw.ip("addr", "add", "fd00:9:2::1/64", "dev", "vfb", "nodad")
            for a in B4:
                self.backends.ip("addr", "add", f"{a}/24", "dev", "vb")
            for a in B6:
                self.backends.ip("addr", "add", f"{a}/64", "dev", "vb", "nodad")
            self.backends.ip("route", "add", "default", "via", "10.9.2.1")
            self.backends.ip("-6", "route", "add", "default", "via", "fd00:9:2::1")
            self.fw.sysctl("net.ipv4.ip_forward", "1")
            self.fw.sysctl("net.ipv6.conf.all.forwarding", "1")
            server = self.backends.start_py(BACKEND_SERVER, *B4, *B6)
            assert read_line(server, 30) == "ready"
            self.agent = Agent(self.fw, FIREWALL_AGENT)
        except BaseException:
            self.close()
            raise

    def _ns(self) -> Netns:
        ns = Netns(prefix="nf")
        self.made.append(ns)
        # No duplicate address detection on the veths' link-local addresses:
        # while they are tentative, the first IPv6 packets of a fresh lab can
        # wait for neighbour discovery longer than a check's timeout.
        for scope in ("default", "all"):
            ns.sysctl(f"net.ipv6.conf.{scope}.accept_dad", "0")
        return ns

    def connect(self, target: str, port: int, n: int, *, proto: str = "tcp", sources=(), timeout: float = 1.0):
        """n new connections from the client; the answer (a backend address) or failure of each."""
        return json.loads(self.client.run_py(CLIENT, target, port, n, proto, json.dumps(list(sources)), timeout))

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
        for ns in self.made:
            ns.close()


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def web(**kw):
    r = {"name": "web", "address": VIP4, "port": 80, "slots": 6}
    r.update(kw)
    return r


def backends(addrs, port=8080, weights=None):
    return [[a, port, (weights or {}).get(a, 1)] for a in addrs]


# --- every template the module renders loads into the kernel ------------------------------

@pytest.mark.parametrize("nft_backend", ["library", "command"])
def test_every_statement_template_loads(lab, nft_backend):
    redirects = []
    for fam, vip, addrs in ((4, VIP4, B4), (6, VIP6, B6)):
        for proto in ("tcp", "udp"):
            for i, mode in enumerate(("round-robin", "weighted", "random", "source-hash")):
                redirects.append({
                    "name": f"r{fam}{proto}{i}", "address": vip, "port": 1000 + 10 * i + (proto == "udp"),
                    "protocol": proto, "mode": mode, "slots": 7,
                    "sticky_timeout_s": 30 if fam == 4 else None,
                    "nflog_group": 40 + i if proto == "tcp" else None})
    lab.agent.call("reconcile", redirects, nft_backend)
    for r in redirects:
        assert lab.agent.call("set_backends", r["name"], backends(B4 if r["address"] == VIP4 else B6, 9000))
    listing = lab.agent.call("nft_text", "list table inet meshd")
    handles = lab.agent.call("rule_handles")
    # per redirect: DNAT + refuse (+ sticky hit); forward: RST log (tcp) + sticky learning (v4)
    assert len(handles["prerouting"]) == 2 * len(redirects) + 8
    assert len(handles["forward"]) == 8 + 8
    assert listing.count("dnat ip6 to numgen random mod 7 map @slots_r6tcp2") == 1
    assert "jhash ip saddr mod 7 seed 0x" in listing
    # nft prints `reject with icmpx port-unreachable` in its short form
    assert 'udp dport 1001 reject comment "r4udp0: no live backend"' in listing
    assert 'tcp dport 1000 reject with tcp reset comment "r4tcp0: no live backend"' in listing
    assert "update @sticky_r4udp3 { ip saddr : ip daddr . udp dport }" in listing
    assert 'log prefix "r6tcp0" group 40' in listing
    lab.agent.call("remove")


# --- distribution, atomic swaps, refusing when empty ----------------------------------------

def test_round_robin_spreads_and_swaps_without_rule_changes(lab):
    lab.agent.call("reconcile", [web()])
    assert lab.connect(VIP4, 80, 2) == ["refused", "refused"]        # no backend yet: refused, not forwarded
    lab.agent.call("set_backends", "web", backends(B4))
    handles = lab.agent.call("rule_handles")
    got = Counter(lab.connect(VIP4, 80, 12))
    assert got == {B4[0]: 4, B4[1]: 4, B4[2]: 4}
    lab.agent.call("set_backends", "web", backends(B4[:2]))
    got = Counter(lab.connect(VIP4, 80, 12))
    assert got == {B4[0]: 6, B4[1]: 6}                              # the removed backend gets nothing
    assert lab.agent.call("rule_handles") == handles                 # only elements changed
    assert {tuple(v) for _, v in lab.agent.call("slot_map", "web")} == {(B4[0], 8080), (B4[1], 8080)}
    lab.agent.call("set_backends", "web", [])
    assert set(lab.connect(VIP4, 80, 4)) == {"refused"}              # the firewall's reset, not a backend
    assert lab.agent.call("slot_map", "web") == []
    assert lab.agent.call("rule_handles") == handles


def test_swaps_are_atomic_under_load(lab):
    """Connections made while the map flips 2 <-> 3 backends are never refused or lost."""
    lab.agent.call("reconcile", [web()])
    lab.agent.call("set_backends", "web", backends(B4))
    loop = lab.client.start_py(CLIENT_LOOP, VIP4, 80, 3.0)
    assert read_line(loop, 10) == "started"
    per_swap = lab.agent.call("toggle", "web", backends(B4), backends(B4[:2]), 200)
    counts = json.loads(read_line(loop, 15))
    assert set(counts) <= set(B4), counts                              # no refused / timeout / error
    assert sum(counts.values()) > 100
    print(f"set_backends: {per_swap * 1000:.2f} ms per swap; {sum(counts.values())} connections during swaps")


def test_weighted_random_and_source_hash(lab):
    lab.agent.call("reconcile", [web(mode="weighted"), web(name="rnd", port=81, mode="random", slots=60),
                                 web(name="hash", port=82, mode="source-hash", slots=60)])
    lab.agent.call("set_backends", "web", backends(B4[:2], weights={B4[1]: 2}))
    assert Counter(lab.connect(VIP4, 80, 12)) == {B4[0]: 4, B4[1]: 8}
    lab.agent.call("set_backends", "rnd", backends(B4))
    # Every redirect here ends on the backends' port 8080, and the client reuses
    # its source ports across the VIP's ports: a new connection can meet the
    # backend's TIME_WAIT socket of the same 4-tuple left by the swap test,
    # and only the SYN's retransmission (1 s) gets through.  Allow for it.
    got = Counter(lab.connect(VIP4, 81, 60, timeout=3.5))
    assert set(got) == set(B4) and min(got.values()) >= 5, got     # P(fail) ~ 1e-5 for a fair random choice
    lab.agent.call("set_backends", "hash", backends(B4))
    first = lab.connect(VIP4, 82, len(CLIENTS4), sources=CLIENTS4)
    again = lab.connect(VIP4, 82, len(CLIENTS4), sources=CLIENTS4)
    assert first == again and set(first) <= set(B4)                 # each client keeps its backend
    assert len(set(first)) >= 2                                      # 20 clients do not all hash alike
    # a backend leaves: clients of the others keep theirs (stable slots)
    gone = first[0]
    lab.agent.call("set_backends", "hash", backends([b for b in B4 if b != gone]))
    after = lab.connect(VIP4, 82, len(CLIENTS4), sources=CLIENTS4)
    assert gone not in after
    kept = [a == b for a, b in zip(first, after) if a != gone]
    assert sum(kept) >= 0.6 * len(kept), (first, after)


def test_sticky_clients_keep_their_backend_until_it_leaves(lab):
    lab.agent.call("reconcile", [web(sticky_timeout_s=60)])
    lab.agent.call("set_backends", "web", backends(B4))
    got = lab.connect(VIP4, 80, 6, sources=CLIENTS4[:1])
    assert len(set(got)) == 1 and got[0] in B4                       # round-robin, yet always the same
    mine = got[0]
    entries = lab.agent.call("sticky_entries", "web")
    assert entries == [[CLIENTS4[0], [mine, 8080]]]
    lab.agent.call("set_backends", "web", backends([b for b in B4 if b != mine]))
    assert lab.agent.call("sticky_entries", "web") == []               # forgotten with its backend
    moved = lab.connect(VIP4, 80, 6, sources=CLIENTS4[:1])
    assert len(set(moved)) == 1 and moved[0] != mine


def test_ipv6_and_udp(lab):
    lab.agent.call("reconcile", [
        {"name": "web6", "address": VIP6, "port": 80, "slots": 4},
        {"name": "dns", "address": VIP4, "port": 53, "protocol": "udp", "slots": 4},
    ])
    lab.agent.call("set_backends", "web6", backends(B6[:2]))
    assert Counter(lab.connect(VIP6, 80, 4)) == {B6[0]: 2, B6[1]: 2}
    lab.agent.call("set_backends", "dns", backends(B4[1:]))
    assert Counter(lab.connect(VIP4, 53, 4, proto="udp")) == {B4[1]: 2, B4[2]: 2}
    lab.agent.call("set_backends", "dns", [])
    assert set(lab.connect(VIP4, 53, 2, proto="udp")) == {"refused"}   # ICMP port unreachable


# --- RST watcher ------------------------------------------------------------------------------

def test_nflog_reader_sees_resets_from_backends(lab):
    lab.agent.call("reconcile", [web(slots=2, nflog_group=7)])
    lab.agent.call("set_backends", "web", [[B4[2], 8081, 1], [B4[0], 8080, 1]])   # 8081 is closed: RST
    lab.agent.call("nflog_open", 7)
    got = Counter(lab.connect(VIP4, 80, 4))
    assert got == {"refused": 2, B4[0]: 2}
    resets = []
    deadline = time.monotonic() + 5
    while len(resets) < 2 and time.monotonic() < deadline:
        resets += lab.agent.call("nflog_receive", 7, 2.0)
    assert resets == [[B4[2], 8081, "web"]] * 2                          # backend's resets only, by redirect
    with pytest.raises(AgentError, match="another socket holds this group"):  # one reader per group
        lab.agent.call("nflog_open", 7)


# --- conntrack clean-up ----------------------------------------------------------------------

def test_delete_states_of_a_dead_backend(lab):
    lab.agent.call("reconcile", [web(port=90, slots=2)])
    lab.agent.call("set_backends", "web", backends(B4[:2], port=8090))
    hold = lab.client.start_py(r"""
import socket, sys, time
socks = []
for i in range(4):
    s = socket.create_connection((sys.argv[1], 90), timeout=2); s.recv(100); socks.append(s)
print("held", flush=True)
time.sleep(60)
""", VIP4)
    try:
        assert read_line(hold, 10) == "held"
        assert lab.agent.call("states", B4[0], 8090) == 2
        assert lab.agent.call("states", B4[1], 8090) == 2
        assert lab.agent.call("delete_states", B4[0], 8090) == 2
        assert lab.agent.call("states", B4[0], 8090) == 0
        assert lab.agent.call("states", B4[1], 8090) == 2                # the live backend's flows stay
    finally:
        hold.kill()


# --- remove ----------------------------------------------------------------------------------

def test_remove_deletes_only_meshds_table(lab):
    lab.agent.call("nft", "add table ip foreign\nadd chain ip foreign input { type filter hook input priority 0; }\n"
                          "add rule ip foreign input tcp dport 9 counter\n")
    lab.agent.call("reconcile", [web()])
    assert lab.agent.call("exists")
    lab.agent.call("remove")
    assert not lab.agent.call("exists")
    lab.agent.call("remove")                                           # idempotent
    listing = lab.agent.call("nft_text", "list ruleset")
    assert "table ip foreign" in listing and "tcp dport 9 counter" in listing
    assert "meshd" not in listing
    lab.agent.call("nft", "delete table ip foreign\n")


@pytest.mark.parametrize("nft_backend", ["library", "command"])
def test_json_commands(lab, nft_backend):
    table = {"family": "ip", "name": "jsontest"}
    chain = {"family": "ip", "table": "jsontest", "name": "c"}
    assert lab.agent.call("nft_json", [{"add": {"table": table}}, {"add": {"chain": chain}}], nft_backend) == \
        {"nftables": []}
    listed = lab.agent.call("nft_json", [{"list": {"table": table}}], nft_backend)["nftables"]
    assert {"chain": {**chain, "handle": listed[2]["chain"]["handle"]}} in listed
    with pytest.raises(AgentError, match="NftError: nftables: .*No such file or directory"):
        lab.agent.call("nft_json", [{"delete": {"chain": {**chain, "name": "nosuch"}}}], nft_backend)
    lab.agent.call("nft_json", [{"delete": {"table": table}}], nft_backend)
    assert "jsontest" not in lab.agent.call("nft_text", "list tables")


def test_refused_transaction_changes_nothing(lab):
    lab.agent.call("reconcile", [web()])
    lab.agent.call("set_backends", "web", backends(B4))
    before = lab.agent.call("slot_map", "web")
    with pytest.raises(AgentError, match="NftError"):
        # the second command is refused (port out of range): the flush before it must not happen either
        lab.agent.call("nft", "flush map inet meshd slots_web\n"
                              "add element inet meshd slots_web { 0 : 10.9.2.11 . 70000 }\n")
    assert lab.agent.call("slot_map", "web") == before


# --- ICMP checks through the firewall -----------------------------------------------------------

ICMP_PROBE = r"""
import json, sys, trio
from meshd.health import icmp
from meshd.health.checks import run_check
from meshd.health.checkspec import CheckSpec, CheckTarget
async def main():
    out = {}
    for kind in ("dgram", "raw"):
        for address in sys.argv[1:]:
            try:
                with trio.fail_after(1):
                    await icmp.echo(address, kind)
                out[f"{kind} {address}"] = "ok"
            except icmp.IcmpError as e:
                out[f"{kind} {address}"] = str(e)
            except trio.TooSlowError:
                out[f"{kind} {address}"] = "timeout"
    got = await run_check(CheckTarget(sys.argv[1], 0, CheckSpec("icmp", timeout_s=1)))
    out["run_check"] = [got.ok, got.error]
    return out
print(json.dumps(trio.run(main)))
"""


def test_icmp_echo_both_socket_kinds_through_the_firewall(lab):
    """The datagram socket needs ping_group_range (set in this namespace only); raw needs root."""
    lab.client.sysctl("net.ipv4.ping_group_range", "0 2147483647")
    out = json.loads(lab.client.run_py(ICMP_PROBE, B4[0], B6[1], "10.9.3.1", "fd00:9:3::1"))
    for kind in ("dgram", "raw"):
        assert out[f"{kind} {B4[0]}"] == "ok"
        assert out[f"{kind} {B6[1]}"] == "ok"
    # no route on the firewall: it answers "unreachable" for both kinds of socket
    assert out["dgram 10.9.3.1"] == "icmp: network is unreachable"
    assert out["raw 10.9.3.1"] == "icmp: destination unreachable (code 0)"
    assert out["dgram fd00:9:3::1"] == "icmp: network is unreachable"
    assert out["raw fd00:9:3::1"] == "icmp: destination unreachable (code 0)"
    assert out["run_check"] == [True, None]
