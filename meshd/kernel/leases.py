"""Virtual addresses that expire unless renewed: a dead meshd leaves none behind.

A master adds its virtual addresses with a short valid lifetime
(`[node] address_lifetime_s`, 1 s by default) and this module's thread renews
that lifetime every fifth of it.  When the process dies for any reason
(SIGKILL, the OOM killer, an uncaught error, a kernel-level freeze of the
process) the renewals stop and the kernel itself deletes the addresses about
one lifetime later: no second process, no peer, no script is needed.  Why
this way and not another is in docs/architecture.md ("Addresses that expire").

The renewals run on their own OS thread with their own rtnetlink socket, so a
busy trio loop (a long commit step, a table dump) never delays them; the GIL
is handed over every millisecond (cli.SWITCH_INTERVAL_S).  But a loop that is
*stuck* must not keep the addresses alive either: the loop feeds the lease
(`feed()`), and once it has not done so for LOOP_STALL_LIMIT the thread stops
renewing, so the addresses of a wedged daemon expire as those of a dead one.

Thread safety: hold(), release() and the renewal take one lock, so after
release() returns no renewal of those addresses is in flight or will follow,
and the caller may delete them without a renewal re-creating them (the
kernel creates an address on RTM_NEWADDR whatever NLM_F_CREATE says).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
import time
from typing import Callable

from . import addresses as kaddr

RENEWALS_PER_LIFETIME = 5
# A loop that has not run for this long is wedged, not busy: the longest step
# measured under a 100k-entry takeover is a few hundred ms.
LOOP_STALL_LIMIT = 3.0
ERROR_LOG_EVERY = 60.0        # s: renewal errors of one kind are logged at most this often


class AddressLeases:
    """The renewal thread and the addresses it keeps alive.

    Args:
        lifetime_s: the valid lifetime given to every add and renewal (> 0).
        log: the daemon's event logger (thread-safe), called as log(event, level=, **fields).
        clock: monotonic seconds; tests pass their own.
    """

    def __init__(self, lifetime_s: int, log: Callable[..., None],
                 clock: Callable[[], float] = time.monotonic):
        if lifetime_s <= 0:
            raise ValueError("address lifetime must be positive")
        self.lifetime_s = lifetime_s
        self.interval = lifetime_s / RENEWALS_PER_LIFETIME
        self.log = log
        self.clock = clock
        self.renewals = 0
        self.errors = 0
        self.stalls = 0
        self._held: dict[str, dict[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._fed = clock()
        self._stalled = False
        self._sock: socket.socket | None = None
        self._error_logged: dict[str, float] = {}
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ loop side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="meshd-address-leases", daemon=True)
        self._thread.start()

    def feed(self) -> None:
        """The event loop is alive (call it a few times per lifetime)."""
        self._fed = self.clock()

    def hold(self, interface: str, addresses: tuple[str, ...]) -> None:
        """Keep renewing these addresses (they were just added with the lifetime)."""
        parsed = {}
        for a in addresses:
            try:
                parsed[a] = ipaddress.ip_interface(a)
            except ValueError:
                continue                  # add_addresses already reported it
        # No renewal now: the add carried the lifetime, and a takeover's
        # announcements should not compete with one for the GIL.  (An address
        # that was already present gets ours at the next renewal.)
        with self._lock:
            self._held.setdefault(interface, {}).update(parsed)

    def release(self, interface: str, addresses: tuple[str, ...]) -> None:
        """Stop renewing; when this returns, no renewal of them is running or will run."""
        with self._lock:
            held = self._held.get(interface)
            if held is not None:
                for a in addresses:
                    held.pop(a, None)
                if not held:
                    del self._held[interface]

    def held(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return {i: tuple(sorted(a)) for i, a in self._held.items()}

    def close(self) -> None:
        """Stop the thread (the addresses then expire unless removed)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # ---------------------------------------------------------- thread side

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.renew_once()
            except Exception as e:        # never let the thread die: a live master would lose its addresses
                self._error("renewal", f"{type(e).__name__}: {e}")

    def renew_once(self) -> int:
        """Renew every held address now (unless the loop is wedged); how many were renewed."""
        idle = self.clock() - self._fed
        if idle > LOOP_STALL_LIMIT:
            if not self._stalled:
                self._stalled = True
                self.stalls += 1
                self.log("address_renewal_paused", level="error", idle_s=round(idle, 1),
                         reason="event loop stalled: the virtual addresses will expire",
                         held=self._summary())
            return 0
        if self._stalled:
            self._stalled = False
            self.log("address_renewal_resumed", level="warning", held=self._summary())
        renewed = 0
        with self._lock:
            for interface, held in self._held.items():
                if held:
                    renewed += self._renew(interface, list(held.items()))
        return renewed

    def _renew(self, interface: str, items: list) -> int:
        try:
            index = socket.if_nametoindex(interface)
        except OSError:
            self._error(f"ENODEV {interface}", f"interface {interface} does not exist")
            return 0
        if self._sock is None:
            self._sock = kaddr.open_rtnetlink(timeout=max(0.2, self.interval))
        try:
            codes = kaddr.newaddr(index, [ifa for _a, ifa in items], self.lifetime_s,
                                  renew=True, sock=self._sock)
        except OSError as e:
            # A lost answer could be taken for a later batch's: start afresh.
            self._sock.close()
            self._sock = None
            self._error(f"socket {interface}", f"renew on {interface}: {e.strerror or e}")
            return 0
        ok = 0
        for (a, _ifa), code in zip(items, codes):
            if code:
                self._error(f"{code} {a}", f"renew {a} on {interface}: {os.strerror(code)} "
                                          f"({errno.errorcode.get(code, code)})")
            else:
                ok += 1
        self.renewals += ok
        return ok

    def _error(self, kind: str, message: str) -> None:
        self.errors += 1
        now = self.clock()
        last = self._error_logged.get(kind)
        if last is None or now - last >= ERROR_LOG_EVERY:
            self._error_logged[kind] = now
            self.log("address_renewal_failed", level="error", error=message, total=self.errors)

    def _summary(self) -> str | None:
        return ",".join(f"{i}:{a}" for i, held in self.held().items() for a in held) or None
