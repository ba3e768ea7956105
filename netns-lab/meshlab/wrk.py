"""The HTTP load generator of the relay benchmark: `wrk` (Debian package) in a namespace.

Owns: `wrk_argv` (one point of load: a URL, a number of concurrent clients, keep-alive or a
new connection per request, a duration), `parse_wrk` (wrk's text report: requests/s, the
50th and 99th latency percentiles, socket errors, non-2xx answers) and `run_wrk`.

wrk is one event-loop thread per `-t`; one thread is enough for the loads here (the bench
measures wrk straight to a backend to show it, docs/benchmarks.md), and a second one
would take a core from the relay under test on a two-core machine.

Must not: start or stop the systems under test, or judge the figures (`meshlab.bench`).
"""

from __future__ import annotations

import re
import subprocess

from .topology import LabError, nsexec

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def wrk_argv(url: str, clients: int, seconds: float, new_connections: bool, timeout_s: float = 5.0) -> list[str]:
    """wrk with one thread, `clients` connections for `seconds`, latency percentiles.

    new_connections: every request carries `Connection: close`, so each one is a new TCP
    (and TLS) connection; otherwise HTTP/1.1 keep-alive.
    """
    argv = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s:g}s",
            "--latency"]
    if new_connections:
        argv += ["-H", "Connection: close"]
    return argv + [url]


def parse_wrk(text: str) -> dict[str, float | int]:
    """wrk's report as {"rps", "p50_us", "p99_us", "requests", "errors", "non_2xx"}.

    errors: connect + read + write + timeout errors wrk counted (a connection closed or reset
    before its answer was whole is a read error; the close after `Connection: close` is not).
    Raises ValueError naming the line that is missing when the text is not a wrk report.
    """
    rate = _RATE.search(text)
    if rate is None:
        raise ValueError(f"not a wrk report (no 'Requests/sec:' line): {text.strip()[-300:]!r}")
    lat = {m.group(1): float(m.group(2)) * _UNITS_MS[m.group(3)] for m in _LATENCY.finditer(text)}
    if "50" not in lat or "99" not in lat:
        raise ValueError(f"wrk report without the 50% and 99% latency lines (run it with --latency): "
                         f"{text.strip()[-300:]!r}")
    done = _REQUESTS.search(text)
    errs = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return {"rps": float(rate.group(1)), "p50_us": round(lat["50"] * 1000, 1), "p99_us": round(lat["99"] * 1000, 1),
            "requests": int(done.group(1)) if done else 0,
            "errors": sum(int(x) for x in errs.groups()) if errs else 0,
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0}


def run_wrk(ns: str, url: str, clients: int, seconds: float, new_connections: bool) -> dict[str, float | int]:
    """One point of load from namespace `ns`; parse_wrk's dict. LabError when wrk fails."""
    argv = wrk_argv(url, clients, seconds, new_connections)
    try:
        p = subprocess.run(nsexec(ns, *argv), capture_output=True, text=True, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)} in {ns} did not end within {seconds + 30:g} s") from None
    if p.returncode != 0:
        raise LabError(f"{' '.join(argv)} in {ns} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-500:]}")
    try:
        return parse_wrk(p.stdout)
    except ValueError as e:
        raise LabError(f"{' '.join(argv)} in {ns}: {e}") from None
