"""Conntrack I/O: the event reader (trio), the table dump and the committer (threads).

Each piece owns its own NETLINK_NETFILTER socket:

- CtEventReader subscribes to the NEW/UPDATE/DESTROY groups and puts one
  list of CtEvents per burst on a trio memory channel, or an Overrun marker
  when the kernel dropped events (ENOBUFS): the consumer then dumps and
  diffs. It never crashes on what the kernel sends.
- dump_table() reads the whole table (blocking; run it in a thread).
- CtCommitter injects entries in batches from a worker thread. Its portid is
  known, so the reader can skip the events of our own injections (the kernel
  stamps events caused by a ctnetlink request with the requester's portid).

Sockets belong to the network namespace they were created in: create these
objects in the namespace whose table they serve. Subscribing to the event
groups and SO_*BUFFORCE need CAP_NET_ADMIN.

Measured on the 2-core lab VM, kernel 6.18 (tests/lab/test_conntrack_lab.py
prints them; the VM's timing varies by about 30% from run to run):
commit of 100k TCP entries 0.6-0.8 s (125-160k/s; conntrackd: 1.12 s), of
100k SNAT entries about the same; event reader 50k events in 0.23 s (about
215k/s end to end); dump of 200k entries 1.3 s (the conntrack tool: 1.15 s).
"""

from __future__ import annotations

import errno
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple, Self

import trio

from meshd.kernel import ctnetlink as ct
from meshd.kernel.closing import close_socket
from meshd.kernel.ctnetlink import netlink as ctnl

SOL_NETLINK = 270
NETLINK_NO_ENOBUFS, NETLINK_CAP_ACK = 5, 10
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
DEFAULT_RCVBUF = 32 << 20
GROUPS_ALL = (1 << ct.NFNLGRP_CONNTRACK_NEW - 1) | (1 << ct.NFNLGRP_CONNTRACK_UPDATE - 1) \
    | (1 << ct.NFNLGRP_CONNTRACK_DESTROY - 1)
_RECV_SIZE = 1 << 16            # kernel dump datagrams are at most 32 KiB, events far less

Log = Callable[..., None]


def _no_log(event: str, level: str = "info", **fields) -> None:
    pass


def errno_name(err: int) -> str:
    # errno.errorcode[95] is ENOTSUP; ctnetlink's sources and docs say EOPNOTSUPP.
    if err == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno.errorcode.get(err, f"E{err}")


def _socket(rcvbuf: int, log: Log, what: str, sndbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, ct.NETLINK_NETFILTER)
    try:
        set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf, log, what)
        if sndbuf:
            set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf, log, what)
    except BaseException:
        sock.close()
        raise
    return sock


def set_buffer(sock: socket.socket, force: int, plain: int, size: int, log: Log, what: str) -> int:
    """Set a socket buffer past net.core.[rw]mem_max if we may (CAP_NET_ADMIN), else as far as allowed.

    Returns the size the kernel granted (it doubles the request for bookkeeping).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError as e:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
        granted = sock.getsockopt(socket.SOL_SOCKET, plain)
        log("netlink_buffer_limited", level="warning", socket=what, wanted=size, granted=granted // 2,
            error=e.strerror, hint="raise net.core.rmem_max / wmem_max or grant CAP_NET_ADMIN")
        return granted
    return sock.getsockopt(socket.SOL_SOCKET, plain)


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

    NETLINK_NO_ENOBUFS is deliberately not set: a lost event must be known.
    Subscribing to the groups needs CAP_NET_ADMIN (the kernel says EPERM).

    Overrun semantics: the marker comes after every event older than the
    loss that was already read, and before any event newer than it; what was
    still queued at the loss is discarded (see _discard_queued). A consumer
    that dumps the table on the marker and then applies the following
    events in order converges.
    """

    def __init__(self, *, rcvbuf: int = DEFAULT_RCVBUF, own_portids: Iterable[int] = (),
                 burst: int = 256, log: Log = _no_log, groups: int = GROUPS_ALL):
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
        self.sock = _socket(rcvbuf, log, "ct_events")
        try:
            self.sock.setblocking(False)
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise
        self.own_filter = False      # own events dropped by the kernel (a socket filter)
        self._filter_own()

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
        close_socket(self.sock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CtDumpError(OSError):
    """dump_table() failed: the kernel's errno, a table that kept changing, or undecodable data."""


def dump_table(family: int = ct.AF_UNSPEC, *, rcvbuf: int = 8 << 20, attempts: int = 5,
               log: Log = _no_log) -> list:
    """Every entry of the table (of one family) as CtEvents of kind NEW. Blocking.

    Multi-part dumps are read to NLMSG_DONE. A dump the kernel marks
    NLM_F_DUMP_INTR (the table changed under it: entries may be missing or
    doubled) is redone, up to `attempts` times; after that CtDumpError.
    EINTR is retried by Python itself (PEP 475).
    """
    sock = _socket(rcvbuf, log, "ct_dump")
    with sock:
        sock.bind((0, 0))
        sock.settimeout(30)
        buf = bytearray(_RECV_SIZE)
        view = memoryview(buf)
        for attempt in range(1, attempts + 1):
            sock.send(ct.encode_dump(attempt, family))
            events: list = []
            flags = 0
            while True:
                try:
                    n = sock.recv_into(buf, 0, socket.MSG_TRUNC)
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    flags |= ct.DUMP_INTERRUPTED
                    continue
                if n > len(buf):
                    raise CtDumpError(errno.EMSGSIZE, f"dump datagram of {n} bytes truncated")
                try:
                    r = ct.decode_into(bytes(view[:n]), events)
                except ct.CtNetlinkError as e:
                    raise CtDumpError(e.errno, f"conntrack dump failed: {errno_name(e.errno)}") from None
                except ct.CtDecodeError as e:
                    raise CtDumpError(errno.EBADMSG, f"undecodable conntrack dump: {e}") from None
                flags |= r
                if r & ct.DONE:
                    break
            if not flags & ct.DUMP_INTERRUPTED:
                return events
            log("ct_dump_interrupted", level="warning", attempt=attempt, entries=len(events))
            _drain(sock)
        raise CtDumpError(errno.EINTR, f"conntrack dump interrupted {attempts} times")


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(_RECV_SIZE)
    except (BlockingIOError, OSError):
        pass
    finally:
        sock.settimeout(30)


_CREATE = ct.NLM_F_REQUEST | ct.NLM_F_CREATE
_SEQ = struct.Struct("=I")
_CHUNK = 1024           # entries encoded at a time by commit()
_UPDATE = ct.NLM_F_REQUEST


class CommitResult(NamedTuple):
    ok: int
    failed: int
    errors_by_reason: dict       # errno name -> entries that finally failed with it
    seconds: float
    retried: dict                # errno name -> entries retried (in another form) after it


# After a first failure with errno E, an entry is resent in the forms of
# _PLANS[E], in order, until one works (measured on 6.18, see encode_create):
_PLANS = {
    # The entry exists and the request carried what only a create may carry
    # (NAT, helper, master): update it without them. If that finds no entry,
    # the EOPNOTSUPP was about the helper (unknown here): create without it.
    errno.EOPNOTSUPP: ((ct.CREATE_ONLY, False), (frozenset({ct.CTA_HELP}), True)),
    # The existing entry is further along (SEEN_REPLY / ASSURED cannot be
    # cleared) or has another helper: update the rest.
    errno.EBUSY: ((frozenset({ct.CTA_STATUS, ct.CTA_HELP}), True),),
    # Labels on an existing entry that has no label storage (no label user
    # in the ruleset when it was created).
    errno.ENOSPC: ((frozenset({ct.CTA_LABELS}), True),),
    # The master of a RELATED entry is not in the table: it may have been
    # created later in the same commit, so resend as is; then without it.
    errno.ENOENT: ((frozenset(), True), (frozenset({ct.CTA_TUPLE_MASTER}), True)),
    # Our answers were dropped (receive buffer full): the outcome is unknown,
    # and create-or-update is idempotent, so send again.
    errno.ENOBUFS: ((frozenset(), True), (frozenset(), True)),
}


class CtCommitter:
    """Injects entries into the kernel table in batches, from a worker thread.

    commit() sends IPCTNL_MSG_CT_NEW create-or-update requests, many per
    sendmsg (`batch_bytes` of concatenated messages). The kernel processes a
    netlink send synchronously, inside the sendmsg call, so when it returns
    every answer about that batch is already queued on our socket: a
    non-blocking drain after each batch reads them all.

    acks=False (the default) asks for no ACK: the kernel still answers every
    failed request with an NLMSG_ERROR naming its sequence number, and a
    final NOOP+ACK barrier proves all answers were read. That saves one
    recv per entry (ACKs are one skb each). acks=True asks for every ACK.
    If answers are lost anyway (ENOBUFS on our socket) the entries of that
    batch are in doubt and are sent again.

    pipeline=True (the default) overlaps the kernel's work with the encoding
    (see _send); with 1 MiB batches it measured 20-40% faster than sending
    from the encoding thread, and acks=True about 30% slower than acks=False.

    Per-entry errors never abort the rest. Entries that fail with an errno
    in _PLANS are resent in other forms (e.g. an existing NAT entry as a
    plain update); `retried` counts them by the first errno,
    `errors_by_reason` counts entries that finally failed, by their last errno.
    """

    def __init__(self, *, batch_bytes: int = 1 << 20, acks: bool = False, liberal_tcp: bool = True,
                 pipeline: bool = True, rcvbuf: int = 16 << 20, sndbuf: int = 4 << 20, log: Log = _no_log):
        self.batch_bytes = batch_bytes
        self.pipeline = pipeline
        self.acks = acks
        self.liberal_tcp = liberal_tcp
        self.log = log
        self.sock = _socket(rcvbuf, log, "ct_commit", sndbuf=max(sndbuf, 2 * batch_bytes))
        try:
            self.sock.bind((0, 0))
            # Errors echo only the request's header, not the whole request.
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except BaseException:
            self.sock.close()
            raise
        self.portid: int = self.sock.getsockname()[0]
        self._lock = threading.Lock()
        self._seq = 0
        self._buf = bytearray(_RECV_SIZE)
        self._ack = ct.NLM_F_ACK if acks else 0

    # --- blocking API (call from a worker thread) --------------------------------------

    def commit(self, entries: Iterable[bytes], timeouts: Iterable[int | None] | int | None = None,
               pipeline: bool | None = None) -> CommitResult:
        """Create or update each entry (attrs as from the event reader / a peer).

        timeouts: None (keep each entry's CTA_TIMEOUT), one int for all, or one
        value per entry (the remaining lifetime in seconds; None keeps it).
        pipeline: override the committer's setting for this call (False for the
        small batches the daemon commits inline on its event loop: a second
        thread would only contend for the GIL).
        """
        entries = list(entries)
        if timeouts is None or isinstance(timeouts, int):
            tos = [timeouts] * len(entries)
        else:
            tos = list(timeouts)
            if len(tos) != len(entries):
                raise ValueError("timeouts and entries differ in length")
        t0 = time.perf_counter()
        errors: dict[str, int] = {}
        retried: dict[str, int] = {}
        encode = ct.encode_create
        liberal = self.liberal_tcp
        # (the first pass uses encode_creates; retries are few and use encode_create)
        with self._lock:
            first = self._reserve_seqs(len(entries))
            bad = [0]

            def encoded():
                # in chunks, so the sender thread can start on the first batch
                for lo in range(0, len(entries), _CHUNK):
                    hi = lo + _CHUNK
                    msgs = ct.encode_creates(entries[lo:hi], first + lo, tos[lo:hi], liberal_tcp=liberal,
                                             flags=_CREATE | self._ack)
                    for i, m in enumerate(msgs, lo):
                        if m is None:
                            bad[0] += 1
                        else:
                            yield i, m

            failed = self._send(encoded(), pipeline)
            if bad[0]:
                errors["EBADMSG"] = bad[0]
            ok = len(entries) - bad[0] - len(failed)
            plans = {}                          # index -> (first errno, next step in _PLANS[errno])
            for i, err in failed.items():
                if err in _PLANS:
                    plans[i] = (err, 0)
                    retried[errno_name(err)] = retried.get(errno_name(err), 0) + 1
                else:
                    errors[errno_name(err)] = errors.get(errno_name(err), 0) + 1
            while plans:
                msgs = []
                for i, (reason, step) in plans.items():
                    drop, create = _PLANS[reason][step]
                    msgs.append((i, encode(entries[i], self._next_seq(), timeout=tos[i], liberal_tcp=liberal,
                                           drop=drop, flags=(_CREATE if create else _UPDATE) | self._ack)))
                failed = self._send(msgs, pipeline)
                ok += len(msgs) - len(failed)
                nxt = {}
                for i, err in failed.items():
                    reason, step = plans[i]
                    if reason == errno.ENOBUFS and err != errno.ENOBUFS and err in _PLANS:
                        # an entry in doubt has now told its real reason (e.g. a NAT
                        # entry that had been created after all): follow that plan
                        nxt[i] = (err, 0)
                    elif step + 1 < len(_PLANS[reason]):
                        nxt[i] = (reason, step + 1)
                    else:
                        errors[errno_name(err)] = errors.get(errno_name(err), 0) + 1
                plans = nxt
        return CommitResult(ok, sum(errors.values()), errors, time.perf_counter() - t0, retried)

    def delete(self, entries: Iterable[bytes] = (), keys: Iterable[bytes] = (),
               pipeline: bool | None = None) -> CommitResult:
        """Delete entries given by attrs and/or keys. ENOENT (already gone) counts as failed."""
        t0 = time.perf_counter()
        flags = ct.NLM_F_REQUEST | self._ack
        msgs = []
        errors: dict[str, int] = {}
        with self._lock:
            for attrs in entries:
                try:
                    msgs.append((len(msgs), ct.encode_delete(attrs, self._next_seq(), flags=flags)))
                except ct.CtDecodeError:
                    errors["EBADMSG"] = errors.get("EBADMSG", 0) + 1
            for key in keys:
                try:
                    msgs.append((len(msgs), ct.encode_delete(None, self._next_seq(), key=key, flags=flags)))
                except ct.CtDecodeError:
                    errors["EBADMSG"] = errors.get("EBADMSG", 0) + 1
            failed = self._send(msgs, pipeline)
        for err in failed.values():
            errors[errno_name(err)] = errors.get(errno_name(err), 0) + 1
        return CommitResult(len(msgs) - len(failed), sum(errors.values()), errors, time.perf_counter() - t0, {})

    def flush(self, family: int = ct.AF_UNSPEC) -> None:
        """Delete every entry of the table (of one family). Raises OSError on failure."""
        with self._lock:
            failed = self._send([(0, ct.encode_flush(self._next_seq(), family))])
        if failed:
            err = failed[0]
            raise OSError(err, f"conntrack flush failed: {errno_name(err)}")

    # --- async wrappers for the daemon ------------------------------------------------

    async def commit_async(self, entries, timeouts=None) -> CommitResult:
        return await trio.to_thread.run_sync(self.commit, list(entries), timeouts)

    async def delete_async(self, entries=(), keys=()) -> CommitResult:
        return await trio.to_thread.run_sync(self.delete, list(entries), list(keys))

    async def flush_async(self, family: int = ct.AF_UNSPEC) -> None:
        await trio.to_thread.run_sync(self.flush, family)

    # --- batching ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _reserve_seqs(self, n: int) -> int:
        """First of n consecutive sequence numbers (they wrap at 2**32 in the headers)."""
        first = self._seq + 1
        self._seq = (self._seq + n) & 0xFFFFFFFF
        return first

    def _send(self, msgs: Iterable[tuple[int, bytes]], pipeline: bool | None = None) -> dict[int, int]:
        """Send (index, message) pairs in batches; {index: errno} of those that failed.

        Every message carries a fresh sequence number (_next_seq), so an
        answer names its entry even across retries.

        With pipeline=True a sender thread does the sendmsg calls (which
        release the GIL while the kernel works, ~3 us per entry) while this
        thread goes on producing messages: the kernel's work overlaps the
        encoding on a second core. Batches are large because each hand-over
        of the GIL can wait for the interpreter's switch interval.
        """
        failed: dict[int, int] = {}
        pipeline = self.pipeline if pipeline is None else pipeline
        if pipeline:
            q: queue.SimpleQueue = queue.SimpleQueue()
            crash: list[BaseException] = []

            def sender() -> None:
                while (item := q.get()) is not None:
                    if not crash:
                        try:
                            self._flush_batch(item[0], item[1], failed)
                        except BaseException as e:     # noqa: BLE001  (re-raised in the caller)
                            crash.append(e)

            thread = threading.Thread(target=sender, name="ct-commit-sender", daemon=True)
            thread.start()
            flush = lambda batch, by_seq, failed: q.put((batch, by_seq))
        else:
            flush = self._flush_batch
        try:
            batch: list[bytes] = []
            by_seq: dict[int, int] = {}         # seq -> index, for one batch
            size = 0
            unpack_seq = _SEQ.unpack_from
            for index, msg in msgs:
                if size + len(msg) > self.batch_bytes and batch:
                    flush(batch, by_seq, failed)
                    batch, by_seq, size = [], {}, 0
                by_seq[unpack_seq(msg, 8)[0]] = index
                batch.append(msg)
                size += len(msg)
            if batch:
                flush(batch, by_seq, failed)
        finally:
            if pipeline:
                q.put(None)
                thread.join()
        if pipeline and crash:
            raise crash[0]
        self._barrier(failed)
        return failed

    def _flush_batch(self, batch: list[bytes], by_seq: dict[int, int], failed: dict[int, int]) -> None:
        self.sock.sendall(b"".join(batch))
        if not self._read_answers(by_seq, failed, until=None):
            for index in by_seq.values():    # answers lost: this batch is in doubt
                failed.setdefault(index, errno.ENOBUFS)

    def _barrier(self, failed: dict[int, int]) -> None:
        """Send NOOP+ACK and read up to its ACK: no answer is left behind."""
        while True:
            seq = self._next_seq()
            self.sock.sendall(ct.encode_barrier(seq))
            if self._read_answers({}, failed, until=seq):
                return

    def _read_answers(self, by_seq: dict[int, int], failed: dict[int, int], until: int | None) -> bool:
        """Read answers: without blocking until none is queued, or blocking until the ACK of `until`.

        Records errors of the seqs in by_seq into failed. Returns False if
        answers were lost (ENOBUFS).
        """
        sock, buf = self.sock, self._buf
        if until is None:
            sock.setblocking(False)
        else:
            sock.settimeout(30)
        while True:
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.log("ct_commit_answers_lost", level="warning")
                return False
            for seq, err in ct.iter_acks(bytes(buf[:n])):
                if seq == until:
                    return True
                index = by_seq.get(seq)
                if index is not None and err:
                    failed[index] = err

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
