"""The lab topology: client, two or three firewalls, server, and a switch namespace.

    {prefix}client eth0 ──┐                    ┌── eth0 {prefix}server
        192.0.2.100       │  {prefix}sw        │   198.51.100.100
                        brlan               brsrv
    {prefix}fwN lan0 ─────┘                    └───── srv0 {prefix}fwN
        192.0.2.(1+N)                                 198.51.100.(1+N)
    fwN sync0 203.0.113.N: a direct veth fw1<->fw2 (2 nodes) or bridge brsync (3 nodes)

Virtual addresses (held by the master): 192.0.2.1, 2001:db8:1::1 on lan0 and
198.51.100.1, 2001:db8:2::1 on srv0.  IPv6 uses the same host numbers as IPv4
(2001:db8:1::100 for the client...).  All prefixes are documentation prefixes.

Nothing is created in the root namespace: bridges live in `{prefix}sw` and every
veth pair is created there (or between firewalls) with its peer placed directly
in the target namespace.  `down()` finds namespaces by name pattern, so it
cleans up after a crashed run too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

NETNS_DIR = "/run/netns"

LAN4, LAN6 = "192.0.2", "2001:db8:1::"
SRV4, SRV6 = "198.51.100", "2001:db8:2::"
SYNC4 = "203.0.113"
CLIENT_HOST = 100
SERVER_HOST = 100

CLIENT4, CLIENT6 = f"{LAN4}.{CLIENT_HOST}", f"{LAN6}{CLIENT_HOST}"
SERVER4, SERVER6 = f"{SRV4}.{SERVER_HOST}", f"{SRV6}{SERVER_HOST}"
LAN_VIRTUAL = (f"{LAN4}.1/24", f"{LAN6}1/64")
SRV_VIRTUAL = (f"{SRV4}.1/24", f"{SRV6}1/64")
VIRTUAL_ADDRESSES = LAN_VIRTUAL + SRV_VIRTUAL
FW_LINKS = ("lan0", "srv0", "sync0")

PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$")
ROLES_RE = r"(sw|client|server|fw[0-9]+)"

NFT_FW = """\
flush ruleset
table inet lab {
    chain input {
        type filter hook input priority filter; policy accept;
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        meta l4proto { icmp, ipv6-icmp } accept
        iifname "lan0" oifname "srv0" meta l4proto tcp tcp flags & (syn|ack) == syn ct state new accept
        iifname "lan0" oifname "srv0" meta l4proto udp ct state new accept
        counter
    }
    chain output {
        type filter hook output priority filter; policy accept;
    }
}
"""


class LabError(Exception):
    """A lab command failed; the message says which and why."""


def fw_host(n: int) -> int:
    """Host number of firewall n on the LAN and server nets (fw1 -> .2)."""
    return 1 + n


def run(argv: list[str], input: str | None = None, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        shown = " ".join(argv)
        detail = (p.stderr or p.stdout).strip()
        if input:
            detail += "\n--- input ---\n" + input
        raise LabError(f"command failed ({p.returncode}): {shown}\n{detail}")
    return p


def nsexec(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def lab_namespaces(prefix: str) -> list[str]:
    """Every namespace that belongs to a lab with this prefix (even a crashed one)."""
    pat = re.compile(re.escape(prefix) + ROLES_RE + "$")
    return [n for n in list_namespaces() if pat.match(n)]


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise LabError(f"bad lab prefix {prefix!r}: use letters, digits, '_.-' (at most 31)")
    return prefix


class Lab:
    def __init__(self, prefix: str = "mesh-", nodes: int = 2):
        if nodes not in (2, 3):
            raise LabError(f"nodes must be 2 or 3, not {nodes}")
        self.prefix = check_prefix(prefix)
        self.nodes = nodes

    # ------------------------------------------------------------------ names

    @property
    def sw(self) -> str:
        return f"{self.prefix}sw"

    @property
    def client(self) -> str:
        return f"{self.prefix}client"

    @property
    def server(self) -> str:
        return f"{self.prefix}server"

    def fw(self, n: int) -> str:
        if not 1 <= n <= self.nodes:
            raise LabError(f"no firewall {n} in a {self.nodes}-node lab")
        return f"{self.prefix}fw{n}"

    @property
    def fws(self) -> list[str]:
        return [self.fw(n) for n in range(1, self.nodes + 1)]

    @property
    def namespaces(self) -> list[str]:
        return [self.sw, self.client, *self.fws, self.server]

    def fw_addresses(self, n: int) -> dict[str, list[str]]:
        h = fw_host(n)
        return {
            "lan0": [f"{LAN4}.{h}/24", f"{LAN6}{h}/64"],
            "srv0": [f"{SRV4}.{h}/24", f"{SRV6}{h}/64"],
            "sync0": [f"{SYNC4}.{n}/24"],
        }

    def __repr__(self) -> str:
        return f"Lab(prefix={self.prefix!r}, nodes={self.nodes})"

    # ------------------------------------------------------------------ state

    def is_up(self) -> bool:
        present = set(list_namespaces())
        return all(ns in present for ns in self.namespaces)

    @classmethod
    def detect(cls, prefix: str = "mesh-") -> "Lab | None":
        """The lab currently up with this prefix, with its node count, or None."""
        names = set(lab_namespaces(check_prefix(prefix)))
        for nodes in (3, 2):
            lab = cls(prefix, nodes)
            if all(ns in names for ns in lab.namespaces):
                return lab
        return None

    # ------------------------------------------------------------------ up

    def up(self) -> float:
        """Build the topology from scratch (removing leftovers first); return seconds taken."""
        t0 = time.monotonic()
        self.down()
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return time.monotonic() - t0

    def _up(self) -> None:
        os.makedirs(NETNS_DIR, exist_ok=True)
        run(["ip", "-batch", "-"], input="".join(f"netns add {ns}\n" for ns in self.namespaces))

        # Phase 2: bridges and every veth pair, created from the switch namespace
        # with the far end placed straight into its namespace.
        bridge_opts = "type bridge forward_delay 0 stp_state 0 mcast_snooping 0"
        bridges = ["brlan", "brsrv"] + (["brsync"] if self.nodes >= 3 else [])
        lines = [f"link add {b} {bridge_opts}" for b in bridges]
        ports: list[tuple[str, str]] = []

        def veth(local: str, peer: str, peer_ns: str, bridge: str) -> None:
            lines.append(f"link add {local} type veth peer name {peer} netns {peer_ns}")
            ports.append((local, bridge))

        veth("c-lan", "eth0", self.client, "brlan")
        veth("s-srv", "eth0", self.server, "brsrv")
        for n in range(1, self.nodes + 1):
            veth(f"f{n}-lan", "lan0", self.fw(n), "brlan")
            veth(f"f{n}-srv", "srv0", self.fw(n), "brsrv")
            if self.nodes >= 3:
                veth(f"f{n}-sync", "sync0", self.fw(n), "brsync")
        if self.nodes == 2:
            lines.append(f"link add sync0 netns {self.fw(1)} type veth peer name sync0 netns {self.fw(2)}")
        lines += [f"link set {p} master {b} up" for p, b in ports]
        lines += [f"link set {b} up" for b in bridges]
        lines.append("link set lo up")
        run(["ip", "-n", self.sw, "-batch", "-"], input="\n".join(lines) + "\n")

        # Phase 3: one shell per namespace (in parallel): sysctls, addresses, nftables.
        tmp = tempfile.mkdtemp(prefix=f"meshlab-up-{self.prefix}")
        try:
            scripts = {self.sw: self._sw_script()}
            scripts[self.client] = self._host_script(tmp, self.client, "eth0", CLIENT4, CLIENT6, LAN_VIRTUAL)
            scripts[self.server] = self._host_script(tmp, self.server, "eth0", SERVER4, SERVER6, SRV_VIRTUAL)
            for n in range(1, self.nodes + 1):
                scripts[self.fw(n)] = self._fw_script(tmp, n)
            procs = {}
            for ns, script in scripts.items():
                procs[ns] = subprocess.Popen(nsexec(ns, "sh", "-ec", script), stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True)
            failures = []
            for ns, p in procs.items():
                out, _ = p.communicate(timeout=30)
                if p.returncode != 0:
                    failures.append(f"{ns}: exit {p.returncode}\n{out.strip()}")
            if failures:
                raise LabError("lab setup failed:\n" + "\n".join(failures))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _sysctl(*settings: str) -> str:
        return "sysctl -q -w " + " ".join(settings) + "\n"

    def _sw_script(self) -> str:
        # The switch carries no IP traffic of its own: no link-local chatter on the LAN.
        return self._sysctl("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")

    def _host_script(self, tmp: str, ns: str, dev: str, addr4: str, addr6: str,
                     gateway: tuple[str, str]) -> str:
        gw4, gw6 = (a.split("/")[0] for a in gateway)
        batch = os.path.join(tmp, f"{ns}.ip")
        with open(batch, "w") as f:
            f.write(f"link set lo up\nlink set {dev} up\n"
                    f"addr add {addr4}/24 dev {dev}\n"
                    f"addr add {addr6}/64 dev {dev} nodad\n"
                    f"route add default via {gw4}\n"
                    f"route add default via {gw6}\n")
        return (self._sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                             f"net.ipv6.conf.{dev}.accept_dad=0")
                + f"ip -batch {batch}\n")

    def _fw_script(self, tmp: str, n: int) -> str:
        ns = self.fw(n)
        lines = ["link set lo up"]
        for dev, addrs in self.fw_addresses(n).items():
            lines.append(f"link set {dev} up")
            for a in addrs:
                lines.append(f"addr add {a} dev {dev}" + (" nodad" if ":" in a else ""))
        batch = os.path.join(tmp, f"{ns}.ip")
        with open(batch, "w") as f:
            f.write("\n".join(lines) + "\n")
        nft = os.path.join(tmp, f"{ns}.nft")
        with open(nft, "w") as f:
            f.write(NFT_FW)
        per_dev = []
        for dev in FW_LINKS:
            per_dev += [f"net.ipv6.conf.{dev}.accept_dad=0", f"net.ipv6.conf.{dev}.keep_addr_on_down=1"]
        return (self._sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                             "net.ipv6.conf.all.keep_addr_on_down=1",
                             "net.ipv6.conf.default.keep_addr_on_down=1", *per_dev)
                + f"ip -batch {batch}\n"
                + f"nft -f {nft}\n"
                # forwarding last: nft loaded nf_conntrack, so its sysctls exist now
                + self._sysctl("net.netfilter.nf_conntrack_tcp_loose=0", "net.ipv4.ip_forward=1",
                               "net.ipv6.conf.all.forwarding=1"))

    # ------------------------------------------------------------------ down

    def down(self) -> float:
        """Remove every namespace of this prefix and all links in them; idempotent."""
        return down(self.prefix)

    # ------------------------------------------------------------------ helpers

    def exec_argv(self, ns: str, *argv: str) -> list[str]:
        return nsexec(ns, *argv)

    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "-n", ns, *args], check=check)

    def batch(self, ns: str, lines: list[str], force: bool = False) -> None:
        argv = ["ip", "-n", ns] + (["-force"] if force else []) + ["-batch", "-"]
        run(argv, input="\n".join(lines) + "\n", check=not force)

    def addresses(self, ns: str) -> dict[str, list[str]]:
        """Interface -> ["addr/len", ...] (global scope only) in namespace ns."""
        p = run(["ip", "-n", ns, "-j", "addr", "show"])
        out: dict[str, list[str]] = {}
        for link in json.loads(p.stdout or "[]"):
            for a in link.get("addr_info", []):
                if a.get("scope") == "global":
                    out.setdefault(link["ifname"], []).append(f"{a['local']}/{a['prefixlen']}")
        return out

    def holders(self, address: str) -> list[str]:
        """Namespaces (firewalls, client, server) where `address` is configured."""
        ip = address.split("/")[0]
        found = []
        for ns in [self.client, *self.fws, self.server]:
            for addrs in self.addresses(ns).values():
                if any(a.split("/")[0] == ip for a in addrs):
                    found.append(ns)
                    break
        return found

    def fw_links(self, n: int, up: bool) -> None:
        """Set all of fw n's links up or down in one `ip -batch`."""
        state = "up" if up else "down"
        self.batch(self.fw(n), [f"link set {d} {state}" for d in FW_LINKS])

    def reset_fw(self, n: int) -> None:
        """After a failure test: links up again and no virtual address left behind."""
        ns = self.fw(n)
        lines = [f"link set {d} up" for d in FW_LINKS]
        static = {a.split("/")[0] for addrs in self.fw_addresses(n).values() for a in addrs}
        for dev, addrs in self.addresses(ns).items():
            for a in addrs:
                if a.split("/")[0] not in static:
                    lines.append(f"addr del {a} dev {dev}")
        self.batch(ns, lines, force=True)

    def add_virtual(self, n: int, addresses: tuple[str, ...] = VIRTUAL_ADDRESSES) -> None:
        """Put virtual addresses on fw n by hand (as a master would)."""
        lines = []
        for a in addresses:
            dev = "lan0" if a in LAN_VIRTUAL or a.startswith(LAN4 + ".") or a.startswith(LAN6) else "srv0"
            lines.append(f"addr add {a} dev {dev}" + (" nodad" if ":" in a else ""))
        self.batch(self.fw(n), lines)


def down(prefix: str) -> float:
    """Remove every namespace named `{prefix}(sw|client|server|fwN)`; return seconds taken.

    Processes still running inside them were started by the lab (the names are the
    lab's own); they are killed by pid first, since a live process keeps its
    namespace (and its links) alive after the name is gone.
    """
    t0 = time.monotonic()
    names = lab_namespaces(check_prefix(prefix))
    if not names:
        return time.monotonic() - t0
    for ns in names:
        p = run(["ip", "netns", "pids", ns], check=False)
        for tok in p.stdout.split():
            if tok.isdigit() and int(tok) != os.getpid():
                try:
                    os.kill(int(tok), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    # Delete the links explicitly too: should anything still hold a namespace open
    # (a forgotten socket), its veths are gone all the same.
    sw = f"{prefix}sw"
    if sw in names:
        p = run(["ip", "-n", sw, "-j", "link", "show"], check=False)
        try:
            links = [link["ifname"] for link in json.loads(p.stdout or "[]") if link["ifname"] != "lo"]
        except ValueError:
            links = []
        if links:
            run(["ip", "-n", sw, "-force", "-batch", "-"],
                input="".join(f"link del {link}\n" for link in links), check=False)
    fw1 = f"{prefix}fw1"
    if fw1 in names:
        run(["ip", "-n", fw1, "link", "del", "sync0"], check=False)
    run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in names), check=False)
    left = lab_namespaces(prefix)
    if left:
        raise LabError(f"could not remove namespaces: {' '.join(left)}")
    return time.monotonic() - t0
