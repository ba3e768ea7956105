"""CtCommitter: entries injected into the kernel table in batches, from a worker thread.

Owns: the commit socket and its portid (the reader filters the events it
causes), sequence numbers, the pipelined batches (a sender thread does the
sendmsg calls while this thread encodes), the answers read after each batch
and the barrier that proves none is left, the resend plans per errno, and
CommitResult.

Must not: run on the trio loop for big commits (commit_async and friends take
a thread), read events or dump the table, or stop at a failed entry: errors
are counted, never raised, except a socket that fails. commit() and _send()
are the hot path: keep their bodies as they are, measured.
"""

from __future__ import annotations

import errno
import queue
import struct
import threading
import time
from collections.abc import Iterable
from typing import NamedTuple, Self

import trio

from meshd.kernel import ctnetlink as ct

from .sockets import (
    _RECV_SIZE,
    NETLINK_CAP_ACK,
    SOL_NETLINK,
    Log,
    _no_log,
    _socket,
    errno_name,
)

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
        return self._delete(ct.encode_delete, entries, keys, pipeline)

    def _delete(self, encode, entries: Iterable[bytes], keys: Iterable[bytes],
                pipeline: bool | None) -> CommitResult:
        """Delete requests built by `encode(attrs or None, seq, key=, flags=)`, one per
        entry and per key; the answers counted as commit() counts them."""
        t0 = time.perf_counter()
        flags = ct.NLM_F_REQUEST | self._ack
        msgs = []
        errors: dict[str, int] = {}
        with self._lock:
            for attrs, key in [(a, None) for a in entries] + [(None, k) for k in keys]:
                try:
                    msgs.append((len(msgs), encode(attrs, self._next_seq(), key=key, flags=flags)))
                except ct.CtDecodeError:
                    errors["EBADMSG"] = errors.get("EBADMSG", 0) + 1
            failed = self._send(msgs, pipeline)
        for err in failed.values():
            errors[errno_name(err)] = errors.get(errno_name(err), 0) + 1
        return CommitResult(len(msgs) - len(failed), sum(errors.values()), errors, time.perf_counter() - t0, {})

    def commit_expectations(self, entries: Iterable[bytes], pipeline: bool | None = None) -> CommitResult:
        """Create (or refresh) each expectation (attrs as from the reader / a peer).

        Commit their masters first: an expectation whose master is not in the
        table fails with ENOENT, counted in errors_by_reason like every other
        failure (an unknown helper: EOPNOTSUPP, an unknown expect function:
        EINVAL). ENOBUFS (our answers dropped) is resent once, as commit() does.
        """
        t0 = time.perf_counter()
        entries = list(entries)
        errors: dict[str, int] = {}
        retried: dict[str, int] = {}
        flags = _CREATE | self._ack
        with self._lock:
            msgs = []
            for i, attrs in enumerate(entries):
                try:
                    msgs.append((i, ct.encode_expect_create(attrs, self._next_seq(), flags=flags)))
                except ct.CtDecodeError:
                    errors["EBADMSG"] = errors.get("EBADMSG", 0) + 1
            failed = self._send(msgs, pipeline)
            again = [i for i, err in failed.items() if err == errno.ENOBUFS]
            if again:
                retried["ENOBUFS"] = len(again)
                for i in again:
                    del failed[i]
                failed.update(self._send([(i, ct.encode_expect_create(entries[i], self._next_seq(), flags=flags))
                                          for i in again], pipeline))
            for i, err in failed.items():
                errors[errno_name(err)] = errors.get(errno_name(err), 0) + 1
        bad = sum(errors.values())
        return CommitResult(len(entries) - bad, bad, errors, time.perf_counter() - t0, retried)

    def delete_expectations(self, entries: Iterable[bytes] = (), keys: Iterable[bytes] = (),
                            pipeline: bool | None = None) -> CommitResult:
        """Delete expectations given by attrs and/or keys; ENOENT (used up, or gone with
        their master) counts as failed."""
        return self._delete(ct.encode_expect_delete, entries, keys, pipeline)

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
