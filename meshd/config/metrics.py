"""The `[metrics]` section: where meshd serves its Prometheus metrics.

Absent section: no endpoint.  `listen` is an IP literal and a port,
`127.0.0.1:7114` or `[::1]:7114`; a host name is refused rather than
resolved, since reading the file must not depend on a name server (and a
name that resolves to a public address would publish the metrics).

The default port, 7114, sits beside meshd's own UDP ports (7112 adverts,
7113 the state mesh) and outside the Prometheus exporters' range 9100-9999,
which is allocated in full (docs/metrics.md, "The endpoint").

Must not: open the socket (meshd/metrics/server.py binds it at start and on
a reload).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from .reader import Reader, describe

METRICS_KEYS = {"listen"}
DEFAULT_METRICS_PORT = 7114
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[^\]%]+)\]|(?P<v4>[0-9.]+)):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1"          # an IP literal, without brackets
    port: int = DEFAULT_METRICS_PORT

    @property
    def listen(self) -> str:
        """As written in the file: ADDRESS:PORT, an IPv6 address in brackets."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


def parse_metrics(r: Reader, data: Any) -> MetricsConfig | None:
    t = r.table(data, "metrics", METRICS_KEYS)
    listen = r.get(t, "metrics", "listen", "str", default=DEFAULT_LISTEN)
    if listen is None:
        return None
    parsed = parse_listen(listen)
    if isinstance(parsed, str):
        r.problem("metrics.listen", f"{parsed}, found {describe(listen)}")
        return None
    return MetricsConfig(*parsed)


def parse_listen(text: str) -> tuple[str, int] | str:
    """(address, port) of `127.0.0.1:7114` or `[::1]:7114`, or what is wrong with it."""
    expected = 'expected "IPV4:PORT" or "[IPV6]:PORT" (e.g. "127.0.0.1:7114", "[::1]:7114")'
    m = _LISTEN_RE.match(text)
    if m is None:
        return expected
    port = int(m["port"])
    if not 1 <= port <= 65535:
        return "expected a port from 1 to 65535"
    try:
        address = ipaddress.IPv6Address(m["v6"]) if m["v6"] is not None else ipaddress.IPv4Address(m["v4"])
    except ValueError:
        return expected
    return str(address), port
