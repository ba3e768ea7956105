"""Which implementation of the conntrack hot path runs: the accelerator or Python.

The accelerator, meshd._fastct (meshd/_fastct.c, built by pip at install when
the machine has gcc and Python.h), decodes conntrack events, reads the event
socket with recvmmsg and sends sync frames with sendmmsg; the Python code it
replaces (ctnetlink/events.py, reader.py's recv loop, the shell's sendto
loop) stays, is the reference, and runs when the module is not built or when
MESHD_PURE_PYTHON=1 is in the environment (read once, at import).

Must not: hold code of the hot path itself (the callers choose with FAST),
or fail to import when the accelerator is missing or broken.
"""

from __future__ import annotations

import os
import socket
import struct
from types import ModuleType

PURE_ENV = "MESHD_PURE_PYTHON"


def load() -> ModuleType | None:
    """The accelerator meshd runs with: accelerator(), or None when MESHD_PURE_PYTHON is set."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    return accelerator()


def accelerator() -> ModuleType | None:
    """meshd._fastct bound to events.py's types, or None when it is not built."""
    try:
        from meshd import _fastct
    except ImportError:
        return None
    from meshd.kernel.ctnetlink import events, netlink
    _fastct.bind(events.CtEvent, netlink.CtDecodeError, netlink.CtNetlinkError, events._decode_exp)
    return _fastct


FAST: ModuleType | None = load()


def implementation() -> str:
    """"c" or "python": for the logs and `meshctl status`-style reports."""
    return "python" if FAST is None else "c"


_SOCKADDR_IN = struct.Struct("=H2s4s8x")      # sa_family (host order), port (BE), address
_SOCKADDR_IN6 = struct.Struct("=H2s4s16sI")   # sa_family, port, flowinfo (BE), address, scope id


def pack_sockaddr(family: int, address: str, port: int) -> bytes:
    """A numeric address (IPv6: with an optional %scope) as the sockaddr sendmmsg takes.

    Raises socket.gaierror for an address that is not numeric or not of the family.
    """
    ((_f, _t, _p, _c, sa),) = socket.getaddrinfo(address, port, family, socket.SOCK_DGRAM, 0,
                                                  socket.AI_NUMERICHOST)[:1]
    if family == socket.AF_INET:
        return _SOCKADDR_IN.pack(family, port.to_bytes(2, "big"), socket.inet_pton(family, sa[0]))
    host = sa[0].split("%", 1)[0]
    return _SOCKADDR_IN6.pack(family, port.to_bytes(2, "big"), sa[2].to_bytes(4, "big"), socket.inet_pton(family, host), sa[3])


# EventReader.read() statuses (meshd/_fastct.c)
READ_OK, READ_ENOBUFS, READ_TRUNCATED, READ_DECODE = 0, 1, 2, 3
