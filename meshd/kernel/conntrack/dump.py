"""dump_table: every entry of the kernel's conntrack table, read once; dump_expectations:
every expectation. Blocking.

Owns: the dump socket, the multi-part dump read to NLMSG_DONE, redoing a dump
the kernel marked interrupted, and CtDumpError.

The datagrams are decoded by the accelerator when meshd runs it (meshd.fastct:
the same CtEvents as ctnetlink.decode_into, about 4x faster).

Must not: be called on the trio loop (run it in a thread), diff or keep what
it read (the caller does), or write to the table.
"""

from __future__ import annotations

import errno
import socket

from meshd import fastct
from meshd.kernel import ctnetlink as ct

from .sockets import _RECV_SIZE, Log, _no_log, _socket, errno_name


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
    return _dump(ct.encode_dump, family, rcvbuf, attempts, log, "ct_dump", "conntrack dump")


def dump_expectations(family: int = ct.AF_UNSPEC, *, rcvbuf: int = 1 << 20, attempts: int = 5,
                      log: Log = _no_log) -> list:
    """Every expectation (of one family) as CtEvents of kind EXP_NEW. Blocking; as dump_table."""
    return _dump(ct.encode_expect_dump, family, rcvbuf, attempts, log, "ct_dump_expect", "expectation dump")


def _dump(encode, family: int, rcvbuf: int, attempts: int, log: Log, what: str, text: str) -> list:
    decode_into = ct.decode_into if fastct.FAST is None else fastct.FAST.decode_into
    sock = _socket(rcvbuf, log, what)
    with sock:
        sock.bind((0, 0))
        sock.settimeout(30)
        buf = bytearray(_RECV_SIZE)
        view = memoryview(buf)
        for attempt in range(1, attempts + 1):
            sock.send(encode(attempt, family))
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
                    r = decode_into(bytes(view[:n]), events)
                except ct.CtNetlinkError as e:
                    raise CtDumpError(e.errno, f"{text} failed: {errno_name(e.errno)}") from None
                except ct.CtDecodeError as e:
                    raise CtDumpError(errno.EBADMSG, f"undecodable {text}: {e}") from None
                flags |= r
                if r & ct.DONE:
                    break
            if not flags & ct.DUMP_INTERRUPTED:
                return events
            log(f"{what}_interrupted", level="warning", attempt=attempt, entries=len(events))
            _drain(sock)
        raise CtDumpError(errno.EINTR, f"{text} interrupted {attempts} times")


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(_RECV_SIZE)
    except (BlockingIOError, OSError):
        pass
    finally:
        sock.settimeout(30)
