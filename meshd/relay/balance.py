"""Which backend a relay's next session goes to (sans-I/O, time passed in).

A `RelayBalancer` is one relay's choice.  Its inputs:

* `set_live(table, hosts)`: the hosts of a table that are up, in table order,
  as the daemon's health core says (HealthCore.live_hosts: the same answer
  a redirect on that table forwards to), sent to the relay engine on every
  change, so a relay follows the health of its tables at once;
* `set_enabled(on)`: the operator's `meshctl relay disable|enable` (or the
  file's `disabled`); disabled, `pick` refuses (drain: sessions already
  open go on, new ones get NoBackend);
* `pick(now, client, hash_key)`: the backend of a new session, or NoBackend;
* `opened(backend)` / `closed(backend)`: session counts for loadbalance;
* `connect_failed(backend, now)`: the chosen backend did not answer.  It is
  passed over for HOLD_S (unless every candidate is held), so clients do not
  keep meeting a dead host in the seconds before its check fails it: the
  health check alone decides whether it is down.

Rules, all here:

* The candidates are the live hosts of the main table; while it has none,
  those of the backup table (`using_backup`); else NoBackend.
* roundrobin: smooth weighted round robin (nginx's): over `sum(weights)`
  picks each host is chosen `weight` times, interleaved.
* loadbalance: fewest open sessions per unit of weight; ties go round robin.
* hash, source-hash: weighted rendezvous hashing (highest random weight) of
  the key (the protocol's value for hash, the client's address for
  source-hash) with each host: a host that goes down moves only its own
  keys, one that comes back takes back only those; the same key meets the
  same host on every node of the cluster (no per-node state), so a failover
  keeps stickiness.  hash without a key falls back to the client's address.

Must not: open a socket, read a clock, or know the health core (hosts come
in as plain tuples).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from .interface import Backend, NoBackend

HOLD_S = 2.0          # a backend that refused a connect is passed over this long
MODES = ("roundrobin", "loadbalance", "hash", "source-hash")

LiveHost = tuple[str, str, int, int]        # (host, address, port, weight)


@dataclass
class BackendCounts:
    weight: int = 1
    open: int = 0              # sessions now
    total: int = 0             # sessions ever
    failed: int = 0            # connects that did not succeed
    held_until: float = 0.0
    current: int = 0           # smooth round robin's running score


@dataclass
class RelayBalancer:
    name: str
    mode: str
    table: str
    backup_table: str | None = None
    enabled: bool = True
    live: dict[str, tuple[LiveHost, ...]] = field(default_factory=dict)
    counts: dict[Backend, BackendCounts] = field(default_factory=dict)
    refused: int = 0           # picks that found nothing (or the relay disabled)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")

    # ------------------------------------------------------------------ inputs

    def set_live(self, table: str, hosts: tuple[LiveHost, ...]) -> None:
        self.live[table] = tuple(hosts)
        for host, address, port, weight in hosts:
            self.counts.setdefault(Backend(host, address, port), BackendCounts()).weight = weight

    def set_enabled(self, on: bool) -> None:
        self.enabled = on

    def reconfigure(self, mode: str, table: str, backup_table: str | None) -> None:
        """A reload's new mode and tables; counts and health stay (open sessions are real)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode, self.table, self.backup_table = mode, table, backup_table

    def pick(self, now: float, client: str, hash_key: bytes | None = None) -> Backend:
        candidates, _ = self.candidates()
        if not candidates:
            self.refused += 1
            raise NoBackend(self.why_none())
        ready = [b for b in candidates if self.counts[b].held_until <= now] or candidates
        if self.mode == "roundrobin":
            return self._smooth(ready)
        if self.mode == "loadbalance":
            fewest = min(self.counts[b].open / self.counts[b].weight for b in ready)
            return self._smooth([b for b in ready if self.counts[b].open / self.counts[b].weight == fewest])
        key = hash_key if self.mode == "hash" and hash_key is not None else client.encode()
        return max(ready, key=lambda b: (_rendezvous(key, b, self.counts[b].weight), b.address, b.port))

    def opened(self, backend: Backend) -> None:
        c = self.counts.setdefault(backend, BackendCounts())
        c.open += 1
        c.total += 1

    def datagram_sent(self, backend: Backend) -> None:
        """A datagram exchange (DNS over UDP): in the backend's total, never open."""
        self.counts.setdefault(backend, BackendCounts()).total += 1

    def closed(self, backend: Backend) -> None:
        c = self.counts.get(backend)
        if c is not None and c.open > 0:
            c.open -= 1

    def connect_failed(self, backend: Backend, now: float) -> None:
        c = self.counts.setdefault(backend, BackendCounts())
        c.failed += 1
        c.held_until = now + HOLD_S

    # ------------------------------------------------------------------ queries

    def candidates(self) -> tuple[list[Backend], bool]:
        """(backends new sessions may go to, whether they are the backup table's)."""
        if not self.enabled:
            return [], False
        main = self.live.get(self.table, ())
        if main:
            return [Backend(h, a, p) for h, a, p, _ in main], False
        if self.backup_table is not None:
            backup = self.live.get(self.backup_table, ())
            if backup:
                return [Backend(h, a, p) for h, a, p, _ in backup], True
        return [], False

    def status(self) -> str:
        """As `show relays` says it (the words of `show summary` for a redirect)."""
        if not self.enabled:
            return "disabled"
        candidates, backup = self.candidates()
        if not candidates:
            return "down"
        return "active (using backup table)" if backup else "active"

    def why_none(self) -> str:
        if not self.enabled:
            return f"relay {self.name} is disabled (draining)"
        why = f"no host up in table {self.table}"
        if self.backup_table is not None:
            why += f" nor in backup table {self.backup_table}"
        return why

    @property
    def open_sessions(self) -> int:
        return sum(c.open for c in self.counts.values())

    # ------------------------------------------------------------------ internals

    def _smooth(self, ready: list[Backend]) -> Backend:
        total = 0
        best: Backend | None = None
        for b in ready:
            c = self.counts[b]
            c.current += c.weight
            total += c.weight
            if best is None or c.current > self.counts[best].current:
                best = b
        self.counts[best].current -= total
        return best


def _rendezvous(key: bytes, backend: Backend, weight: int) -> float:
    """Weighted highest-random-weight score of `backend` for `key`: -w / ln(u), u in (0, 1)."""
    digest = hashlib.blake2b(key + b"\0" + f"{backend.address}|{backend.port}".encode(),
                             digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return -weight / math.log(u)
