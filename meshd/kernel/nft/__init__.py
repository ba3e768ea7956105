"""meshd's own nftables table: the layer-3 load balancer of the redirects.

One room per part; a room imports only rooms above it in this list, and
only runner.py and balancer.py run nft:

    runner      Nft runs nftables commands in one transaction each: through
                libnftables (ctypes, `libnftables.so.1`, Debian package
                libnftables1) when it loads, else through the `nft` command.
                Output is always JSON. NftError.
    model       what to balance: LbRedirect, Backend and their checks
    slots       which backend serves each slot (pure)
    render      the table in nft's native syntax, and its rule handles read
                back (pure)
    states      the conntrack entries of a dead backend, found and deleted
    balancer    LoadBalancer keeps the table `inet meshd` in step with the
                redirects and their live backends. reconcile() (re)builds the
                whole table; set_backends() replaces the elements of one
                redirect's slot map in one transaction and never touches a
                rule; remove() deletes the table. Nothing outside the table
                is ever touched.

Callers import the package, `from meshd.kernel.nft import LoadBalancer,
NftError`: every public name of the rooms is re-exported here. A private name
(`_merge_json`, `_Words`) is imported from the room that owns it; rebinding
it anywhere else would not reach the code that reads it.

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
statement template render.py writes is loaded into a real kernel by
tests/lab/test_nft_lab.py, for both families, both protocols and every mode.

All methods block (netlink round trips of about a millisecond): the daemon
calls them through trio.to_thread.run_sync. An Nft or LoadBalancer may be
used from several threads; calls are serialised.

Must not: hold code of its own (only the re-exports), or decide which backends
are live: the health core does, and the health shell hands its SetBackends
to LoadBalancer.set_backends.
"""

from .balancer import LoadBalancer
from .model import (
    DEFAULT_SLOTS,
    MAX_SLOTS,
    MODES,
    PROTOCOLS,
    TABLE_FAMILY,
    Backend,
    LbRedirect,
    Log,
)
from .render import (
    RST_LOG_RATE,
    RST_SNAPLEN,
    STICKY_SIZE,
    parse_rule_handles,
    render_elements,
    render_forward_rules,
    render_nat_rules,
    render_sets,
    render_table,
)
from .runner import Nft, NftError
from .slots import interleaved_slots, slot_assignment, stable_slots, weighted_turns
from .states import delete_backend_states, matching_states

__all__ = [
    "DEFAULT_SLOTS",
    "MAX_SLOTS",
    "MODES",
    "PROTOCOLS",
    "RST_LOG_RATE",
    "RST_SNAPLEN",
    "STICKY_SIZE",
    "TABLE_FAMILY",
    "Backend",
    "LbRedirect",
    "LoadBalancer",
    "Log",
    "Nft",
    "NftError",
    "delete_backend_states",
    "interleaved_slots",
    "matching_states",
    "parse_rule_handles",
    "render_elements",
    "render_forward_rules",
    "render_nat_rules",
    "render_sets",
    "render_table",
    "slot_assignment",
    "stable_slots",
    "weighted_turns",
]
