#!/usr/bin/env python3
"""Capture real ctnetlink messages into proto/vectors/ctnetlink.json.

Needs root: it builds three throw-away network namespaces (mshct-<pid>-cli,
-fw, -srv; always deleted, even on failure), makes real traffic with python
sockets from the client to the server through the firewall namespace, and
records what the firewall's kernel says on the conntrack event groups and in
a dump. The conntrack tool injects an SCTP entry and deletes/flushes entries
(DESTROY events caused by a request: non-zero portid).

    sudo python3 proto/vectors/capture_ctnetlink.py            # rewrite the file
    sudo python3 proto/vectors/capture_ctnetlink.py --print    # show, do not write

Topology (the firewall forwards, nftables in inet and ip nat tables):

    cli 192.168.100.2 fd00:1::2 -- c0 | f0 192.168.100.1 fd00:1::1  fw
    fw  10.0.2.1 fd00:2::1      -- f1 | s0 10.0.2.2 fd00:2::2      srv

    udp dport 5300: zone 7 (both directions), mark 0x2a, label bit 3
    tcp dport 21:   ftp helper, SNAT to 10.0.2.1 (the PORT command is rewritten
                    to a shorter address: sequence adjustment) and a RELATED
                    data connection from the server (CTA_TUPLE_MASTER)
    tcp dport 5002: SNAT to 10.0.2.1;  fw 192.168.100.1:8080 DNAT to srv:80
    expectations:   the active FTP data connection's (created, then used up:
                    EXP_DESTROY), a passive one (PASV, IPv4 through the SNAT:
                    CTA_EXPECT_NAT) and an extended passive one (EPSV, IPv6, no
                    NAT) left pending for the expectation dump

The script does not import meshd: messages are picked and their expected
fields computed with pyroute2's independent decoder and the scenario's own
constants, so the vectors check meshd's codec rather than echo it. pyroute2
0.9.7 has no expectation message; ExpectOracle below declares one with
pyroute2's own attribute machinery (the map copied from the kernel's
enum ctattr_expect), reusing pyroute2's conntrack tuple decoder. The
messages change from run to run (ports, ids, timeouts); the expectations
describe each message's own content.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "ctnetlink.json"
NETLINK_NETFILTER = 12
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

CLI4, FW4C, FW4S, SRV4 = "192.168.100.2", "192.168.100.1", "10.0.2.1", "10.0.2.2"
CLI6, FW6C, FW6S, SRV6 = "fd00:1::2", "fd00:1::1", "fd00:2::1", "fd00:2::2"

RULES = r"""
table inet meshcap {
  ct helper ftp-standard { type "ftp" protocol tcp; l3proto inet; }
  chain rawpre {
    type filter hook prerouting priority raw;
    udp dport 5300 ct zone set 7
    udp sport 5300 ct zone set 7
  }
  chain pre {
    type filter hook prerouting priority filter;
    tcp dport 21 ct helper set "ftp-standard"
  }
  chain fw_forward {
    type filter hook forward priority filter; policy accept;
    ct state new udp dport 5300 ct mark set 0x2a ct label set 3
  }
}
table ip meshnat {
  chain pre { type nat hook prerouting priority dstnat; ip daddr 192.168.100.1 tcp dport 8080 dnat to 10.0.2.2:80; }
  chain post { type nat hook postrouting priority srcnat; oifname "f1" ip saddr 192.168.100.0/24 tcp dport { 21, 5002 } snat to 10.0.2.1; }
}
"""


# --- namespaces ---------------------------------------------------------------------

def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *argv, check=check)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextlib.contextmanager
def netns(name: str):
    """Run the body (this thread only) inside namespace `name`; sockets made there stay there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(home)
        os.close(target)
        os.close(home)


def build(prefix: str) -> dict[str, str]:
    names = {role: f"{prefix}-{role}" for role in ("cli", "fw", "srv")}
    for n in names.values():
        run("ip", "netns", "add", n)
    cli, fw, srv = names["cli"], names["fw"], names["srv"]
    run("ip", "-n", cli, "link", "add", "c0", "type", "veth", "peer", "name", "f0", "netns", fw)
    run("ip", "-n", srv, "link", "add", "s0", "type", "veth", "peer", "name", "f1", "netns", fw)
    for ns, dev, addrs in ((cli, "c0", (f"{CLI4}/24", f"{CLI6}/64")),
                           (fw, "f0", (f"{FW4C}/24", f"{FW6C}/64")),
                           (fw, "f1", (f"{FW4S}/24", f"{FW6S}/64")),
                           (srv, "s0", (f"{SRV4}/24", f"{SRV6}/64"))):
        for a in addrs:
            run("ip", "-n", ns, "addr", "add", a, "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
    for ns in names.values():
        run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", cli, "route", "add", "default", "via", FW4C)
    run("ip", "-n", cli, "-6", "route", "add", "default", "via", FW6C)
    run("ip", "-n", srv, "route", "add", "default", "via", FW4S)
    run("ip", "-n", srv, "-6", "route", "add", "default", "via", FW6S)
    for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                       ("net.netfilter.nf_conntrack_acct", "1"),
                       ("net.netfilter.nf_conntrack_timestamp", "1"),
                       ("net.netfilter.nf_conntrack_icmp_timeout", "3")):
        in_ns(fw, "sysctl", "-qw", f"{key}={value}")
    subprocess.run(["ip", "netns", "exec", fw, "nft", "-f", "-"], input=RULES, text=True,
                   check=True, capture_output=True, timeout=30)
    return names


def teardown(names: dict[str, str]) -> None:
    for n in names.values():
        run("ip", "netns", "del", n, check=False)


# --- netlink -------------------------------------------------------------------------

class Listener:
    """Every datagram on the conntrack NEW/UPDATE/DESTROY groups, drained by a thread."""

    def __init__(self, ns: str):
        with netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)     # SO_RCVBUFFORCE
        self.sock.bind((0, 0b111 | 1 << 3 | 1 << 5))      # + NFNLGRP_CONNTRACK_EXP_NEW, _EXP_DESTROY
        self.datagrams: list[bytes] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if r:
                try:
                    self.datagrams.append(self.sock.recv(1 << 16))
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    print("listener: ENOBUFS", file=sys.stderr)

    def settle(self, quiet: float = 0.5) -> None:
        n = -1
        while n != len(self.datagrams):
            n = len(self.datagrams)
            time.sleep(quiet)

    def close(self) -> None:
        self._stop = True
        self._t.join()
        self.sock.close()


def dump(ns: str, mtype: int = 0x101) -> bytes:
    """The whole dump reply, every datagram concatenated (ends with NLMSG_DONE).

    mtype 0x101: IPCTNL_MSG_CT_GET; 0x201: IPCTNL_MSG_EXP_GET (the expectations)."""
    with netns(ns):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with s:
        s.bind((0, 0))
        s.send(struct.pack("=IHHII", 20, mtype, 0x301, 7, 0) + bytes(4))
        out = b""
        while True:
            d = s.recv(1 << 16)
            out += d
            pos = 0
            while pos < len(d):
                ln, ty = struct.unpack_from("=IH", d, pos)
                if ty == 3:
                    return out
                pos += (ln + 3) & ~3


# --- traffic -------------------------------------------------------------------------

def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def sock_in(ns: str, *args) -> socket.socket:
    with netns(ns):
        return socket.socket(*args)


def _ftp_login(cli, conn) -> None:
    """The greeting and a login on a control connection (client and server sockets).
    nf_conntrack_ftp only parses a command that starts right after a newline it
    has seen in that direction: so a first line, before the PORT or PASV."""
    conn.sendall(b"220 meshd capture\r\n")
    cli.recv(100)
    cli.sendall(b"USER anonymous\r\n")
    conn.recv(100)
    conn.sendall(b"230 logged in\r\n")
    cli.recv(100)


class Traffic:
    def __init__(self, names: dict[str, str]):
        self.n = names
        self.keep: list[socket.socket] = []     # open flows stay ESTABLISHED for the dump

    def tcp_flow(self, family: int, dst: str, dport: int, server_ns: str, listen_addr: str,
                 listen_port: int, sport: int) -> None:
        """A TCP connection with data both ways, left open."""
        srv = sock_in(server_ns, family, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((listen_addr, listen_port))
        srv.listen(4)
        cli = sock_in(self.n["cli"], family, socket.SOCK_STREAM)
        cli.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
        cli.settimeout(5)
        cli.connect((dst, dport))
        conn, _ = srv.accept()
        cli.sendall(b"hello")
        conn.sendall(conn.recv(100))
        cli.recv(100)
        self.keep += [srv, cli, conn]

    def udp_flow(self, family: int, dst: str, port: int, sport: int) -> None:
        srv = sock_in(self.n["srv"], family, socket.SOCK_DGRAM)
        srv.bind((dst, port))
        cli = sock_in(self.n["cli"], family, socket.SOCK_DGRAM)
        cli.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
        cli.settimeout(5)
        cli.sendto(b"ping", (dst, port))
        _data, peer = srv.recvfrom(100)
        srv.sendto(b"pong", peer)
        cli.recvfrom(100)
        self.keep += [srv, cli]

    def echo(self, family: int, dst: str, ident: int) -> None:
        if family == socket.AF_INET:
            s = sock_in(self.n["cli"], socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"meshd"
            body = body[:2] + struct.pack("!H", icmp_checksum(body)) + body[4:]
        else:   # the kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets
            s = sock_in(self.n["cli"], socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            body = struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"meshd"
        with s:
            s.settimeout(5)
            s.sendto(body, (dst, 0))
            s.recvfrom(200)         # the echo reply (IPv4 raw sockets include the IP header)

    def sctp_init(self, dst: str, sport: int, dport: int, tag: int) -> None:
        """An SCTP INIT (no SCTP stack here: hand-made, CRC32c and all)."""
        init = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65536, 10, 10, 1000)
        pkt = struct.pack("!HHII", sport, dport, 0, 0) + init
        pkt = pkt[:8] + struct.pack("<I", crc32c(pkt)) + pkt[12:]
        with sock_in(self.n["cli"], socket.AF_INET, socket.SOCK_RAW, 132) as s:
            s.sendto(pkt, (dst, 0))

    def ftp(self) -> int:
        """Control connection through SNAT + ftp helper, then the server's active data connection."""
        srv = sock_in(self.n["srv"], socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((SRV4, 21))
        srv.listen(1)
        data_l = sock_in(self.n["cli"], socket.AF_INET, socket.SOCK_STREAM)
        data_l.bind((CLI4, 40021))
        data_l.listen(1)
        cli = sock_in(self.n["cli"], socket.AF_INET, socket.SOCK_STREAM)
        cli.settimeout(5)
        cli.connect((SRV4, 21))
        conn, _ = srv.accept()
        srv.close()             # the port is ftp_passive's next
        _ftp_login(cli, conn)
        cli.sendall(b"PORT 192,168,100,2,156,85\r\n")      # 40021 = 156 * 256 + 85
        line = conn.recv(200).decode()
        conn.sendall(b"200 PORT command successful\r\n")
        cli.recv(100)
        assert line.startswith("PORT 10,0,2,1,"), f"the helper did not rewrite: {line!r}"
        h = [int(x) for x in line.split()[1].split(",")]
        data = sock_in(self.n["srv"], socket.AF_INET, socket.SOCK_STREAM)
        data.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        data.bind((SRV4, 20))
        data.settimeout(5)
        data.connect((f"{h[0]}.{h[1]}.{h[2]}.{h[3]}", h[4] * 256 + h[5]))
        dconn, _ = data_l.accept()
        data.sendall(b"file contents\r\n")
        dconn.recv(100)
        self.keep += [data_l, cli, conn, data, dconn]
        return len(line) - len("PORT 192,168,100,2,156,85\r\n")

    def ftp_passive(self, family: int) -> int:
        """A control connection whose server announces a passive data port: PASV
        (IPv4, through the SNAT) or EPSV (IPv6); the expectation stays pending."""
        v4 = family == socket.AF_INET
        srv_addr = SRV4 if v4 else SRV6
        srv = sock_in(self.n["srv"], family, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((srv_addr, 21))
        srv.listen(1)
        cli = sock_in(self.n["cli"], family, socket.SOCK_STREAM)
        cli.settimeout(5)
        cli.connect((srv_addr, 21))
        conn, _ = srv.accept()
        _ftp_login(cli, conn)
        port = 50021 if v4 else 50022
        cli.sendall(b"PASV\r\n" if v4 else b"EPSV\r\n")
        conn.recv(100)
        if v4:
            conn.sendall(f"227 Entering Passive Mode (10,0,2,2,{port >> 8},{port & 255})\r\n".encode())
        else:
            conn.sendall(f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode())
        cli.recv(100)
        self.keep += [srv, cli, conn]
        return port

    def close(self) -> None:
        for s in self.keep:
            s.close()


# --- selection and expectations (pyroute2 as the independent decoder) -------------

def split(buf: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 16 <= len(buf):
        ln = struct.unpack_from("=I", buf, pos)[0]
        out.append(buf[pos:pos + ln])
        pos += (ln + 3) & ~3
    return out


def oracle(msg: bytes):
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
    m = nfct_msg(msg)
    m.decode()
    return m


def kind_of(msg: bytes) -> str | None:
    _ln, ty, fl, seq, _pid = struct.unpack_from("=IHHII", msg)
    if ty == 0x102:
        return "DESTROY"
    if ty != 0x100:
        return None
    return "NEW" if fl & 0x402 or seq else "UPDATE"


def tuple_fields(t, family: int) -> dict:
    ip = t.get_attr("CTA_TUPLE_IP")
    pr = t.get_attr("CTA_TUPLE_PROTO")
    v = "V4" if family == socket.AF_INET else "V6"
    out = {"src": ip.get_attr(f"CTA_IP_{v}_SRC"), "dst": ip.get_attr(f"CTA_IP_{v}_DST"),
           "proto": pr.get_attr("CTA_PROTO_NUM")}
    icmp = "CTA_PROTO_ICMP" if out["proto"] == 1 else "CTA_PROTO_ICMPV6" if out["proto"] == 58 else None
    if icmp:
        out.update(icmp_type=pr.get_attr(f"{icmp}_TYPE"), icmp_code=pr.get_attr(f"{icmp}_CODE"),
                   icmp_id=pr.get_attr(f"{icmp}_ID"))
    else:
        # pyroute2 0.9.7 does not name CTA_PROTO_* ports for SCTP; read them raw
        for name, num in (("sport", 2), ("dport", 3)):
            val = pr.get_attr(f"CTA_PROTO_{'SRC' if num == 2 else 'DST'}_PORT")
            if val is None:
                for a in pr["attrs"]:
                    if a[0] == f"CTA_PROTO_{'SRC' if num == 2 else 'DST'}_PORT":
                        val = a[1]
            out[name] = val
    return out


def expectations(msg: bytes) -> dict:
    """What the message says, per pyroute2 plus the netlink header."""
    _ln, _ty, _fl, _seq, pid = struct.unpack_from("=IHHII", msg)
    m = oracle(msg)
    family = m["nfgen_family"]
    orig = tuple_fields(m.get_attr("CTA_TUPLE_ORIG"), family)
    exp = {"kind": kind_of(msg), "portid": pid, "family": family, "l4proto": orig["proto"],
           "orig": orig}
    if m.get_attr("CTA_TUPLE_REPLY") is not None:
        exp["reply"] = tuple_fields(m.get_attr("CTA_TUPLE_REPLY"), family)
    for name, key in (("CTA_STATUS", "status"), ("CTA_MARK", "mark"), ("CTA_ZONE", "zone"),
                      ("CTA_TIMEOUT", "timeout"), ("CTA_ID", "id")):
        if m.get_attr(name) is not None:
            exp[key] = m.get_attr(name)
    pi = m.get_attr("CTA_PROTOINFO")
    if pi is not None and pi.get_attr("CTA_PROTOINFO_TCP") is not None:
        tcp = pi.get_attr("CTA_PROTOINFO_TCP")
        exp["tcp_state"] = tcp.get_attr("CTA_PROTOINFO_TCP_STATE")
        if tcp.get_attr("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL") is not None:
            exp["tcp_wscale"] = [tcp.get_attr("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL"),
                                 tcp.get_attr("CTA_PROTOINFO_TCP_WSCALE_REPLY")]
            exp["tcp_flags"] = [tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL")[0],
                                tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_REPLY")[0]]
    if pi is not None and pi.get_attr("CTA_PROTOINFO_SCTP") is not None:
        sc = pi.get_attr("CTA_PROTOINFO_SCTP")
        exp["sctp"] = {"state": sc.get_attr("CTA_PROTOINFO_SCTP_STATE"),
                       "vtag_orig": sc.get_attr("CTA_PROTOINFO_SCTP_VTAG_ORIGINAL"),
                       "vtag_reply": sc.get_attr("CTA_PROTOINFO_SCTP_VTAG_REPLY")}
    labels = m.get_attr("CTA_LABELS")
    if labels is not None:
        exp["labels"] = labels        # pyroute2: one integer, bit n = label n
    for name, key in (("CTA_SEQ_ADJ_ORIG", "seq_adj_orig"), ("CTA_SEQ_ADJ_REPLY", "seq_adj_reply")):
        sa = m.get_attr(name)
        if sa is not None:
            exp[key] = {"correction_pos": sa.get_attr("CTA_NAT_SEQ_CORRECTION_POS"),
                        "offset_before": sa.get_attr("CTA_NAT_SEQ_OFFSET_BEFORE"),
                        "offset_after": sa.get_attr("CTA_NAT_SEQ_OFFSET_AFTER")}
    for name, key in (("CTA_COUNTERS_ORIG", "counters_orig"), ("CTA_COUNTERS_REPLY", "counters_reply")):
        cn = m.get_attr(name)
        if cn is not None:
            exp[key] = {"packets": cn.get_attr("CTA_COUNTERS_PACKETS"), "bytes": cn.get_attr("CTA_COUNTERS_BYTES")}
    if m.get_attr("CTA_TUPLE_MASTER") is not None:
        exp["master"] = tuple_fields(m.get_attr("CTA_TUPLE_MASTER"), family)
    # The key (meshd's layout, see meshd/kernel/ctnetlink/events.py), computed here from the fields.
    zone = exp.get("zone", 0)
    addr = lambda a: socket.inet_pton(family, a)
    if orig["proto"] in (1, 58):
        l4 = struct.pack("!BBH", orig["icmp_type"], orig["icmp_code"], orig["icmp_id"])
    else:
        l4 = struct.pack("!HH", orig.get("sport") or 0, orig.get("dport") or 0)
    exp["key"] = (struct.pack("!HBB", zone, family, orig["proto"]) + addr(orig["src"]) + addr(orig["dst"]) + l4).hex()
    return exp


class ExpectOracle:
    """An expectation message (IPCTNL_MSG_EXP_*) for pyroute2's decoder, built on first use."""
    cls = None

    @classmethod
    def decode(cls, msg: bytes):
        if cls.cls is None:
            from pyroute2.netlink import nla
            from pyroute2.netlink.nfnetlink import nfgen_msg
            from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

            class nfexp_msg(nfgen_msg):
                prefix = "CTA_EXPECT_"
                nla_map = (("CTA_EXPECT_UNSPEC", "none"), ("CTA_EXPECT_MASTER", "cta_tuple"),
                           ("CTA_EXPECT_TUPLE", "cta_tuple"), ("CTA_EXPECT_MASK", "cta_tuple"),
                           ("CTA_EXPECT_TIMEOUT", "be32"), ("CTA_EXPECT_ID", "be32"),
                           ("CTA_EXPECT_HELP_NAME", "asciiz"), ("CTA_EXPECT_ZONE", "be16"),
                           ("CTA_EXPECT_FLAGS", "be32"), ("CTA_EXPECT_CLASS", "be32"),
                           ("CTA_EXPECT_NAT", "cta_expect_nat"), ("CTA_EXPECT_FN", "asciiz"))
                cta_tuple = nfct_msg.cta_tuple

                class cta_expect_nat(nla):
                    nla_map = (("CTA_EXPECT_NAT_UNSPEC", "none"), ("CTA_EXPECT_NAT_DIR", "be32"),
                               ("CTA_EXPECT_NAT_TUPLE", "cta_tuple"))
                    cta_tuple = nfct_msg.cta_tuple

            cls.cls = nfexp_msg
        m = cls.cls(msg)
        m.decode()
        return m


def expect_kind(msg: bytes) -> str | None:
    ty = struct.unpack_from("=IH", msg)[1]
    return {0x200: "EXP_NEW", 0x202: "EXP_DESTROY"}.get(ty)


def expectation_fields(msg: bytes) -> dict:
    """What an expectation message says, per pyroute2 (ExpectOracle) plus the netlink header."""
    _ln, _ty, _fl, _seq, pid = struct.unpack_from("=IHHII", msg)
    m = ExpectOracle.decode(msg)
    family = m["nfgen_family"]
    exp = {"kind": expect_kind(msg), "portid": pid, "family": family}
    for name, key in (("CTA_EXPECT_TUPLE", "tuple"), ("CTA_EXPECT_MASK", "mask"),
                      ("CTA_EXPECT_MASTER", "master")):
        exp[key] = tuple_fields(m.get_attr(name), family)
    for name, key in (("CTA_EXPECT_TIMEOUT", "timeout"), ("CTA_EXPECT_ID", "id"),
                      ("CTA_EXPECT_HELP_NAME", "helper"), ("CTA_EXPECT_ZONE", "zone"),
                      ("CTA_EXPECT_FLAGS", "flags"), ("CTA_EXPECT_CLASS", "class"), ("CTA_EXPECT_FN", "fn")):
        if m.get_attr(name) is not None:
            exp[key] = m.get_attr(name)
    nat = m.get_attr("CTA_EXPECT_NAT")
    if nat is not None:
        exp["nat"] = {"dir": ("orig", "reply")[nat.get_attr("CTA_EXPECT_NAT_DIR")],
                      "tuple": tuple_fields(nat.get_attr("CTA_EXPECT_NAT_TUPLE"), family)}
    # The keys (meshd's layouts, meshd/kernel/ctnetlink/events.py): the expectation's own
    # (b"E", then a conntrack key of its tuple) and its master's, computed from the fields.
    addr = lambda a: socket.inet_pton(family, a)
    pack = lambda t: (struct.pack("!HBB", exp.get("zone", 0), family, t["proto"]) + addr(t["src"])
                      + addr(t["dst"]) + struct.pack("!HH", t.get("sport") or 0, t.get("dport") or 0))
    exp["key"] = (b"E" + pack(exp["tuple"])).hex()
    exp["master_key"] = pack(exp["master"]).hex()
    return exp


def pick_expectation(messages: list[bytes], kind: str, **match) -> bytes | None:
    """The last expectation message of that kind whose tuple matches."""
    found = None
    for msg in messages:
        if expect_kind(msg) != kind:
            continue
        m = ExpectOracle.decode(msg)
        t = tuple_fields(m.get_attr("CTA_EXPECT_TUPLE"), m["nfgen_family"])
        if all(t.get(k) == v for k, v in match.items()):
            found = msg
    return found


def pick(messages: list[bytes], kind: str, **match) -> bytes | None:
    """The last message of that kind whose orig tuple matches (and that satisfies `where`)."""
    where = match.pop("where", None)
    found = None
    for msg in messages:
        if kind_of(msg) != kind:
            continue
        m = oracle(msg)
        o = tuple_fields(m.get_attr("CTA_TUPLE_ORIG"), m["nfgen_family"])
        if all(o.get(k) == v for k, v in match.items()) and (where is None or where(m)):
            found = msg
    return found


def tcp_state(m) -> int | None:
    pi = m.get_attr("CTA_PROTOINFO")
    tcp = pi and pi.get_attr("CTA_PROTOINFO_TCP")
    return tcp.get_attr("CTA_PROTOINFO_TCP_STATE") if tcp else None


# --- the capture --------------------------------------------------------------------

def capture() -> dict:
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, nftables, conntrack)")
    names = build(f"mshct-{os.getpid()}")
    traffic = None
    try:
        fw = names["fw"]
        lst = Listener(fw)
        traffic = Traffic(names)
        traffic.tcp_flow(socket.AF_INET, SRV4, 5001, names["srv"], SRV4, 5001, 41001)
        traffic.tcp_flow(socket.AF_INET6, SRV6, 5001, names["srv"], SRV6, 5001, 41002)
        traffic.tcp_flow(socket.AF_INET, SRV4, 5002, names["srv"], SRV4, 5002, 41003)      # SNAT
        traffic.tcp_flow(socket.AF_INET, FW4C, 8080, names["srv"], SRV4, 80, 41004)        # DNAT
        traffic.udp_flow(socket.AF_INET, SRV4, 5301, 41005)
        traffic.udp_flow(socket.AF_INET, SRV4, 5300, 41006)                                # zone/mark/label
        traffic.echo(socket.AF_INET, SRV4, 0x4d31)
        traffic.echo(socket.AF_INET6, SRV6, 0x4d32)
        traffic.sctp_init(SRV4, 41007, 3868, 0x11223344)
        growth = traffic.ftp()
        pasv_port = traffic.ftp_passive(socket.AF_INET)
        epsv_port = traffic.ftp_passive(socket.AF_INET6)
        # An entry created through ctnetlink (its events carry the tool's portid).
        in_ns(fw, "conntrack", "-I", "-p", "sctp", "-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", "2905",
              "--dport", "2905", "--state", "ESTABLISHED", "--orig-vtag", "0xa1b2c3d4",
              "--reply-vtag", "0x01020304", "-t", "300", "-u", "SEEN_REPLY,ASSURED")
        lst.settle()
        dumped = dump(fw)
        dumped_exp = dump(fw, 0x201)
        # DESTROY: one through a request (the tool's portid), one by expiry (portid 0).
        in_ns(fw, "conntrack", "-D", "-p", "udp", "--orig-port-dst", "5301")
        # The garbage collector visits rarely while long-lived entries dominate;
        # a packet of the same flow after the 3 s ICMP timeout finds the entry
        # expired and the lookup reaps it: a DESTROY with portid 0.
        time.sleep(4)
        traffic.echo(socket.AF_INET, SRV4, 0x4d31)
        lst.settle()
        events = [m for d in lst.datagrams for m in split(d)]
        lst.close()
    finally:
        if traffic:
            traffic.close()
        teardown(names)

    est = lambda m: tcp_state(m) == 3
    cases = [
        ("ipv4_tcp_new", "first packet (SYN) of an IPv4 TCP flow",
         pick(events, "NEW", proto=6, sport=41001)),
        ("ipv4_tcp_established", "IPv4 TCP reaching ESTABLISHED, window scale both ways",
         pick(events, "UPDATE", proto=6, sport=41001, where=est)),
        ("ipv4_udp_new", "IPv4 UDP, first packet", pick(events, "NEW", proto=17, sport=41005)),
        ("ipv4_udp_reply", "IPv4 UDP after the reply (SEEN_REPLY)", pick(events, "UPDATE", proto=17, sport=41005)),
        ("icmp_echo", "ICMP echo request/reply", pick(events, "UPDATE", proto=1)),
        ("ipv6_tcp_established", "IPv6 TCP reaching ESTABLISHED",
         pick(events, "UPDATE", proto=6, sport=41002, where=est)),
        ("icmpv6_echo", "ICMPv6 echo request/reply", pick(events, "UPDATE", proto=58)),
        ("sctp_init", "SCTP INIT seen on the wire (COOKIE_WAIT, vtag)", pick(events, "NEW", proto=132, sport=41007)),
        ("sctp_injected", "SCTP ESTABLISHED created through ctnetlink by the conntrack tool (portid != 0)",
         pick(events, "NEW", proto=132, sport=2905)),
        ("zone_mark_labels_new", "UDP in zone 7 with mark 0x2a and connlabel bit 3: the NEW event",
         pick(events, "NEW", proto=17, sport=41006)),
        ("zone_mark_update", "the same flow's UPDATE (labels unchanged: the kernel leaves them out)",
         pick(events, "UPDATE", proto=17, sport=41006)),
        ("snat_tcp", "TCP through SNAT to 10.0.2.1", pick(events, "UPDATE", proto=6, sport=41003, where=est)),
        ("dnat_tcp", "TCP to 192.168.100.1:8080 through DNAT to 10.0.2.2:80",
         pick(events, "UPDATE", proto=6, sport=41004, where=est)),
        ("ftp_data_related", "FTP active data connection: RELATED, CTA_TUPLE_MASTER",
         pick(events, "NEW", proto=6, sport=20)),
        ("destroy_request", "DESTROY caused by `conntrack -D` (counters, timestamps, portid)",
         pick(events, "DESTROY", proto=17, sport=41005)),
        ("destroy_expired", "DESTROY of an expired ICMP entry (portid 0)", pick(events, "DESTROY", proto=1)),
    ]
    # The dump entry of the FTP control connection: everything an entry can carry at once.
    dump_msgs = [m for m in split(dumped) if kind_of(m)]
    cases.append(("dump_ftp_control", (f"dump entry: FTP control through SNAT + ftp helper, the PORT command "
                                       f"rewritten ({growth:+d} bytes): CTA_HELP, CTA_SEQ_ADJ_*, counters"),
                  pick(dump_msgs, "NEW", proto=6, dport=21,
                       where=lambda m: m.get_attr("CTA_SEQ_ADJ_ORIG") is not None)))
    cases.append(("dump_ftp_data_related", "dump entry: the FTP data connection (EXPECTED, CTA_TUPLE_MASTER, DNAT)",
                  pick(dump_msgs, "NEW", proto=6, sport=20)))
    cases.append(("dump_zone_mark_labels", "dump entry: UDP in zone 7, mark 0x2a, connlabel bit 3",
                  pick(dump_msgs, "NEW", proto=17, sport=41006)))
    cases.append(("dump_ipv4_tcp", "dump entry: IPv4 TCP ESTABLISHED", pick(dump_msgs, "NEW", proto=6, sport=41001)))
    exp_dump_msgs = [m for m in split(dumped_exp) if expect_kind(m)]
    expect_cases = [
        ("expect_active_new", "EXP_NEW: active FTP (PORT rewritten by the SNAT's helper): the server's data "
         "connection expected, CTA_EXPECT_NAT", pick_expectation(events, "EXP_NEW", dport=40021)),
        ("expect_active_destroy", "EXP_DESTROY: the same expectation used up by its data connection",
         pick_expectation(events, "EXP_DESTROY", dport=40021)),
        ("expect_passive_nat", "EXP_NEW: PASV through the SNAT, CTA_EXPECT_NAT and nat-follow-master",
         pick_expectation(events, "EXP_NEW", dport=pasv_port)),
        ("expect_epsv_ipv6", "EXP_NEW: EPSV over IPv6, no NAT", pick_expectation(events, "EXP_NEW", dport=epsv_port)),
        ("dump_expect_passive", "expectation dump entry: the PASV expectation still pending",
         pick_expectation(exp_dump_msgs, "EXP_NEW", dport=pasv_port)),
    ]
    expect_vectors = []
    for name, what, msg in expect_cases:
        if msg is None:
            print(f"warning: no message for {name}", file=sys.stderr)
            continue
        expect_vectors.append({"name": name, "what": what, "hex": msg.hex(), "expect": expectation_fields(msg)})
    vectors = []
    for name, what, msg in cases:
        if msg is None:
            print(f"warning: no message for {name}", file=sys.stderr)
            continue
        vectors.append({"name": name, "what": what, "hex": msg.hex(), "expect": expectations(msg)})
    return {
        "about": "Real ctnetlink messages from kernel " + platform.release() +
                 ", captured by proto/vectors/capture_ctnetlink.py (root, network namespaces). "
                 "hex = one whole netlink message (nlmsghdr included). expect = the fields per pyroute2's "
                 "decoder and the netlink header; key = meshd's key layout computed from them.",
        "vectors": vectors,
        "expect_vectors": expect_vectors,
        "expect_dump": {"what": "a whole expectation dump reply (IPCTNL_MSG_EXP_GET, NLMSG_DONE last)",
                        "hex": dumped_exp.hex(), "entries": len(exp_dump_msgs)},
        "dump": {"what": "a whole dump reply (every datagram concatenated, NLMSG_DONE last)",
                 "hex": dumped.hex(), "entries": len(dump_msgs)},
    }


def main() -> None:
    data = capture()
    text = json.dumps(data, indent=1) + "\n"
    if "--print" in sys.argv:
        print(text)
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}: {len(data['vectors'])} vectors, dump of {data['dump']['entries']} entries, "
              f"{len(data['expect_vectors'])} expectation vectors")


if __name__ == "__main__":
    main()
