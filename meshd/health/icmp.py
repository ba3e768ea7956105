"""ICMP echo for the icmp check, IPv4 and IPv6, on trio sockets.

Two kinds of socket, tried in this order per family:

- the ICMP datagram ("ping") socket, socket(AF_INET, SOCK_DGRAM,
  IPPROTO_ICMP): no privilege needed when the process's group is inside
  net.ipv4.ping_group_range (the same sysctl also governs IPv6). The kernel
  sets the echo id to the socket's own and delivers only the replies to it.
  Connected, it also reports ICMP errors (host unreachable) as recv errors.
- a raw socket (CAP_NET_RAW, which the daemon has as root): it sees every
  ICMP packet of the namespace, so replies are matched by id, sequence and a
  per-request token in the payload, and a kernel filter keeps out the types
  we never read.

The first kind that works is remembered per family.

A process without CAP_NET_RAW (the check engine, meshd/health/engine.py)
cannot open a raw socket, and Debian's default ping_group_range ("1 0")
allows no ping socket either.  Its privileged parent then opens one raw
socket per family (`open_raw`) and passes it over at exec; `SharedRaw`
holds it, one reader task hands each reply to the echo waiting for it
(matched by id, sequence and token as above), and `echo` uses it when one
is installed for the family (`install_shared`).

Must not: keep a socket between checks (each echo opens its own, unless a
shared raw socket was installed), or time out by itself: the caller's cancel scope, the check's timeout, bounds `echo`.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import socket
import struct

import trio

ICMP_ECHO_REPLY, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
ICMP6_DEST_UNREACH, ICMP6_TIME_EXCEEDED, ICMP6_ECHO, ICMP6_ECHO_REPLY = 1, 3, 128, 129
SOL_RAW = 255
ICMP_FILTER = 1             # IPv4 raw: bitmask of types to drop
ICMP6_FILTER = 1            # IPv6 raw: struct icmp6_filter, a set bit drops the type
IP_RECVERR, IPV6_RECVERR = 11, 25
PAYLOAD_PAD = b"meshd-icmp-check".ljust(40, b".")

_seq = itertools.count(random.randrange(1 << 16))
_kind: dict[int, str] = {}          # family -> "dgram" | "raw", once one worked


class IcmpError(Exception):
    """The echo failed; the message is phrased for the log."""


class NoIcmpSocket(IcmpError):
    """Neither a ping socket nor a raw socket may be opened here."""


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(v6: bool, ident: int, seq: int, token: bytes) -> bytes:
    """An echo request; the IPv4 checksum is filled in (the kernel does IPv6's)."""
    payload = token + PAYLOAD_PAD
    head = struct.pack("!BBHHH", ICMP6_ECHO if v6 else ICMP_ECHO, 0, 0, ident, seq)
    if v6:
        return head + payload
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(head + payload), ident, seq) + payload


def match_reply(data: bytes, v6: bool, raw: bool, ident: int | None, seq: int, token: bytes) -> str | None:
    """"ok" for our echo reply, an error phrase for an ICMP error about our request, None otherwise.

    data is what recv returned: raw IPv4 sockets include the IP header.
    ident None: do not compare ids (ping sockets: the kernel chose and checked it).
    """
    if raw and not v6:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        return None
    itype, code, _csum, rid, rseq = struct.unpack_from("!BBHHH", data)
    if itype == (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY):
        if rseq == seq and (ident is None or rid == ident) and data[8:8 + len(token)] == token:
            return "ok"
        return None
    errors = {ICMP6_DEST_UNREACH: "destination unreachable", ICMP6_TIME_EXCEEDED: "time exceeded"} if v6 \
        else {ICMP_DEST_UNREACH: "destination unreachable", ICMP_TIME_EXCEEDED: "time exceeded"}
    if itype not in errors:
        return None
    # The error quotes our request: its IP header, then at least 8 bytes of ICMP.
    inner = data[8:]
    if v6:
        if len(inner) < 48 or inner[6] != 58:
            return None
        quoted = inner[40:48]
    else:
        if len(inner) < 20 or inner[9] != 1:
            return None
        quoted = inner[(inner[0] & 0x0F) * 4:][:8]
    if len(quoted) < 8:
        return None
    qtype, _qc, _qs, qid, qseq = struct.unpack("!BBHHH", quoted)
    if qtype == (ICMP6_ECHO if v6 else ICMP_ECHO) and qseq == seq and (ident is None or qid == ident):
        return f"icmp: {errors[itype]} (code {code})"
    return None


def _open(family: int, kind: str) -> socket.socket:
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    stype = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_RAW
    sock = socket.socket(family, stype | socket.SOCK_CLOEXEC, proto)
    if kind == "dgram":
        # Without RECVERR a ping socket reports only "hard" ICMP errors;
        # network and host unreachable are "soft" and would end in a timeout.
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        except OSError:
            pass
    if kind == "raw":
        try:
            if family == socket.AF_INET:
                keep = (1 << ICMP_ECHO_REPLY) | (1 << ICMP_DEST_UNREACH) | (1 << ICMP_TIME_EXCEEDED)
                sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~keep & 0xFFFFFFFF))
            else:
                words = [0xFFFFFFFF] * 8
                for t in (ICMP6_ECHO_REPLY, ICMP6_DEST_UNREACH, ICMP6_TIME_EXCEEDED):
                    words[t >> 5] &= ~(1 << (t & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
        except OSError:
            pass        # only an optimisation: replies are matched anyway
    return sock


def open_socket(family: int) -> tuple[socket.socket, str]:
    """A socket for echo requests and its kind; NoIcmpSocket when neither kind is allowed."""
    kinds = [_kind[family]] if family in _kind else ["dgram", "raw"]
    failures = []
    for kind in kinds:
        try:
            sock = _open(family, kind)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT):
                raise
            failures.append(f"{kind}: {os.strerror(e.errno)}")
            continue
        _kind[family] = kind
        return sock, kind
    raise NoIcmpSocket("icmp: no ICMP socket allowed (" + "; ".join(failures) +
                       "): widen net.ipv4.ping_group_range or grant CAP_NET_RAW")


def icmp_available(family: int = socket.AF_INET) -> str | None:
    """None when an ICMP socket can be opened here, else why not (for tests and `meshd --check`)."""
    for kind in ("dgram", "raw"):
        try:
            _open(family, kind).close()
            return None
        except OSError:
            continue
    return "neither an ICMP datagram socket (net.ipv4.ping_group_range) nor a raw socket (CAP_NET_RAW) is allowed"


def open_raw(family: int) -> socket.socket:
    """A raw ICMP socket of `family` (needs CAP_NET_RAW), for `SharedRaw` in another process."""
    return _open(family, "raw")


class SharedRaw:
    """One raw ICMP socket shared by every echo of this process (see the module's docstring)."""

    def __init__(self, sock: socket.socket):
        self.v6 = sock.family == socket.AF_INET6
        sock.setblocking(False)
        self.sock = trio.socket.from_stdlib_socket(sock)
        self._waiters: dict[int, list] = {}      # key -> [ident, seq, token, event, verdict]
        self._keys = itertools.count()

    async def run(self) -> None:
        """The reader: every packet offered to each waiting echo."""
        while True:
            data = await self.sock.recv(2048)
            for w in list(self._waiters.values()):
                verdict = match_reply(data, self.v6, True, w[0], w[1], w[2])
                if verdict is not None:
                    w[4] = verdict
                    w[3].set()

    async def echo(self, sockaddr) -> None:
        seq = next(_seq) & 0xFFFF
        token = os.urandom(8)
        ident = random.randrange(1, 1 << 16)
        waiter = [ident, seq, token, trio.Event(), None]
        key = next(self._keys)
        self._waiters[key] = waiter
        try:
            try:
                await self.sock.sendto(echo_request(self.v6, ident, seq, token), sockaddr)
            except OSError as e:
                raise IcmpError(f"icmp: {_phrase(e)}") from None
            await waiter[3].wait()
        finally:
            del self._waiters[key]
        if waiter[4] != "ok":
            raise IcmpError(waiter[4])


_shared: dict[int, SharedRaw] = {}


def install_shared(sock: socket.socket) -> SharedRaw:
    """Use `sock` (a raw ICMP socket) for every echo of its family from now on;
    the caller runs the returned object's `run()` in its nursery."""
    shared = SharedRaw(sock)
    _shared[sock.family] = shared
    return shared


async def echo(address: str, kind: str | None = None) -> None:
    """One echo request to address; returns on the matching reply, IcmpError otherwise.

    Bound by the caller's timeout (trio cancellation). kind forces "dgram"
    or "raw" (tests); by default the first kind that works.
    """
    info = socket.getaddrinfo(address, 0, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0]
    family, sockaddr = info[0], info[4]
    v6 = family == socket.AF_INET6
    if kind is None and family in _shared:
        await _shared[family].echo(sockaddr)
        return
    if kind is None:
        plain, kind = open_socket(family)
    else:
        plain = _open(family, kind)
    with trio.socket.from_stdlib_socket(plain) as sock:
        raw = kind == "raw"
        seq = next(_seq) & 0xFFFF
        token = os.urandom(8)
        ident = random.randrange(1, 1 << 16) if raw else 0
        # Ping sockets: the kernel replaces our id with the socket's own and
        # delivers only replies carrying it, so the id is not compared.
        ident_check = ident if raw else None
        try:
            if raw:
                # Not connected: a connected raw socket only hears its peer,
                # and "unreachable" comes from a router on the way.
                await sock.sendto(echo_request(v6, ident, seq, token), sockaddr)
            else:
                # Connected: ICMP errors about our request come back as recv errors.
                await sock.connect(sockaddr)
                await sock.send(echo_request(v6, ident, seq, token))
            while True:
                data = await sock.recv(2048)
                verdict = match_reply(data, v6, raw, ident_check, seq, token)
                if verdict == "ok":
                    return
                if verdict is not None:
                    raise IcmpError(verdict)
        except OSError as e:
            raise IcmpError(f"icmp: {_phrase(e)}") from None


def _phrase(e: OSError) -> str:
    text = os.strerror(e.errno) if e.errno else str(e)
    return text[:1].lower() + text[1:]
