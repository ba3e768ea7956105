"""Link (interface) state from rtnetlink.

parse_link_messages is a sans-I/O decoder for RTM_NEWLINK/RTM_DELLINK; the
LinkMonitor feeds it from a multicast netlink socket under trio.

"up" means IFF_UP and IFF_LOWER_UP: administratively up *and* carrier. That
is what a firewall cares about (a cable pull clears LOWER_UP; a VLAN whose
parent loses carrier loses it too). IFF_RUNNING would also fold in operstate
DORMANT/TESTING; LOWER_UP is the plain physical answer.

Start-up ordering for the daemon: create the LinkMonitor first (which
subscribes), then call initial_state(), then run(). A change that happens in
between is then both in the snapshot and queued on the socket, never lost.

Must not: decide what a link state means for a group (the election core does,
through NodeCore.link), or raise on what the kernel sends: lost or garbled
notifications become a resync.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Self

import trio

from ..log import EventLog
from .closing import close_socket

NLMSG_HDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid (host order)
IFINFOMSG = struct.Struct("=BxHiII")     # family, pad, type, index, flags, change
RTATTR = struct.Struct("=HH")            # len, type
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFLA_IFNAME, IFLA_OPERSTATE = 3, 16
NLA_TYPE_MASK = 0x3FFF                   # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000
RTMGRP_LINK = 1
RECV_SIZE = 1 << 16                      # per datagram; a longer one comes MSG_TRUNC: a resync
AF_UNSPEC = 0


class LinkDecodeError(ValueError):
    """The buffer is not a well-formed sequence of netlink messages."""


@dataclass(frozen=True)
class LinkEvent:
    index: int
    name: str | None
    up: bool        # IFF_UP and IFF_LOWER_UP; always False when deleted
    deleted: bool


def _align4(n: int) -> int:
    return (n + 3) & ~3


def is_up(flags: int) -> bool:
    return flags & (IFF_UP | IFF_LOWER_UP) == (IFF_UP | IFF_LOWER_UP)


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = start
    while pos < end:
        if end - pos < RTATTR.size:
            raise LinkDecodeError(f"truncated rtattr header at offset {pos}")
        length, kind = RTATTR.unpack_from(data, pos)
        if length < RTATTR.size or pos + length > end:
            raise LinkDecodeError(f"bad rtattr length {length} at offset {pos}")
        out[kind & NLA_TYPE_MASK] = data[pos + RTATTR.size:pos + length]
        pos += _align4(length)
    return out


def parse_link_messages(data: bytes) -> list[LinkEvent]:
    """Decode a buffer of netlink messages into LinkEvents; other types are skipped.

    Only family AF_UNSPEC link messages count: the bridge code also sends
    RTM_NEWLINK/RTM_DELLINK with family AF_BRIDGE to the same group, and its
    RTM_DELLINK means "port left the bridge", not "interface deleted".
    """
    data = bytes(data)
    events: list[LinkEvent] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < NLMSG_HDR.size:
            raise LinkDecodeError(f"truncated netlink header at offset {pos}")
        length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size or pos + length > len(data):
            raise LinkDecodeError(f"bad netlink message length {length} at offset {pos}")
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            body = pos + NLMSG_HDR.size
            if length - NLMSG_HDR.size < IFINFOMSG.size:
                raise LinkDecodeError(f"truncated ifinfomsg at offset {body}")
            family, _type, index, flags, _change = IFINFOMSG.unpack_from(data, body)
            attrs = _attrs(data, body + IFINFOMSG.size, pos + length)
            if family == AF_UNSPEC:
                name = None
                if IFLA_IFNAME in attrs:
                    # Interface names are bytes to the kernel; never fail on them.
                    name = attrs[IFLA_IFNAME].split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
                deleted = kind == RTM_DELLINK
                events.append(LinkEvent(index, name, is_up(flags) and not deleted, deleted))
        pos += _align4(length)
    return events


def _read_links(names: Iterable[str] | None) -> dict[str, LinkEvent]:
    """Current state of the named interfaces (blocking; pyroute2, one RTM_GETLINK each).

    A missing interface comes back as deleted. names=None: every interface
    (one dump). pyroute2 reads the state of the
    calling thread's network namespace (unlike /sys/class/net, which shows the
    namespace sysfs was mounted in).
    """
    # Imported here: the decoder and monitor do not need pyroute2 (~0.3 s to import).
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    out: dict[str, LinkEvent] = {}
    with IPRoute() as ipr:
        if names is None:
            for msg in ipr.link("dump"):
                name = msg.get_attr("IFLA_IFNAME")
                out[name] = LinkEvent(msg["index"], name, is_up(msg["flags"]), False)
            return out
        for name in names:
            try:
                (msg,) = ipr.link("get", ifname=name)
            except NetlinkError as e:
                # ERANGE/EINVAL: a name no interface can have (too long, ...)
                if e.code not in (errno.ENODEV, errno.ERANGE, errno.EINVAL):
                    raise
                out[name] = LinkEvent(0, name, False, True)
                continue
            out[name] = LinkEvent(msg["index"], name, is_up(msg["flags"]), False)
    return out


def initial_state(names: Iterable[str]) -> dict[str, bool]:
    """name -> up for the named interfaces (blocking). A missing interface is down."""
    return {name: ev.up for name, ev in _read_links(list(names)).items()}


class LinkMonitor:
    """Multicast rtnetlink subscriber (RTMGRP_LINK) for trio.

    Overflow (ENOBUFS: the kernel dropped notifications because our receive
    queue was full, e.g. a burst of hundreds of VLAN changes) and undecodable
    data both mean events were lost. The monitor then re-reads the full state
    of the watched interfaces and reports it as synthetic events, after
    delivering whatever was still queued (older), so the callback's last word
    for every watched name is current (a missing one as deleted, index 0).
    It never raises for these.

    names=None watches everything: a resync then reports every interface,
    plus a deletion for each name seen in earlier events that is now gone.

    Events are reported for every interface; the caller filters by name. A
    rename shows up under the new name only (the old name gets no event).

    `log(event, level=..., **fields)` (an EventLog; default: one on stderr)
    receives event=link_monitor_resync (level warning, reason overflow,
    truncated or undecodable) and event=link_monitor_error (level error:
    the state cannot be read, retried every RETRY_S).
    """

    RETRY_S = 1.0

    def __init__(self, names: Iterable[str] | None = None, rcvbuf: int = 1 << 20,
                 log: Callable[..., None] | None = None):
        self.log = log if log is not None else EventLog()
        self.names = None if names is None else tuple(names)
        self.resyncs = 0
        self._seen: set[str] = set()  # names met so far (names=None mode)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, RTMGRP_LINK))
        except OSError:
            self.sock.close()
            raise

    def _drain(self, limit: int = 256) -> tuple[list[LinkEvent], bool, bool]:
        """Read until EAGAIN: (events, lost, empty); lost means resync needed.

        At most `limit` datagrams per call, so a flood of link changes cannot
        hold the trio loop; run() goes back to wait_readable, which yields.
        empty tells whether the queue was drained (EAGAIN seen).
        """
        events: list[LinkEvent] = []
        lost = False
        for _ in range(limit):
            try:
                data, _anc, msg_flags, _addr = self.sock.recvmsg(RECV_SIZE)
            except BlockingIOError:
                return events, lost, True
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self._lost("overflow", "the kernel dropped link notifications (ENOBUFS)")
                lost = True
                continue
            if msg_flags & socket.MSG_TRUNC:
                self._lost("truncated", f"a netlink datagram longer than {RECV_SIZE} bytes")
                lost = True
                continue
            try:
                events.extend(parse_link_messages(data))
            except LinkDecodeError as e:
                self._lost("undecodable", str(e))
                lost = True
        return events, lost, False

    def _lost(self, reason: str, detail: str) -> None:
        self.log("link_monitor_resync", level="warning", reason=reason, detail=detail,
                 action="re-reading the state of the watched interfaces")

    async def run(self, callback: Callable[[LinkEvent], None]) -> None:
        """Call callback(event) for every link event, forever (until cancelled)."""
        resync = False
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            events, lost, empty = self._drain()
            for ev in events:
                self._note(ev)
                callback(ev)
            resync |= lost
            # Re-read only once the queue is empty: anything still queued is
            # older than the snapshot and must not be delivered after it.
            if resync and empty:
                resync = False
                self.resyncs += 1
                state = await self._resync()
                if self.names is None:
                    for gone in self._seen - state.keys():
                        state[gone] = LinkEvent(0, gone, False, True)
                for ev in state.values():
                    self._note(ev)
                    callback(ev)

    def _note(self, ev: LinkEvent) -> None:
        if self.names is None and ev.name is not None:
            (self._seen.discard if ev.deleted else self._seen.add)(ev.name)

    async def _resync(self) -> dict[str, LinkEvent]:
        # Retry until it works: a monitor that stops is worse than a late one.
        while True:
            try:
                return await trio.to_thread.run_sync(_read_links, self.names)
            except Exception as e:  # noqa: BLE001 -- NetlinkError is not an OSError
                self.log("link_monitor_error", level="error",
                         error=f"cannot read the link state: {e}", retry_s=self.RETRY_S)
                await trio.sleep(self.RETRY_S)

    def close(self) -> None:
        close_socket(self.sock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


