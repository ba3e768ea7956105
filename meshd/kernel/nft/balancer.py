"""LoadBalancer: the table `inet <table>` kept in step with the redirects and their live backends.

Owns: reconcile() (the whole table rebuilt in one transaction, keeping the
backends a redirect still has), set_backends() (one redirect's slot map and
live set refilled in one transaction, no rule touched), forgetting sticky
clients of a backend that left, the listings (sticky entries, slot map, rule
handles, whether the table exists), remove(), and the last backends given
per redirect.

Must not: touch anything outside its own table, decide which backends are
live (the health core does), or be called on the trio loop: every method
blocks (the health shell calls through trio.to_thread.run_sync). Calls from
several threads are serialised.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable

from .model import _NAME_RE, TABLE_FAMILY, Backend, LbRedirect, Log, _no_log
from .render import _Words, parse_rule_handles, render_elements, render_table
from .runner import Nft, NftError
from .slots import slot_assignment
from .states import delete_backend_states


class LoadBalancer:
    """meshd's table `inet <table>`: the redirects' DNAT rules and slot maps.

    Args:
      table: the table name; meshd never touches any other table.
      nft: the Nft runner (a new one by default).
      log: log(event, level=..., **fields).

    The last backends given per redirect are remembered, so reconcile() on a
    reload fills the new table in the same transaction that creates it.
    """

    def __init__(self, table: str = "meshd", nft: Nft | None = None, log: Log = _no_log):
        if not _NAME_RE.match(table):
            raise ValueError(f"table name {table!r}: letters, digits, '_' or '-' only")
        self.table = table
        self.nft = nft if nft is not None else Nft()
        self.log = log
        self._lock = threading.RLock()
        self.redirects: dict[str, LbRedirect] = {}
        self.backends: dict[str, list[Backend]] = {}

    def reconcile(self, redirects: Iterable[LbRedirect]) -> None:
        """Replace the table with one built for these redirects, in one transaction.

        Backends known from earlier set_backends() calls are kept for
        redirects that still exist (with the same family); others start
        empty, so their clients are refused until set_backends().
        """
        redirects = list(redirects)
        with self._lock:
            keep = {}
            for r in redirects:
                old = self.backends.get(r.name)
                if old:
                    try:
                        keep[r.name] = r.check_backends(old)
                    except ValueError as e:
                        self.log("lb_backends_dropped", level="warning", redirect=r.name, reason=str(e))
            self.nft.run_script(render_table(self.table, redirects, keep))
            self.redirects = {r.name: r for r in redirects}
            self.backends = keep
        self.log("lb_reconciled", table=self.table, redirects=len(redirects))

    def set_backends(self, redirect_name: str, backends: Iterable[Backend]) -> list[Backend]:
        """Refill one redirect's slot map and live set in one transaction; returns the slots.

        Rules are not touched (their handles stay). With no backend the map
        is empty and new connections are refused. With sticky, clients
        remembered on a backend that left are forgotten right after, so they
        are spread again instead of being sent to it.
        """
        with self._lock:
            r = self.redirects.get(redirect_name)
            if r is None:
                raise KeyError(f"no redirect {redirect_name!r} in table {TABLE_FAMILY} {self.table} "
                               f"(known: {', '.join(sorted(self.redirects)) or 'none'})")
            live = r.check_backends(backends)
            assignment = slot_assignment(r, live)
            self.nft.run_script("\n".join(render_elements(self.table, r, assignment, live)) + "\n")
            old = self.backends.get(r.name, [])
            self.backends[r.name] = live
            left = {(b.ip, b.port) for b in old} - {(b.ip, b.port) for b in live}
            if r.sticky_timeout_s and left:
                self._forget_sticky(r, left)
        return assignment

    def _forget_sticky(self, r: LbRedirect, left: set) -> None:
        """Delete the sticky entries that point at backends that left.

        Listing and deleting are two steps; an entry can expire in between,
        and deleting a missing element fails the whole transaction. Each
        element is therefore re-added with its listed value before it is
        deleted, in one transaction. If that still fails (the entry was
        replaced meanwhile), once more from a new listing, then the whole map
        is flushed: every client loses stickiness once rather than one being
        stuck on a dead backend.
        """
        w = _Words(r)
        for attempt in (1, 2):
            stale = [(client, backend) for client, backend in self.sticky_entries(r.name) if backend in left]
            if not stale:
                return
            lines = []
            for client, (ip, port) in stale:
                lines.append(f"add element {TABLE_FAMILY} {self.table} {w.sticky} {{ {client} : {ip} . {port} }}")
                lines.append(f"delete element {TABLE_FAMILY} {self.table} {w.sticky} {{ {client} }}")
            try:
                self.nft.run_script("\n".join(lines) + "\n")
                return
            except NftError as e:
                self.log("lb_sticky_cleanup_retry", level="warning", redirect=r.name, attempt=attempt,
                         error=e.message.splitlines()[0])
        self.nft.run_script(f"flush map {TABLE_FAMILY} {self.table} {w.sticky}\n")
        self.log("lb_sticky_flushed", level="warning", redirect=r.name)

    def sticky_entries(self, redirect_name: str) -> list[tuple[str, tuple]]:
        """(client address, (backend ip, port)) remembered by a sticky redirect."""
        w = _Words(self.redirects[redirect_name])
        out = self.nft.run_script(f"list map {TABLE_FAMILY} {self.table} {w.sticky}\n")
        entries = []
        for obj in out["nftables"]:
            for key, value in obj.get("map", {}).get("elem", ()):
                if isinstance(key, dict):       # {"elem": {"val": ..., "expires": ...}}
                    key = key["elem"]["val"]
                ip, port = value["concat"]
                entries.append((str(ipaddress.ip_address(key)), (ipaddress.ip_address(ip), int(port))))
        return entries

    def slot_map(self, redirect_name: str) -> dict[int, tuple[str, int]]:
        """The kernel's slot map of a redirect: slot -> (backend address, port)."""
        w = _Words(self.redirects[redirect_name])
        out = self.nft.run_script(f"list map {TABLE_FAMILY} {self.table} {w.slots}\n")
        slots = {}
        for obj in out["nftables"]:
            for key, value in obj.get("map", {}).get("elem", ()):
                ip, port = value["concat"]
                slots[int(key)] = (ip, int(port))
        return slots

    def rule_handles(self) -> dict[str, list[int]]:
        """chain -> handles of its rules, in order (they never change in set_backends)."""
        return parse_rule_handles(self.nft.list_text(f"list table {TABLE_FAMILY} {self.table}\n"))

    def exists(self) -> bool:
        out = self.nft.run_script(f"list tables {TABLE_FAMILY}\n")
        return any(o.get("table", {}).get("name") == self.table for o in out["nftables"])

    def remove(self) -> None:
        """Delete meshd's table (nothing else); fine when it does not exist."""
        with self._lock:
            self.nft.run_script(f"add table {TABLE_FAMILY} {self.table}\n"
                                f"delete table {TABLE_FAMILY} {self.table}\n")
            self.redirects.clear()
            self.backends.clear()
        self.log("lb_removed", table=self.table)

    def delete_states(self, address: str, port: int, protocol: str = "tcp") -> int:
        """Delete the DNAT'd conntrack entries whose reply comes from address:port; returns how many."""
        return delete_backend_states(address, port, protocol, log=self.log)
