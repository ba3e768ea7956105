"""meshd's table as nft native syntax: the sets, the rules, the elements; handles read back. Pure.

Owns: the words of one redirect (_Words: its match, selector, set names and
refusal), the statement templates of the slot map, the live set and the
sticky map, the nat prerouting and forward chains (DNAT, reject, the reset
watcher's NFLOG rule, sticky learning), the element lines set_backends()
sends, the whole-table script reconcile() sends, and the rule handles parsed
from `nft -a list table`.

Must not: run nft (the runner does, for the load balancer), keep state, or
choose slots (slots.py). Every template here is loaded into a real kernel by
tests/lab/test_nft_lab.py; a new one needs a lab test too.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence

from .model import _NAME_RE, TABLE_FAMILY, Backend, LbRedirect
from .slots import _sorted, slot_assignment

STICKY_SIZE = 65536          # clients remembered per redirect; beyond that new clients are not sticky
RST_LOG_RATE = "50/second burst 100 packets"   # bounds what a flood of resets costs the daemon
RST_SNAPLEN = 128            # IPv6 header + extension headers + TCP header fit


def _hash_seed(name: str) -> int:
    # From the name, so every node of the cluster hashes a client to the same slot.
    return int.from_bytes(hashlib.sha256(b"meshd-lb|" + name.encode()).digest()[:4], "big")


class _Words:
    """The nft words of one redirect."""

    def __init__(self, r: LbRedirect):
        v6 = r.version == 6
        self.ip = "ip6" if v6 else "ip"
        self.vip = str(ipaddress.ip_address(r.address))
        self.l4 = r.protocol
        self.match = f"{self.ip} daddr {self.vip} {self.l4} dport {r.port}"
        self.backend = f"{self.ip} daddr . {self.l4} dport"
        self.slots = f"slots_{r.name}"
        self.live = f"backends_{r.name}"
        self.sticky = f"sticky_{r.name}"
        if r.mode == "random":
            self.selector = f"numgen random mod {r.slots}"
        elif r.mode == "source-hash":
            self.selector = f"jhash {self.ip} saddr mod {r.slots} seed {_hash_seed(r.name):#010x}"
        else:
            self.selector = f"numgen inc mod {r.slots}"
        if r.protocol == "tcp":
            self.refuse = "reject with tcp reset"
        else:
            self.refuse = "reject with icmpx port-unreachable"


def render_sets(r: LbRedirect) -> list[str]:
    w = _Words(r)
    out = [f"map {w.slots} {{",
           f"typeof numgen inc mod {r.slots} : {w.backend}",
           "}",
           f"set {w.live} {{",
           f"typeof {w.backend}",
           "}"]
    if r.sticky_timeout_s:
        out += [f"map {w.sticky} {{",
                f"typeof {w.ip} saddr : {w.backend}",
                f"size {STICKY_SIZE}",
                "flags dynamic,timeout",
                f"timeout {r.sticky_timeout_s}s",
                "}"]
    return out


def render_nat_rules(r: LbRedirect) -> list[str]:
    """Rules of the nat prerouting chain for one redirect, in order."""
    w = _Words(r)
    out = []
    if r.sticky_timeout_s:
        out.append(f'{w.match} dnat {w.ip} to {w.ip} saddr map @{w.sticky} comment "{r.name}: sticky"')
    out.append(f'{w.match} dnat {w.ip} to {w.selector} map @{w.slots} comment "{r.name}: {r.mode}"')
    out.append(f'{w.match} {w.refuse} comment "{r.name}: no live backend"')
    return out


def render_forward_rules(r: LbRedirect) -> list[str]:
    """Rules of the forward filter chain for one redirect: the reset watcher, sticky learning."""
    w = _Words(r)
    out = []
    if r.nflog_group is not None:
        out.append(f"ct status dnat {w.ip} saddr . tcp sport @{w.live} tcp flags rst "
                   f"limit rate {RST_LOG_RATE} "
                   f'log prefix "{r.name}" group {r.nflog_group} snaplen {RST_SNAPLEN} queue-threshold 1 '
                   f'comment "{r.name}: resets from backends"')
    if r.sticky_timeout_s:
        # Learned after the DNAT, from the translated packet, and only for a
        # backend that is live now: a connection that went to a backend just
        # removed can never teach the map that backend again.
        out.append(f"ct state new ct status dnat ct original {w.ip} daddr {w.vip} "
                   f"meta l4proto {w.l4} ct original proto-dst {r.port} "
                   f"{w.backend} @{w.live} update @{w.sticky} {{ {w.ip} saddr : {w.backend} }} "
                   f'comment "{r.name}: learn sticky"')
    return out


def _element(b: Backend) -> str:
    return f"{b.ip} . {b.port}"


def render_elements(table: str, r: LbRedirect, assignment: Sequence[Backend], live: Sequence[Backend]) -> list[str]:
    """Commands that replace the slot map and the live set of a redirect (no rule changes)."""
    w = _Words(r)
    out = [f"flush map {TABLE_FAMILY} {table} {w.slots}",
           f"flush set {TABLE_FAMILY} {table} {w.live}"]
    if assignment:
        elems = ", ".join(f"{i} : {_element(b)}" for i, b in enumerate(assignment))
        out.append(f"add element {TABLE_FAMILY} {table} {w.slots} {{ {elems} }}")
    if live:
        out.append(f"add element {TABLE_FAMILY} {table} {w.live} {{ {', '.join(_element(b) for b in _sorted(live))} }}")
    return out


def render_table(table: str, redirects: Sequence[LbRedirect],
                 backends: dict[str, Sequence[Backend]] | None = None) -> str:
    """The script that replaces the whole table atomically (and fills known backends).

    `add table` first makes the `delete table` valid when the table does not
    exist yet; all of it is one transaction, so the kernel goes from the old
    table to the new one with no moment in between.
    """
    if not _NAME_RE.match(table):
        raise ValueError(f"table name {table!r}: letters, digits, '_' or '-' only")
    names = [r.name for r in redirects]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"redirect names used twice: {', '.join(sorted(dup))}")
    keys = [(ipaddress.ip_address(r.address), r.protocol, r.port) for r in redirects]
    for i, k in enumerate(keys):
        if k in keys[:i]:
            raise ValueError(f"redirects {redirects[keys.index(k)].name!r} and {redirects[i].name!r} "
                             f"both claim {k[0]} {k[1]} port {k[2]}")
    lines = [f"add table {TABLE_FAMILY} {table}",
             f"delete table {TABLE_FAMILY} {table}",
             f"table {TABLE_FAMILY} {table} {{"]
    for r in redirects:
        lines += render_sets(r)
    lines += ["chain prerouting {", "type nat hook prerouting priority dstnat; policy accept;"]
    for r in redirects:
        lines += render_nat_rules(r)
    lines += ["}", "chain forward {", "type filter hook forward priority filter - 10; policy accept;"]
    for r in redirects:
        lines += render_forward_rules(r)
    lines += ["}", "}"]
    for r in redirects:
        live = list((backends or {}).get(r.name, ()))
        if live:
            lines += render_elements(table, r, slot_assignment(r, live), live)
    return "\n".join(lines) + "\n"


_CHAIN_RE = re.compile(r"^\s*chain (\S+) \{")
_HANDLE_RE = re.compile(r"# handle (\d+)\s*$")


def parse_rule_handles(listing: str) -> dict[str, list[int]]:
    """chain -> rule handles in order, from `nft -a list table` text."""
    handles: dict[str, list[int]] = {}
    chain = None
    for line in listing.splitlines():
        m = _CHAIN_RE.match(line)
        if m:
            chain = m.group(1)
            handles[chain] = []
            continue
        if line.strip() == "}":
            chain = None
            continue
        m = _HANDLE_RE.search(line)
        if chain is not None and m and not line.lstrip().startswith("type "):
            handles[chain].append(int(m.group(1)))
    return handles
