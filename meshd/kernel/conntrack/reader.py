"""CtEventReader: conntrack events from the kernel, in bursts, for one trio task.

Owns: the event socket (subscribed to the conntrack NEW/UPDATE/DESTROY groups
and the expectations' EXP_NEW/EXP_DESTROY groups), the
burst loop (wait readable, non-blocking reads until empty or `burst`
datagrams, one list per burst on the channel), the Overrun marker and what
is discarded after a loss, and the classic BPF filter that has the kernel
drop the events of our own injections.

Two implementations of the burst loop, one behaviour: with the accelerator
(meshd.fastct) one recvmmsg brings up to 64 datagrams and C decodes them;
without it (or with MESHD_PURE_PYTHON=1) one recv_into per datagram and
ctnetlink.events decodes them. The same counters, logs and Overrun markers
come out of both, in the same order.

Must not: dump or diff the table (the consumer does, on an Overrun), write
to the kernel's table (the committer does), decode more than the hot path
needs (ctnetlink.events does that part), or crash on what the kernel sends.
The burst loop is the hot path: keep read_burst as it is, measured.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from typing import Self

import trio

from meshd import fastct
from meshd.kernel import ctnetlink as ct
from meshd.kernel.closing import close_socket
from meshd.kernel.ctnetlink import netlink as ctnl

from .sockets import _RECV_SIZE, SO_RCVBUFFORCE, Log, _no_log, _socket, set_buffer

DEFAULT_RCVBUF = 32 << 20
GROUPS_CONNTRACK = (1 << ct.NFNLGRP_CONNTRACK_NEW - 1) | (1 << ct.NFNLGRP_CONNTRACK_UPDATE - 1) \
    | (1 << ct.NFNLGRP_CONNTRACK_DESTROY - 1)
# Expectations are created and destroyed, never updated (ctnetlink_expect_event).
GROUPS_EXPECT = (1 << ct.NFNLGRP_CONNTRACK_EXP_NEW - 1) | (1 << ct.NFNLGRP_CONNTRACK_EXP_DESTROY - 1)
GROUPS_ALL = GROUPS_CONNTRACK | GROUPS_EXPECT


class Overrun:
    """Marker on the event channel: events were lost; dump the table and diff."""
    __slots__ = ("reason",)

    def __init__(self, reason: str = "enobufs"):
        self.reason = reason        # "enobufs", "truncated" or "decode"

    def __repr__(self) -> str:
        return f"Overrun({self.reason!r})"


SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06
_NLMSG_PID_OFFSET = 12


def _attach_portid_filter(sock: socket.socket, portids: list[int]) -> None:
    """Attach a classic BPF program that drops messages whose nlmsg_pid is in portids.

    Events come one per datagram, so the first header's pid is the event's.
    BPF loads words big-endian; nlmsg_pid is in host order, hence the swap.
    The kernel copies the program during the call.
    """
    import ctypes
    n = len(portids)
    insns = [(_BPF_LD_W_ABS, 0, 0, _NLMSG_PID_OFFSET)]
    for i, pid in enumerate(portids):
        swapped = int.from_bytes(pid.to_bytes(4, "little"), "big")
        insns.append((_BPF_JEQ_K, n - i, 0, swapped))     # jump to "drop" (after "accept")
    insns += [(_BPF_RET_K, 0, 0, 0xFFFFFFFF), (_BPF_RET_K, 0, 0, 0)]
    code = b"".join(struct.pack("HBBI", *insn) for insn in insns)
    program = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HxxxxxxP", len(insns), ctypes.addressof(program)))


class CtEventReader:
    """Conntrack events from the kernel, in bursts, for one trio task.

    Args:
      rcvbuf: receive buffer in bytes (SO_RCVBUFFORCE; SO_RCVBUF with a
        warning when not permitted). A burst of new flows must fit while the
        consumer is busy: an event costs about 1.3 KiB of buffer (skb
        overhead), and the kernel doubles the value, so 32 MiB holds about
        50k events.
      own_portids: portids of our own injection sockets (CtCommitter.portid);
        events they caused are dropped without decoding. register_own() adds more.
      burst: datagrams read per wakeup at most (one event each), so a flood
        cannot hold the trio loop; between bursts the task checkpoints.
      log: log(event, level=..., **fields).
      fast: the accelerator module, or None for the pure-Python loop;
        default: meshd.fastct.FAST (None when not built or forced off).
      sock: a datagram socket already open and non-blocking, used as it is
        (no buffer size, groups or filter set): for the tests of the burst
        loop, which need no root. The reader owns and closes it.

    NETLINK_NO_ENOBUFS is deliberately not set: a lost event must be known.
    Subscribing to the groups needs CAP_NET_ADMIN (the kernel says EPERM).

    Overrun semantics: the marker comes after every event older than the
    loss that was already read, and before any event newer than it; what was
    still queued at the loss is discarded (see _discard_queued). A consumer
    that dumps the table on the marker and then applies the following
    events in order converges.
    """

    def __init__(self, *, rcvbuf: int = DEFAULT_RCVBUF, own_portids: Iterable[int] = (),
                 burst: int = 256, log: Log = _no_log, groups: int = GROUPS_ALL, fast=...,
                 sock: socket.socket | None = None):
        self.log = log
        self.burst = burst
        self.own_portids: set[int] = set(own_portids)
        self.events = 0             # events decoded and delivered
        self.datagrams = 0
        self.bursts = 0             # lists put on the channel
        self.overruns = 0           # ENOBUFS seen (each one a resync)
        self.own_skipped = 0        # events of our own injections, dropped
        self.discarded = 0          # datagrams dropped after an overrun (older than the loss)
        self.decode_errors = 0
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)
        self.own_filter = False      # own events dropped by the kernel (a socket filter)
        if sock is not None:
            self.sock = sock
        else:
            self.sock = _socket(rcvbuf, log, "ct_events")
            try:
                self.sock.setblocking(False)
                self.sock.bind((0, groups))
            except BaseException:
                self.sock.close()
                raise
            self._filter_own()
        if fast is ...:
            fast = fastct.FAST
        try:
            # 64 slots of _RECV_SIZE: 4 MiB of address space, of which only the
            # pages the datagrams touch (about one each) ever get memory.
            self._batch = None if fast is None else fast.EventReader(self.sock.fileno(), min(burst, 64), _RECV_SIZE)
        except BaseException:
            self.sock.close()
            raise
        self.implementation = "python" if fast is None else "c"

    def set_rcvbuf(self, size: int) -> int:
        """A new receive buffer size (a reload); returns what the kernel granted."""
        return set_buffer(self.sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, size, self.log, "ct_events")

    @property
    def portid(self) -> int:
        return self.sock.getsockname()[0]

    def register_own(self, portid: int) -> None:
        self.own_portids.add(portid)
        self._filter_own()

    def unregister_own(self, portid: int) -> None:
        self.own_portids.discard(portid)
        self._filter_own()

    def _filter_own(self) -> None:
        """Have the kernel drop the events of our own injections before they are queued.

        A node that injects its peers' flows (continuous commit) would
        otherwise wake up, copy and look at one event per injected entry, only
        to drop it: with a classic BPF filter on the nlmsg_pid field they cost
        nothing here and take no receive-buffer space.  read_burst still checks
        the portid, for kernels that refuse the filter.
        """
        try:
            if self.own_portids:
                _attach_portid_filter(self.sock, sorted(self.own_portids))
                self.own_filter = True
            elif self.own_filter:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
                self.own_filter = False
        except OSError as e:
            self.own_filter = False
            self.log("ct_events_filter_failed", level="warning", error=e.strerror or str(e))

    def read_burst(self) -> tuple[list, Overrun | None]:
        """Read up to `burst` datagrams without blocking: (events, Overrun marker or None).

        Stops at the first loss so the events before it are delivered before
        the Overrun marker.
        """
        if self._batch is not None:
            return self._read_batch()
        events: list = []
        own = self.own_portids
        sock, buf, view = self.sock, self._buf, self._view
        for _ in range(self.burst):
            try:
                n = sock.recv_into(buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return events, None
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                discarded = self._discard_queued()
                self.log("ct_events_overrun", level="warning", overruns=self.overruns, discarded=discarded)
                return events, Overrun("enobufs")
            self.datagrams += 1
            if n > len(buf):
                self.decode_errors += 1
                self.log("ct_events_truncated", level="error", size=n)
                return events, Overrun("truncated")
            if n >= ct.HDR_LEN and own and ctnl._HDR.unpack_from(buf, 0)[4] in own:
                # One event per datagram: the first header's portid is the event's.
                self.own_skipped += 1
                continue
            try:
                ct.decode_into(bytes(view[:n]), events)
            except ct.CtDecodeError as e:
                self.decode_errors += 1
                self.log("ct_events_undecodable", level="error", error=str(e), size=n)
                return events, Overrun("decode")
        return events, None

    def _read_batch(self) -> tuple[list, Overrun | None]:
        """read_burst with the accelerator: the same counters, logs and marker."""
        events: list = []
        status, datagrams, skipped, detail = self._batch.read(self.burst, self.own_portids, events)
        self.datagrams += datagrams
        self.own_skipped += skipped
        if status == fastct.READ_OK:
            return events, None
        if status == fastct.READ_ENOBUFS:
            self.overruns += 1
            discarded = self._discard_queued()
            self.log("ct_events_overrun", level="warning", overruns=self.overruns, discarded=discarded)
            return events, Overrun("enobufs")
        self.decode_errors += 1
        if status == fastct.READ_TRUNCATED:
            self.log("ct_events_truncated", level="error", size=detail)
            return events, Overrun("truncated")
        error, size = detail
        self.log("ct_events_undecodable", level="error", error=error, size=size)
        return events, Overrun("decode")

    def _discard_queued(self, limit: int = 1 << 20) -> int:
        """After ENOBUFS: drop what is still queued; returns how many datagrams.

        The kernel reports ENOBUFS before the datagrams still queued, and
        those are older than the ones it dropped: delivered after the Overrun
        marker they could undo the resync (an UPDATE of an entry whose
        DESTROY was lost would bring it back). Everything read after this
        point is newer than the loss, and the consumer's dump, started after
        the marker, covers what is dropped here.
        """
        n = 0
        while n < limit:
            try:
                self.sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
            n += 1
        self.discarded += n
        return n

    async def run(self, send_channel) -> None:
        """Forever: wait readable, read a burst, send ONE list per burst (then Overrun if any)."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            events, overrun = self.read_burst()
            if events:
                self.events += len(events)
                self.bursts += 1
                await send_channel.send(events)
            if overrun is not None:
                await send_channel.send(overrun)

    def stats(self) -> dict:
        return {"events": self.events, "datagrams": self.datagrams, "bursts": self.bursts,
                "overruns": self.overruns, "own_skipped": self.own_skipped, "discarded": self.discarded,
                "decode_errors": self.decode_errors, "own_filtered_by_kernel": self.own_filter}

    def close(self) -> None:
        # The batch reader knows the socket by its number, which the kernel
        # hands out again once closed: forgotten first, so that a late
        # read_burst fails on the closed socket rather than reads another.
        self._batch = None
        close_socket(self.sock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

