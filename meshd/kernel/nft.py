"""meshd's own nftables table: the layer-3 load balancer of the redirects.

Two pieces:

- Nft runs nftables commands in one transaction each: through libnftables
  (ctypes, `libnftables.so.1`, Debian package libnftables1) when it loads,
  else through the `nft` command. Output is always JSON.
- LoadBalancer keeps the table `inet meshd` in step with the redirects and
  their live backends. reconcile() (re)builds the whole table; set_backends()
  replaces the elements of one redirect's slot map in one transaction and
  never touches a rule; remove() deletes the table. Nothing outside the table
  is ever touched.

The table (docs/health-internals.md draws it with an example):

    map slots_<name>     slot number -> backend address . port, always full
                         (`slots` elements) while any backend is live
    set backends_<name>  the live backends (address . port), for the RST watcher
    map sticky_<name>    client address -> backend (only with sticky_timeout_s)
    chain prerouting     nat, priority dstnat, per redirect:
                           [sticky hit]  dnat to the client's remembered backend
                           dnat to <selector> map @slots_<name>
                           reject (TCP reset / ICMP port unreachable)
    chain forward        filter, priority filter - 10, policy accept:
                           log TCP resets from @backends_<name> to NFLOG
                           [sticky] learn client -> backend of new connections

Selectors: round-robin and weighted `numgen inc mod SLOTS`, random `numgen
random mod SLOTS`, source-hash `jhash <saddr> mod SLOTS seed <from the name>`.
When no backend is live the slot map is empty, the DNAT lookup misses and the
reject rule answers: a client is refused at once instead of being forwarded
to a dead host or delivered to the firewall itself.

Why native nft syntax and not JSON commands for the table: nftables 1.0.6's
JSON parser cannot express `typeof` maps (a map keyed by `numgen` needs one),
refuses concatenated map data ("Invalid map type 'ipv4_addr . inet_service'")
and crashes (SIGSEGV) on some concatenation inputs. The native syntax is the
one nft itself prints and the one every nftables version parses; the output
is still JSON. Nft.run() takes JSON commands for callers that want them.

In-process libnftables shares the daemon's fate: an assertion inside nft
aborts the process (1.0.6 aborts on an IPv6 dynamic-set update with a
concatenated value, which is why sticky is IPv4 only, see LbRedirect). Every
statement template this module renders is loaded into a real kernel by
tests/lab/test_nft_lab.py, for both families, both protocols and every mode.

All methods block (netlink round trips of about a millisecond): the daemon
calls them through trio.to_thread.run_sync. An Nft or LoadBalancer may be
used from several threads; calls are serialised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import ipaddress
import json
import math
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from meshd.kernel import conntrack, ctnetlink as ct

TABLE_FAMILY = "inet"        # one table for IPv4 and IPv6 redirects (nat in inet: Linux >= 5.2)
MODES = ("round-robin", "weighted", "random", "source-hash")
PROTOCOLS = ("tcp", "udp")
DEFAULT_SLOTS = 60           # divisible by 1-6, 10, 12: equal shares are exact for up to 6 backends
MAX_SLOTS = 4096
STICKY_SIZE = 65536          # clients remembered per redirect; beyond that new clients are not sticky
RST_LOG_RATE = "50/second burst 100 packets"   # bounds what a flood of resets costs the daemon
RST_SNAPLEN = 128            # IPv6 header + extension headers + TCP header fit

_NFT_CTX_DEFAULT = 0
_NFT_CTX_OUTPUT_HANDLE = 1 << 3
_NFT_CTX_OUTPUT_JSON = 1 << 4

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")

Log = Callable[..., None]


def _no_log(event: str, level: str = "info", **fields) -> None:
    pass


class NftError(Exception):
    """nftables refused a transaction: nothing of it was applied.

    .message is nft's error text, .commands what was sent (script or JSON).
    """

    def __init__(self, message: str, commands: str):
        self.message = message.strip() or "nft failed without a message"
        self.commands = commands
        first = self.message.splitlines()[0]
        super().__init__(f"nftables: {first}\n--- nft said:\n{self.message}\n--- while running:\n{commands.strip()}")


# --- the runner ------------------------------------------------------------------------

class _Library:
    """libnftables through ctypes: one context, JSON output, buffered output and errors."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        self.lib = lib
        self.ctx = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
        if not self.ctx:
            raise OSError(f"nft_ctx_new failed in {path}")
        lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE)
        if lib.nft_ctx_buffer_output(self.ctx) or lib.nft_ctx_buffer_error(self.ctx):
            lib.nft_ctx_free(self.ctx)
            raise OSError(f"nft_ctx_buffer_output/error failed in {path}")

    def execute(self, text: str, as_json: bool = True) -> tuple[bool, str, str]:
        if not as_json:
            self.lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_HANDLE)
        try:
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
        finally:
            if not as_json:
                self.lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE)
        out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
        return rc == 0, out.decode(errors="replace"), err.decode(errors="replace")

    def close(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


class _Command:
    """The nft command, one process per transaction, reading the commands from a memfd.

    Not from a pipe: with -j, nft 1.0.6 first tries the input as JSON, and on
    a pipe that attempt eats the start of a native script ("syntax error,
    unexpected th"); /dev/fd/N of a memfd is reopened, hence seekable.
    """

    def __init__(self, path: str):
        self.path = path

    def execute(self, text: str, as_json: bool = True) -> tuple[bool, str, str]:
        fd = os.memfd_create("meshd-nft", os.MFD_CLOEXEC)
        try:
            os.write(fd, text.encode())
            flags = ["-j", "-a"] if as_json else ["-a"]
            p = subprocess.run([self.path, *flags, "-f", f"/dev/fd/{fd}"], pass_fds=(fd,),
                               capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return False, "", f"{self.path} did not finish within 60 s"
        finally:
            os.close(fd)
        ok = p.returncode == 0
        if p.returncode < 0:
            ok = False
            p.stderr += f"\n{self.path} killed by signal {-p.returncode}"
        return ok, p.stdout, p.stderr

    def close(self) -> None:
        pass


def _find_library() -> str | None:
    for name in ("libnftables.so.1", ctypes.util.find_library("nftables")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None


class Nft:
    """One nftables transaction per call; JSON out.

    Args:
      backend: "auto" (libnftables when it loads, else the nft command),
        "library" or "command" (forced; OSError when unavailable).
      command: the nft executable for the command backend.

    The library context opens its netlink socket in the network namespace of
    the thread that creates the Nft: create it in the namespace it serves.
    """

    def __init__(self, backend: str = "auto", command: str = "nft"):
        if backend not in ("auto", "library", "command"):
            raise ValueError(f"nft backend must be auto, library or command, not {backend!r}")
        self._lock = threading.Lock()
        self._impl: _Library | _Command
        lib = _find_library() if backend in ("auto", "library") else None
        if lib is not None:
            self._impl = _Library(lib)
            self.backend = "library"
        elif backend == "library":
            raise OSError("libnftables.so.1 not found (Debian: apt install libnftables1)")
        else:
            path = shutil.which(command)
            if path is None:
                raise OSError(f"neither libnftables.so.1 nor the `{command}` command is available "
                              "(Debian: apt install libnftables1 or nftables)")
            self._impl = _Command(path)
            self.backend = "command"

    def run(self, commands: list[dict]) -> dict:
        """Run JSON commands (libnftables-json(5) CMD_OBJECTs) as one transaction."""
        return self._execute(json.dumps({"nftables": commands}))

    def run_script(self, script: str) -> dict:
        """Run native nft commands, one per line, as one transaction.

        Returns {"nftables": [...]}: the JSON objects `list` commands print
        (empty for pure changes). Raises NftError when nft refuses any of it.
        """
        return self._execute(script)

    def list_text(self, script: str) -> str:
        """Run list commands with nft's text output (with handles).

        For listings that hold statements nftables 1.0.6 cannot print as JSON
        (a dynamic map update): its JSON printer drops them and writes a
        warning straight to the process's stderr, which is the daemon's log.
        """
        return self._execute(script, as_json=False)

    def _execute(self, text: str, as_json: bool = True):
        with self._lock:
            ok, out, err = self._impl.execute(text, as_json)
        if not ok:
            raise NftError(err, text)
        return _merge_json(out, text) if as_json else out

    def close(self) -> None:
        with self._lock:
            self._impl.close()

    def __enter__(self) -> "Nft":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _merge_json(out: str, commands: str) -> dict:
    """nft prints one JSON document per list command; merge their "nftables" arrays."""
    items: list = []
    decoder = json.JSONDecoder()
    pos, n = 0, len(out)
    while True:
        while pos < n and out[pos].isspace():
            pos += 1
        if pos >= n:
            return {"nftables": items}
        try:
            doc, pos = decoder.raw_decode(out, pos)
        except json.JSONDecodeError as e:
            raise NftError(f"undecodable JSON output from nft: {e}: {out[:200]!r}", commands) from None
        items.extend(doc.get("nftables", ()) if isinstance(doc, dict) else ())


# --- what to balance --------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    address: str            # IPv4 or IPv6 literal, the family of the redirect's address
    port: int
    weight: int = 1         # share of the slots (modes weighted, random, source-hash)

    def __post_init__(self):
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"backend {self.address!r}: not an IP address") from None
        if not 1 <= self.port <= 65535:
            raise ValueError(f"backend {self.address}: port {self.port} not in 1-65535")
        if not 1 <= self.weight <= 1000:
            raise ValueError(f"backend {self.address}:{self.port}: weight {self.weight} not in 1-1000")

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.address)

    def text(self) -> str:
        ip = self.ip
        return f"[{ip}]:{self.port}" if ip.version == 6 else f"{ip}:{self.port}"


@dataclass(frozen=True)
class LbRedirect:
    """One virtual service: new connections to address:port go to a live backend.

    sticky_timeout_s: remember each client's backend for that long after its
      last new connection (IPv4 only: nftables 1.0.6 aborts on the IPv6 form).
    nflog_group: log TCP resets sent by the backends to this NFLOG group
      (meshd.kernel.nflog reads it); the log prefix is the redirect's name.
    """
    name: str
    address: str
    port: int
    protocol: str = "tcp"
    mode: str = "round-robin"
    slots: int = DEFAULT_SLOTS
    sticky_timeout_s: int | None = None
    nflog_group: int | None = None

    def __post_init__(self):
        where = f"redirect {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"{where}: name must be 1-64 letters, digits, '_' or '-' "
                             "(it becomes part of nftables set names)")
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"{where}: address {self.address!r} is not an IP address") from None
        if not 1 <= self.port <= 65535:
            raise ValueError(f"{where}: port {self.port} not in 1-65535")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{where}: protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.mode not in MODES:
            raise ValueError(f"{where}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"{where}: slots {self.slots} not in 1-{MAX_SLOTS}")
        if self.sticky_timeout_s is not None:
            if not 1 <= self.sticky_timeout_s <= 86400 * 7:
                raise ValueError(f"{where}: sticky_timeout_s {self.sticky_timeout_s} not in 1-604800")
            if ip.version == 6:
                raise ValueError(f"{where}: sticky is IPv4 only (nftables 1.0.6 aborts on the IPv6 "
                                 "dynamic map update; see docs/health-internals.md)")
        if self.nflog_group is not None:
            if not 0 <= self.nflog_group <= 65535:
                raise ValueError(f"{where}: nflog_group {self.nflog_group} not in 0-65535")
            if self.protocol != "tcp":
                raise ValueError(f"{where}: the reset watcher (nflog_group) needs protocol tcp")

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    def check_backends(self, backends: Iterable[Backend]) -> list[Backend]:
        """The backends as a list, or ValueError naming the first one that cannot serve this redirect."""
        out = list(backends)
        seen = set()
        for b in out:
            if not isinstance(b, Backend):
                raise TypeError(f"redirect {self.name!r}: backends must be Backend, not {type(b).__name__}")
            if b.ip.version != self.version:
                raise ValueError(f"redirect {self.name!r} (IPv{self.version}): backend {b.text()} "
                                 f"is IPv{b.ip.version}; NAT cannot translate between families")
            if (b.ip, b.port) in seen:
                raise ValueError(f"redirect {self.name!r}: backend {b.text()} listed twice")
            seen.add((b.ip, b.port))
        if len(out) > self.slots:
            raise ValueError(f"redirect {self.name!r}: {len(out)} backends do not fit its {self.slots} slots")
        return out


# --- slot assignment (pure) ------------------------------------------------------------

def _sorted(backends: Sequence[Backend]) -> list[Backend]:
    # Every node must compute the same map from the same live set, whatever
    # order the set came in: the slot map is what makes source-hash and
    # round-robin agree across a failover.
    return sorted(backends, key=lambda b: (b.ip, b.port))


def weighted_turns(weights: Sequence[int], n: int) -> list[int]:
    """n picks of indices in smooth weighted round-robin order (nginx's algorithm).

    Over any sum(weights) consecutive picks each index appears exactly
    weight times, and picks of one index are spread out, not bunched.
    """
    total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(n):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


def interleaved_slots(backends: Sequence[Backend], slots: int, weighted: bool = True) -> list[Backend]:
    """Slots in smooth weighted round-robin order: counting slots in order gives a, b, c, a, b, c."""
    if not backends:
        return []
    order = _sorted(backends)
    weights = [b.weight if weighted else 1 for b in order]
    return [order[i] for i in weighted_turns(weights, slots)]


def _preference(backend: Backend, slots: int) -> tuple[int, int]:
    """(offset, skip) of a backend's permutation of the slots, from a hash of its address and port."""
    digest = hashlib.sha256(f"{backend.ip}|{backend.port}".encode()).digest()
    offset = int.from_bytes(digest[:8], "big") % slots
    skip = int.from_bytes(digest[8:16], "big") % slots or 1
    while math.gcd(skip, slots) != 1:    # a full permutation needs a step coprime to the size
        skip = skip % slots + 1
    return offset, skip


def stable_slots(backends: Sequence[Backend], slots: int) -> list[Backend]:
    """Slots filled Maglev style (Eisenbud et al., NSDI 2016; Linux IPVS `mh`).

    Each backend has its own permutation of the slots; backends take turns in
    smooth weighted order, each claiming its next preferred free slot. Shares
    are as exact as interleaved_slots gives, and when a backend leaves most
    slots of the others stay where they were: source-hash clients of live
    backends mostly keep their backend.
    """
    if not backends:
        return []
    order = _sorted(backends)
    prefs = [_preference(b, slots) for b in order]
    tried = [0] * len(order)
    table: list[int | None] = [None] * slots
    for i in weighted_turns([b.weight for b in order], slots):
        offset, skip = prefs[i]
        while True:
            slot = (offset + tried[i] * skip) % slots
            tried[i] += 1
            if table[slot] is None:
                table[slot] = i
                break
    return [order[i] for i in table]  # type: ignore[index]


def slot_assignment(redirect: LbRedirect, backends: Sequence[Backend]) -> list[Backend]:
    """Backend of each slot (slot i = element i); empty when no backend is live."""
    backends = redirect.check_backends(backends)
    if redirect.mode == "source-hash":
        return stable_slots(backends, redirect.slots)
    return interleaved_slots(backends, redirect.slots, weighted=redirect.mode != "round-robin")


# --- rendering (pure) ------------------------------------------------------------------

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


# --- the load balancer -----------------------------------------------------------------

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


# --- conntrack entries of a dead backend -----------------------------------------------

def _reply_source(attrs: bytes) -> tuple[bytes, int, bytes] | None:
    """(address, l4 protocol, source port) of an entry's reply tuple, or None."""
    for t, _rt, s, e in ct.iter_attrs(attrs, ct.NFGEN_LEN):
        if t != ct.CTA_TUPLE_REPLY:
            continue
        addr = sport = None
        proto = -1
        for t2, _rt2, s2, e2 in ct.iter_attrs(attrs, s, e):
            if t2 == ct.CTA_TUPLE_IP:
                for t3, _rt3, s3, e3 in ct.iter_attrs(attrs, s2, e2):
                    if t3 in (ct.CTA_IP_V4_SRC, ct.CTA_IP_V6_SRC):
                        addr = attrs[s3:e3]
            elif t2 == ct.CTA_TUPLE_PROTO:
                for t3, _rt3, s3, e3 in ct.iter_attrs(attrs, s2, e2):
                    if t3 == ct.CTA_PROTO_NUM and e3 > s3:
                        proto = attrs[s3]
                    elif t3 == ct.CTA_PROTO_SRC_PORT:
                        sport = attrs[s3:e3]
        if addr is None or sport is None:
            return None
        return addr, proto, sport
    return None


def matching_states(events, address: str, port: int, protocol: str = "tcp") -> list[bytes]:
    """attrs of the DNAT'd entries (CtEvents from a dump) whose reply source is address:port."""
    want = (ipaddress.ip_address(address).packed, {"tcp": ct.IPPROTO_TCP, "udp": ct.IPPROTO_UDP}[protocol],
            port.to_bytes(2, "big"))
    out = []
    for ev in events:
        if ev.status is not None and not ev.status & ct.IPS_DST_NAT:
            continue
        try:
            if _reply_source(ev.attrs) == want:
                out.append(ev.attrs)
        except ct.CtDecodeError:
            continue
    return out


def delete_backend_states(address: str, port: int, protocol: str = "tcp", log: Log = _no_log) -> int:
    """Delete the DNAT'd conntrack entries of a backend (blocking: a dump, then deletes).

    Only entries the kernel marked DST_NAT are deleted: the backend's own
    direct traffic through the firewall is not the load balancer's business.
    Entries that vanished between the dump and the delete are not counted.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    family = ct.AF_INET6 if ipaddress.ip_address(address).version == 6 else ct.AF_INET
    entries = matching_states(conntrack.dump_table(family, log=log), address, port, protocol)
    if not entries:
        return 0
    with conntrack.CtCommitter(log=log, pipeline=False) as committer:
        result = committer.delete(entries)
    return result.ok
