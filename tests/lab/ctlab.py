"""Helpers for the conntrack lab tests: a namespace to enter, and entries to inject.

Conntrack tables are per network namespace, so every test works in its own
mshct-<pid>-<n> namespace and never touches the host's table. CtNs.close()
deletes it (fixtures call it in a finally); netns.Netns also removes
leftovers at interpreter exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import subprocess

from netns import Netns, veth  # also re-exported for the tests

from meshd.kernel import ctnetlink as ct
from meshd.kernel.ctnetlink.tuples import _encode_tuple, _Tuple

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextlib.contextmanager
def entered(name: str):
    """Run the body with this thread inside namespace `name`.

    Sockets created inside keep working in that namespace after the body
    (CtEventReader, CtCommitter); dump_table() opens its socket when called,
    so call it inside.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(home)
        os.close(target)
        os.close(home)


def sock_in(name: str, *args) -> socket.socket:
    """socket.socket(*args) created inside namespace `name` (it stays there)."""
    with entered(name):
        return socket.socket(*args)


class CtNs:
    """A throw-away namespace for conntrack work."""

    def __init__(self, sysctls: dict[str, str] | None = None):
        self.netns = Netns(prefix="mshct")
        self.name = self.netns.name
        for key, value in (sysctls or {}).items():
            self.netns.sysctl(key, value)

    def entered(self):
        return entered(self.name)

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            env_pythonpath: str | None = None) -> subprocess.CompletedProcess:
        env = None
        if env_pythonpath:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [env_pythonpath,
                                                                           os.environ.get("PYTHONPATH")])))
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              check=check, timeout=120, input=input, env=env)

    def count(self) -> int:
        """Entries in the table, by the conntrack tool."""
        out = self.run("conntrack", "-C").stdout.strip()
        return int(out)

    def nft(self, rules: str) -> None:
        self.run("nft", "-f", "-", input=rules)

    def close(self) -> None:
        self.netns.close()


# --- entries shaped like the kernel's dump entries --------------------------------------

def _addr(family: int, base: str, i: int) -> bytes:
    raw = socket.inet_pton(family, base)
    return raw[:-2] + struct.pack("!H", (struct.unpack("!H", raw[-2:])[0] + i) & 0xFFFF)


def entry(i: int = 0, *, family: int = socket.AF_INET, proto: int = 6, state: int = 3,
          status: int = ct.IPS_SEEN_REPLY | ct.IPS_ASSURED | ct.IPS_CONFIRMED, timeout: int | None = 300,
          mark: int | None = 0, zone: int | None = None, snat: str | None = None,
          dnat: tuple[str, int] | None = None, labels: bytes | None = None, extra: bytes = b"",
          sport: int | None = None, dport: int = 80, with_id: bool = True) -> bytes:
    """attrs of an entry like a dump would give: flow i from 10.1.x.y (or fd00::x) port 1024+i.

    The orig and reply tuples, status, mark, id/use, timeout and (TCP) the
    protoinfo with window scale 7 both ways; snat/dnat produce the reply
    tuple a NATed flow has.
    """
    v6 = family == socket.AF_INET6
    src = _addr(family, "fd00:10::" if v6 else "10.1.0.0", i // 50000 + 1)
    dst = _addr(family, "fd00:20::1" if v6 else "10.2.0.1", 0)
    sp = struct.pack("!H", sport if sport is not None else 1024 + i % 50000)
    dp = struct.pack("!H", dport)
    icmp = proto in (1, 58)
    if icmp:
        req, rep = (128, 129) if v6 else (8, 0)
        orig = _Tuple(src, dst, proto, sp, b"\0\0", req, 0, None)
        reply = _Tuple(dst, src, proto, sp, b"\0\0", rep, 0, None)
    else:
        orig = _Tuple(src, dst, proto, sp, dp, None, None, None)
        reply = _Tuple(dst, src, proto, dp, sp, None, None, None)
    if snat:
        reply = reply._replace(dst=socket.inet_pton(family, snat))
    if dnat:
        reply = reply._replace(src=socket.inet_pton(family, dnat[0]), sport=struct.pack("!H", dnat[1]))
    parts = [bytes((family, 0, 0, 0)), _encode_tuple(ct.CTA_TUPLE_ORIG, orig),
             _encode_tuple(ct.CTA_TUPLE_REPLY, reply)]
    if zone is not None:
        parts.append(ct.nla(ct.CTA_ZONE, struct.pack("!H", zone)))
    parts.append(ct.nla(ct.CTA_STATUS, struct.pack("!I", status)))
    if mark is not None:
        parts.append(ct.nla(ct.CTA_MARK, struct.pack("!I", mark)))
    if with_id:
        parts += [ct.nla(ct.CTA_ID, struct.pack("!I", 0x10000 + i)), ct.nla(ct.CTA_USE, struct.pack("!I", 1))]
    if timeout is not None:
        parts.append(ct.nla(ct.CTA_TIMEOUT, struct.pack("!I", timeout)))
    if proto == 6:
        tcp = ct.nest(ct.CTA_PROTOINFO_TCP, ct.nla(ct.CTA_PROTOINFO_TCP_STATE, bytes((state,))),
                      ct.nla(ct.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, b"\x07"),
                      ct.nla(ct.CTA_PROTOINFO_TCP_WSCALE_REPLY, b"\x07"),
                      ct.nla(ct.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, b"\x23\x00"),
                      ct.nla(ct.CTA_PROTOINFO_TCP_FLAGS_REPLY, b"\x23\x00"))
        parts.append(ct.nest(ct.CTA_PROTOINFO, tcp))
    if labels is not None:
        parts.append(ct.nla(ct.CTA_LABELS, labels))
    parts.append(extra)
    return b"".join(parts)


class Topology:
    """cli -- fw -- srv, three namespaces; fw forwards and holds the table under test.

        cli c0 192.168.100.2/24 fd00:1::2/64  <->  f0 192.168.100.1 fd00:1::1   fw
        fw  f1 10.0.2.1/24 fd00:2::1/64      <->  s0 10.0.2.2 fd00:2::2       srv

    close() deletes all three (whatever state they are in).
    """
    CLI4, FW4C, FW4S, SRV4 = "192.168.100.2", "192.168.100.1", "10.0.2.1", "10.0.2.2"
    CLI6, FW6C, FW6S, SRV6 = "fd00:1::2", "fd00:1::1", "fd00:2::1", "fd00:2::2"

    def __init__(self, fw_sysctls: dict[str, str] | None = None):
        self.made: list = []
        try:
            self.cli = CtNs()
            self.made.append(self.cli)
            self.fw = CtNs(fw_sysctls)
            self.made.append(self.fw)
            self.srv = CtNs()
            self.made.append(self.srv)
            veth(self.cli.netns, "c0", self.fw.netns, "f0")
            veth(self.srv.netns, "s0", self.fw.netns, "f1")
            for ns, dev, addrs in ((self.cli, "c0", (f"{self.CLI4}/24", f"{self.CLI6}/64")),
                                   (self.fw, "f0", (f"{self.FW4C}/24", f"{self.FW6C}/64")),
                                   (self.fw, "f1", (f"{self.FW4S}/24", f"{self.FW6S}/64")),
                                   (self.srv, "s0", (f"{self.SRV4}/24", f"{self.SRV6}/64"))):
                for a in addrs:
                    ns.netns.ip("addr", "add", a, "dev", dev, "nodad")
            self.cli.netns.ip("route", "add", "default", "via", self.FW4C)
            self.cli.netns.ip("-6", "route", "add", "default", "via", self.FW6C)
            self.srv.netns.ip("route", "add", "default", "via", self.FW4S)
            self.srv.netns.ip("-6", "route", "add", "default", "via", self.FW6S)
            self.fw.netns.sysctl("net.ipv4.ip_forward", "1")
            self.fw.netns.sysctl("net.ipv6.conf.all.forwarding", "1")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ns in self.made:
            ns.close()
        self.made.clear()
