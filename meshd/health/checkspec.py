"""What one health check does and what it found: the contract between the
configuration, the sans-I/O health core and the check runners.

A CheckSpec is hashable: the core shares one running check per distinct
(address, port, CheckSpec) among every table that uses it.

Must not: import anything from meshd: it sits on the lowest floor so that the
configuration and the check runners can share it (tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("tcp", "tls", "http", "https", "send", "binary", "script", "icmp")


@dataclass(frozen=True)
class CheckSpec:
    method: str                          # one of METHODS
    timeout_s: float = 1.0
    # http / https
    path: str = "/"
    host_header: str | None = None       # Host: header (default: the address)
    codes: tuple[int, int] = (200, 200)  # accepted status codes, inclusive range
    digest: str | None = None            # "sha256:<hex>" or "md5:<hex>" of the body (instead of codes)
    # tls / https
    sni: str | None = None               # server name sent in the ClientHello
    verify: bool = False                 # verify the certificate chain (against ca_file or the system store)
    verify_name: str | None = None       # name the certificate must match (default: sni) when verify
    ca_file: str | None = None
    expiry_warn_days: int | None = None  # warn (not fail) when the certificate expires within N days
    # send / expect ("send") and binary send / expect in hex ("binary")
    send: bytes | None = None
    expect: str | None = None            # send: a glob (fnmatch) the first line/chunk must match
    expect_bytes: bytes | None = None    # binary: the reply must start with these bytes
    # script: argv[0] (run as `script HOST PORT`, exit 0 = up)
    script: str | None = None


@dataclass(frozen=True)
class CheckTarget:
    address: str                         # IPv4 or IPv6 literal
    port: int                            # 0 for icmp
    spec: CheckSpec


@dataclass(frozen=True)
class CheckOutcome:
    ok: bool
    latency_s: float | None = None       # time to the verdict (None when it timed out)
    error: str | None = None             # why it failed, phrased for the log: "http code 503, expected 200"
    warning: str | None = None           # e.g. "certificate expires in 5 days"
