"""The `dns` sub-table of a `[[health.relay]]` with `protocol = "dns"`.

meshd/config/relay.py hands it the relay's `dns = {...}` (or None when the
relay has none: the defaults then apply).  Every key is documented, with its
default and why, in docs/relays.md ("The dns sub-table").

Must not: open a socket or import the relay's handlers: meshd/relay/dns.py
and meshd/relay/dnsrelay.py use the `DnsSpec` this module returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .reader import Reader

BALANCE = ("query", "client")
# A mapping is looked for by (backend, id): above half of the 65536 ids of one
# backend, drawing a free random id would take many draws.
MAX_IN_FLIGHT_LIMIT = 32768
DNS_KEYS = {"max_in_flight", "query_timeout_ms", "retry", "balance",
            "tcp_max_message", "tcp_max_queries", "tcp_pipeline"}


@dataclass(frozen=True)
class DnsSpec:
    # Queries of one UDP listener sent to a backend and not yet answered.
    max_in_flight: int = 4096
    # How long a query's id mapping lives: then SERVFAIL (or the retry).
    # Below the 5 s after which a stub resolver (resolv.conf) asks again.
    query_timeout_ms: int = 2000
    # A query that timed out is sent once more, to another backend if any.
    retry: bool = False
    # "query": each UDP query is balanced on its own; "client": by the
    # client's address, so one client stays on one backend.
    balance: str = "query"
    tcp_max_message: int = 65535      # the largest query a TCP client may send
    tcp_max_queries: int = 1000       # per TCP connection; then it is closed
    tcp_pipeline: int = 32            # queries of one TCP connection in flight

    @property
    def query_timeout_s(self) -> float:
        return self.query_timeout_ms / 1000


def parse_dns(r: Reader, data: Any, path: str) -> DnsSpec | None:
    """The relay's `dns` sub-table at `path` (e.g. `health.relay[0].dns`);
    the defaults when it is absent (data is None); None when it has problems
    (recorded in `r`, each naming its key)."""
    if data is None:
        return DnsSpec()
    problems_before = len(r.problems)
    t = r.table(data, path, DNS_KEYS)
    d = DnsSpec()
    kw: dict[str, Any] = {
        "max_in_flight": r.get(t, path, "max_in_flight", "int", default=d.max_in_flight,
                               lo=1, hi=MAX_IN_FLIGHT_LIMIT),
        "query_timeout_ms": r.get(t, path, "query_timeout_ms", "int", default=d.query_timeout_ms,
                                  lo=50, hi=60_000),
        "retry": r.get(t, path, "retry", "bool", default=d.retry),
        "balance": r.choice(t, path, "balance", BALANCE, default=d.balance),
        # 12 bytes of header and a question of one byte name: the smallest query.
        "tcp_max_message": r.get(t, path, "tcp_max_message", "int", default=d.tcp_max_message,
                                 lo=17, hi=65535),
        "tcp_max_queries": r.get(t, path, "tcp_max_queries", "int", default=d.tcp_max_queries,
                                 lo=1, hi=10_000_000),
        "tcp_pipeline": r.get(t, path, "tcp_pipeline", "int", default=d.tcp_pipeline,
                              lo=1, hi=1024),
    }
    if len(r.problems) > problems_before:
        return None
    return DnsSpec(**kw)
