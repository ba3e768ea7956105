"""NFLOG reader: the TCP resets that nftables logs to a group (l4ip's RST watcher).

The load balancer's forward chain logs resets sent by a redirect's backends
(`... tcp flags rst log prefix "<redirect>" group N`, meshd/kernel/nft/render.py).
NflogReader binds that group on a NETLINK_NETFILTER socket (nfnetlink_log,
subsystem NFNL_SUBSYS_ULOG), asks for the first bytes of each packet, and
turns each logged packet into a LoggedReset(address, port, prefix): who sent
the reset and which redirect's rule saw it.

Sans-I/O core: parse_packets(buf) decodes a datagram of netlink messages and
never raises on what the kernel (or anyone) sends; undecodable packets are
counted and skipped. The socket side is a non-blocking socket for trio
(trio.lowlevel.wait_readable), read in bursts like the conntrack reader.

Binding a group needs CAP_NET_ADMIN. A group is bound by one socket per
network namespace: a second binder (another meshd, ulogd) gets EPERM.

Must not: judge a reset (the health core counts bursts: HealthCore.rst_seen),
write rules (render.py writes the watcher rule), or raise on what arrives on
the socket.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple, Self

import trio

from .closing import close_socket

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
MSG_PACKET = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET
MSG_CONFIG = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG

# enum nfulnl_attr_config
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 3, 4, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
# enum nfulnl_attr_type (packet messages)
NFULA_PACKET_HDR, NFULA_PAYLOAD, NFULA_PREFIX = 1, 9, 10

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLA_TYPE_MASK = 0x3FFF
IPPROTO_TCP = 6
TCP_RST = 0x04

_HDR = struct.Struct("=IHHII")      # nlmsghdr (host order)
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_RECV_SIZE = 1 << 16

# IPv6 extension headers a reset may carry before its TCP header:
# hop-by-hop, routing, destination options ((len + 1) * 8 bytes), fragment (8).
_EXT_8N = (0, 43, 60)
_EXT_FRAGMENT = 44

Log = Callable[..., None]


def _no_log(event: str, level: str = "info", **fields) -> None:
    pass


class NflogError(OSError):
    """The group could not be bound or configured (errno and the reason)."""


class LoggedReset(NamedTuple):
    address: str            # who sent the reset (a backend)
    port: int               # its source port (the backend's service port)
    prefix: str             # the log prefix: the redirect's name


class Parsed(NamedTuple):
    resets: list            # LoggedReset for each logged TCP segment with RST set
    skipped: int            # packets logged that were not a decodable TCP reset
    errors: list            # (seq, errno) of NLMSG_ERROR answers


def _attrs(buf: bytes, start: int, end: int):
    a = start
    while a + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, a)
        if alen < 4 or a + alen > end:
            return
        yield atype & NLA_TYPE_MASK, a + 4, a + alen
        a += (alen + 3) & ~3


def tcp_source(packet: bytes) -> tuple[str, int, int] | None:
    """(source address, source port, TCP flags) of an IPv4/IPv6 TCP packet, or None.

    Only the first fragment carries a TCP header; later fragments and other
    protocols give None, as does anything truncated.
    """
    if len(packet) < 1:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return None
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or packet[9] != IPPROTO_TCP:
            return None
        if struct.unpack_from("!H", packet, 6)[0] & 0x1FFF:     # not the first fragment
            return None
        src = str(ipaddress.IPv4Address(packet[12:16]))
        off = ihl
    elif version == 6:
        if len(packet) < 40:
            return None
        src = str(ipaddress.IPv6Address(packet[8:24]))
        nh, off = packet[6], 40
        while nh != IPPROTO_TCP:
            if len(packet) < off + 8:
                return None
            if nh in _EXT_8N:
                nh, off = packet[off], off + (packet[off + 1] + 1) * 8
            elif nh == _EXT_FRAGMENT:
                if struct.unpack_from("!H", packet, off + 2)[0] & 0xFFF8:
                    return None
                nh, off = packet[off], off + 8
            else:
                return None
    else:
        return None
    if len(packet) < off + 14:
        return None
    sport = struct.unpack_from("!H", packet, off)[0]
    return src, sport, packet[off + 13]


def parse_packets(buf: bytes) -> Parsed:
    """Decode one datagram from an NFLOG socket."""
    resets: list[LoggedReset] = []
    skipped = 0
    errors: list[tuple[int, int]] = []
    pos, n = 0, len(buf)
    while pos + 16 <= n:
        mlen, mtype, _flags, seq, _pid = _HDR.unpack_from(buf, pos)
        if mlen < 16 or pos + mlen > n:
            skipped += 1
            break
        end = pos + mlen
        if mtype == NLMSG_DONE:
            break
        if mtype == NLMSG_ERROR and mlen >= 20:
            err = -_ERR.unpack_from(buf, pos + 16)[0]
            if err:
                errors.append((seq, err))
        elif mtype == MSG_PACKET and mlen >= 20:
            payload = None
            prefix = ""
            for t, s, e in _attrs(buf, pos + 20, end):
                if t == NFULA_PAYLOAD:
                    payload = buf[s:e]
                elif t == NFULA_PREFIX:
                    prefix = buf[s:e].split(b"\0", 1)[0].decode(errors="replace")
            found = tcp_source(payload) if payload is not None else None
            if found is not None and found[2] & TCP_RST:
                resets.append(LoggedReset(found[0], found[1], prefix))
            else:
                skipped += 1
        pos += (mlen + 3) & ~3
    return Parsed(resets, skipped, errors)


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * (-n & 3)


def encode_config(group: int, seq: int, *attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    """An NFULNL_MSG_CONFIG request for a group, asking for an ACK."""
    body = struct.pack("=BB", family, 0) + struct.pack("!H", group) + b"".join(attrs)
    return _HDR.pack(16 + len(body), MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_group_messages(group: int, copy_range: int) -> list[bytes]:
    """Bind the group, copy `copy_range` bytes of each packet, send each packet at once."""
    return [
        encode_config(group, 1, _nla(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_BIND,)))),
        encode_config(group, 2, _nla(NFULA_CFG_MODE, struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0))),
        # The kernel batches packets into one datagram until 100 are queued or
        # a second passed (its defaults); a reset is worth most while fresh.
        encode_config(group, 3, _nla(NFULA_CFG_QTHRESH, struct.pack("!I", 1))),
        encode_config(group, 4, _nla(NFULA_CFG_TIMEOUT, struct.pack("!I", 1))),
    ]


class NflogReader:
    """The resets logged to one NFLOG group, for one trio task.

    Args:
      group: the NFLOG group of the rules (LbRedirect.nflog_group).
      copy_range: bytes of each packet to copy (enough for the IP and TCP headers).
      burst: datagrams read per wakeup at most.

    Raises NflogError when the group cannot be bound (EPERM: another socket
    holds it, or no CAP_NET_ADMIN).
    """

    def __init__(self, group: int, *, copy_range: int = 128, rcvbuf: int = 1 << 20, burst: int = 256,
                 log: Log = _no_log):
        if not 0 <= group <= 65535:
            raise ValueError(f"NFLOG group {group} not in 0-65535")
        self.group = group
        self.burst = burst
        self.log = log
        self.resets = 0
        self.skipped = 0
        self.overruns = 0
        self._buf = bytearray(_RECV_SIZE)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, 0))
            self._configure(copy_range)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def _configure(self, copy_range: int) -> None:
        self.sock.settimeout(5)
        for msg in bind_group_messages(self.group, copy_range):
            self.sock.send(msg)
            seq = _HDR.unpack_from(msg, 0)[3]
            while True:
                try:
                    data = self.sock.recv(_RECV_SIZE)
                except TimeoutError:
                    raise NflogError(errno.ETIMEDOUT, f"NFLOG group {self.group}: no answer to configuration") from None
                parsed = parse_packets(data)
                err = dict(parsed.errors).get(seq)
                if err:
                    # The kernel says EPERM both without CAP_NET_ADMIN and when
                    # another socket already holds the group.
                    hint = {errno.EPERM: " (another socket holds this group, e.g. ulogd or another meshd; "
                                         "or no CAP_NET_ADMIN)"}.get(err, "")
                    raise NflogError(err, f"NFLOG group {self.group}: {os.strerror(err)}{hint}")
                if _acked(data, seq):
                    break

    def read_burst(self) -> list[LoggedReset]:
        """Read up to `burst` datagrams without blocking; the resets in them."""
        out: list[LoggedReset] = []
        for _ in range(self.burst):
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                # Resets are evidence, not state: losing some only delays a
                # verdict the active checks reach anyway.
                self.overruns += 1
                self.log("nflog_overrun", level="warning", group=self.group, overruns=self.overruns)
                continue
            parsed = parse_packets(bytes(self._buf[:n]))
            out.extend(parsed.resets)
            self.skipped += parsed.skipped
        self.resets += len(out)
        return out

    async def receive(self) -> list[LoggedReset]:
        """Wait until resets arrive; return them (never an empty list)."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            resets = self.read_burst()
            if resets:
                return resets

    async def run(self, send_channel) -> None:
        """Forever: send one list of LoggedReset per burst on a trio memory channel."""
        while True:
            await send_channel.send(await self.receive())

    def stats(self) -> dict:
        return {"resets": self.resets, "skipped": self.skipped, "overruns": self.overruns}

    def close(self) -> None:
        close_socket(self.sock)     # the kernel unbinds the group with the socket

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _acked(data: bytes, seq: int) -> bool:
    pos, n = 0, len(data)
    while pos + 20 <= n:
        mlen, mtype, _f, mseq, _p = _HDR.unpack_from(data, pos)
        if mlen < 16:
            return False
        if mtype == NLMSG_ERROR and mseq == seq and _ERR.unpack_from(data, pos + 16)[0] == 0:
            return True
        pos += (mlen + 3) & ~3
    return False
