"""Time when addresses appear (or disappear) in a network namespace.

Run inside the namespace:

    ip netns exec NS python3 -m meshlab.watch [--absent] [--timeout S] ADDR...

It subscribes to rtnetlink address events (RTMGRP_IPV4_IFADDR|RTMGRP_IPV6_IFADDR)
on a raw netlink socket, then dumps the current addresses, and prints JSON lines:

    {"event": "ready", "time": T, "present": [...]}        once armed
    {"event": "present", "time": T, "addresses": [...]}    when ALL are present
    {"event": "absent", "time": T, "addresses": [...]}     (--absent) when NONE is
    {"event": "timeout", "time": T, "present": [...]}      exit status 1

T is time.monotonic(): CLOCK_MONOTONIC is not namespaced by network namespaces,
so the parent compares it directly with its own monotonic timestamps.  IPv6
addresses still tentative (DAD) do not count as present.

The parent side: `start_watch` / `Watch.wait_ready` / `Watch.wait_result`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time

NETLINK_ROUTE = 0
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40

NLMSG = struct.Struct("=IHHII")
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_addr_messages(data: bytes):
    """Yield (msg_type, address or None, usable) for each netlink message in data."""
    off = 0
    while off + NLMSG.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSG.unpack_from(data, off)
        if length < NLMSG.size:
            break
        body = data[off + NLMSG.size: off + length]
        off += _align(length)
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            yield mtype, None, False
            continue
        if mtype not in (RTM_NEWADDR, RTM_DELADDR) or len(body) < IFADDRMSG.size:
            continue
        family, _plen, flags, _scope, _index = IFADDRMSG.unpack_from(body)
        attrs: dict[int, bytes] = {}
        a = IFADDRMSG.size
        while a + RTATTR.size <= len(body):
            alen, atype = RTATTR.unpack_from(body, a)
            if alen < RTATTR.size:
                break
            attrs[atype] = body[a + RTATTR.size: a + alen]
            a += _align(alen)
        if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) >= 4:
            flags = struct.unpack("=I", attrs[IFA_FLAGS][:4])[0]
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is None:
            continue
        if family == socket.AF_INET and len(raw) == 4:
            addr = str(ipaddress.IPv4Address(raw))
        elif family == socket.AF_INET6 and len(raw) == 16:
            addr = str(ipaddress.IPv6Address(raw))
        else:
            continue
        usable = not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
        yield mtype, addr, usable


def normalise(addr: str) -> str:
    return str(ipaddress.ip_address(addr.split("/")[0]))


def watch(addresses: list[str], absent: bool = False, timeout: float = 30.0,
          out=sys.stdout) -> int:
    wanted = {normalise(a) for a in addresses}
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    # Subscribed first, then dump: no event can fall between the two.
    req = NLMSG.pack(NLMSG.size + IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    req += IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    sock.send(req)
    present: set[str] = set()
    dumped = False

    def emit(event: str, t: float, **kw) -> None:
        out.write(json.dumps({"event": event, "time": t, **kw}) + "\n")
        out.flush()

    def done() -> bool:
        return not (present & wanted) if absent else wanted <= present

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            emit("timeout", time.monotonic(), present=sorted(present & wanted))
            return 1
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            continue
        data = sock.recv(1 << 16)
        t = time.monotonic()
        for mtype, addr, usable in parse_addr_messages(data):
            if mtype == NLMSG_DONE and not dumped:
                dumped = True
                emit("ready", t, present=sorted(present & wanted))
            if addr is None:
                continue
            if mtype == RTM_NEWADDR and usable:
                present.add(addr)
            else:
                present.discard(addr)
        if dumped and done():
            emit("absent" if absent else "present", t, addresses=sorted(wanted))
            return 0


# ---------------------------------------------------------------------- parent side


class JsonLines:
    """JSON lines on the stdout of a Proc started with stdout_pipe=True."""

    def __init__(self, proc):
        self.proc = proc
        self.events: list[dict] = []
        self._buf = b""

    def next(self, timeout: float) -> dict | None:
        """The next JSON line within `timeout` seconds, or None (timeout or end of output)."""
        # Raw reads with our own line buffer: a buffered text stream could hold a
        # second line that select() would never report.
        fd = self.proc.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                self.events.append(ev)
                return ev
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk


class Watch(JsonLines):
    """A running watcher process (see start_watch)."""

    def wait_ready(self, timeout: float = 10.0) -> dict:
        ev = self.next(timeout)
        if not ev or ev.get("event") != "ready":
            raise RuntimeError(f"address watcher in {self.proc.ns} did not start: {ev}\n{self.proc.log_tail()}")
        return ev

    def wait_result(self, timeout: float = 30.0) -> dict:
        """The final event: present/absent (with "time"), or timeout."""
        ev = self.next(timeout)
        if ev is None:
            return {"event": "timeout", "time": time.monotonic()}
        return ev


def start_watch(procs, ns: str, addresses, name: str = "watch", absent: bool = False,
                timeout: float = 30.0) -> Watch:
    """Start `python3 -m meshlab.watch` in ns under `procs` and wait until it is armed."""
    argv = [sys.executable, "-m", "meshlab.watch", "--timeout", str(timeout)]
    if absent:
        argv.append("--absent")
    argv += [normalise(a) for a in addresses]
    proc = procs.start(name, ns, argv, stdout_pipe=True, env={"PYTHONPATH": _pythonpath()})
    w = Watch(proc)
    w.wait_ready()
    return w


def _pythonpath() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # netns-lab/
    repo = os.path.dirname(here)
    parts = [here, repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshlab.watch", description=__doc__.split("\n\n")[0])
    ap.add_argument("addresses", nargs="+", metavar="ADDR")
    ap.add_argument("--absent", action="store_true", help="wait until none of them is present")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    args = ap.parse_args(argv)
    try:
        return watch(args.addresses, args.absent, args.timeout)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
