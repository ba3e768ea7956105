"""Row 9's run: one HTTP relay (meshd's relay engine, or HAProxy with one thread) under wrk.

Owns: `run_relay` (the backends and the relay up, then every point of load: keep-alive and
a new connection per request, plain and TLS, at each number of concurrent clients; the
load generator straight to a backend in meshd's run; a py-spy profile of the relay engine
under keep-alive load in meshd's run), `point_key` (the names of a point's metrics, which
`rows` reads), `profile_summary` (py-spy's collapsed stacks as shares of the samples) and
`describe_relay_run`.

Must not: build rows or judge a figure (`rows`), stop the system the session made (it
stops only what it started here: the relay, nginx, the sysctls it changed), or take the
lab down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .. import scenarios as sc
from ..procs import Procs
from ..relaysystems import BACKEND_PORT, BACKENDS, PLAIN_PORT, TLS_PORT, VIP, NginxBackends, backends_answering, \
    make_relay, write_certificate
from ..topology import Lab, LabError, nsexec
from ..wrk import run_wrk
from .load import RELAY_CLIENTS, RELAY_POINT_S, RELAY_PROFILE_S, RELAY_WARMUP_S
from .measure import read_sysctl

# So that 200 clients opening a connection per request (and the relay its backend
# connections) never run out of ports while earlier ones sit in TIME_WAIT.
SYSCTLS = {"net.ipv4.ip_local_port_range": "1024\t65535", "net.ipv4.tcp_tw_reuse": "1"}
CONNECTIONS = ("ka", "new")          # HTTP/1.1 keep-alive; Connection: close on every request
SECURITY = ("plain", "tls")


def point_key(conn: str, sec: str, clients: int, metric: str) -> str:
    """The result key of one point's metric: "ka_plain_c50_rps"; the direct points: "direct_ka_c50_rps"."""
    return f"{conn}_{sec}_c{clients}_{metric}" if sec else f"direct_{conn}_c{clients}_{metric}"


def _set_sysctls(namespaces: list[str], old: list[tuple[str, str, str]]) -> None:
    """SYSCTLS in each namespace; `old` gets each value before it is changed (to restore,
    also when a later one fails)."""
    for ns in namespaces:
        for name, value in SYSCTLS.items():
            old.append((ns, name, read_sysctl(ns, name)))
            subprocess.run(nsexec(ns, "sysctl", "-q", "-w", f"{name}={value}"), check=True, capture_output=True)


def _restore_sysctls(old: list[tuple[str, str, str]]) -> None:
    for ns, name, value in old:
        subprocess.run(nsexec(ns, "sysctl", "-q", "-w", f"{name}={value}"), check=False, capture_output=True)


def _cpu(pids: list[int]) -> float:
    return sum(sc.cpu_seconds(p) or 0.0 for p in pids)


def _point(lab: Lab, url: str, clients: int, new_connections: bool, pids: list[int],
           seconds: float = RELAY_POINT_S) -> dict[str, float | int]:
    before = _cpu(pids)
    r = run_wrk(lab.client, url, clients, seconds, new_connections)
    cpu = _cpu(pids) - before
    if pids and r["requests"]:
        r["cpu_us_per_req"] = round(cpu / r["requests"] * 1e6, 1)
        # Under 1 with the clients waiting: the relay was not what limited the rate (on a
        # shared machine, often the scheduler's share of a nice'd benchmark).
        r["cpu_share"] = round(cpu / seconds, 2)
    return r


# py-spy names a file by its module path ("h11/_util.py"), or in full with --full-filenames.
PACKAGES = (("h11/", "h11"), ("trio/", "trio (its socket calls included)"), ("meshd/relay/", "meshd.relay"),
            ("ssl.py", "ssl"))


def _package(path: str) -> str:
    return next((label for key, label in PACKAGES if path.startswith(key) or f"/{key}" in path), "other")


def _frame(text: str) -> tuple[str, str]:
    """("function (dir/file.py)", its path) of one py-spy frame "function (path/file.py:line)"."""
    name, _, where = text.partition(" (")
    path = where.rsplit(":", 1)[0] if where else ""
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if path else name, path


def profile_summary(collapsed: str, top: int = 12) -> dict[str, Any]:
    """py-spy's `--format raw` output (one "frame;frame;... count" line per stack) as
    {"samples", "self": [[function, share]...], "inclusive": [...], "by_package": [...]}:
    where the process spent its samples, by the innermost frame, by any frame, and by the
    package of the innermost frame (a C call such as send() counts to the Python frame that
    made it: trio's socket wrapper for the relay's socket calls)."""
    own: Counter = Counter()
    incl: Counter = Counter()
    package: Counter = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1][0]] += n
        package[_package(frames[-1][1])] += n
        for f in {name for name, _ in frames}:
            incl[f] += n
    if not total:
        return {"samples": 0, "self": [], "inclusive": [], "by_package": []}
    share = lambda items: [[f, round(n / total, 3)] for f, n in items]       # noqa: E731
    outer = ("<module>", "_run_module_as_main", "_run_code", "run (_core/_run.py)", "unrolled_run", "main (",
             "child_main")
    return {"samples": total, "self": share(own.most_common(top)),
            "inclusive": share([(f, n) for f, n in incl.most_common() if not f.startswith(outer)][:top]),
            "by_package": share(package.most_common())}


def _profile(lab: Lab, pid: int, run_dir: str, seconds: float = RELAY_PROFILE_S) -> dict[str, Any]:
    """The relay engine under keep-alive load (plain, 50 clients) sampled by py-spy."""
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        return {"error": "py-spy is not installed"}
    out = os.path.join(run_dir, "relay-profile.txt")
    spy = subprocess.Popen([pyspy, "record", "--format", "raw", "--rate", "200", "--duration", str(int(seconds)),
                            "--nonblocking", "--output", out, "--pid", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        run_wrk(lab.client, f"http://{VIP}:{PLAIN_PORT}/", 50, seconds, new_connections=False)
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not os.path.exists(out):
        return {"error": f"py-spy wrote nothing: {err.strip()[-300:]}"}
    with open(out) as f:
        return {**profile_summary(f.read()), "file": out}


def run_relay(system, lab: Lab, procs: Procs, say: Callable[[str], None] = lambda s: None,
              clients: tuple[int, ...] = RELAY_CLIENTS, seconds: float = RELAY_POINT_S,
              security: tuple[str, ...] = SECURITY, connections: tuple[str, ...] = CONNECTIONS,
              direct: bool | None = None, profile: bool | None = None) -> dict[str, Any]:
    """Row 9: the relay of `system.name` on fw1 under wrk from the client namespace.

    Every point: requests/s, p50 and p99 latency (µs), wrk's socket errors and non-2xx
    answers, the relay process's CPU per request (µs) and its share of a core.  direct (default: in meshd's
    run): the same keep-alive and new-connection points straight to one backend.
    """
    out: dict[str, Any] = {"loadavg_1m": round(os.getloadavg()[0], 2), "clients": list(clients),
                           "point_s": seconds}
    direct = system.name == "meshd" if direct is None else direct
    profile = system.name == "meshd" if profile is None else profile
    cert = write_certificate(procs.run_dir)
    backends = NginxBackends(procs, lab)
    relay = make_relay(system.name, procs, lab, system.advbase_ms)
    old: list[tuple[str, str, str]] = []
    try:
        _set_sysctls([lab.client, lab.fw(1)], old)
        backends.start()
        t = time.monotonic()
        relay.start(cert)
        out["start_s"] = round(time.monotonic() - t, 2)
        pids = relay.relay_pids()
        out["relay"] = relay.describe()
        urls = {"plain": f"http://{VIP}:{PLAIN_PORT}/", "tls": f"https://{VIP}:{TLS_PORT}/"}
        # Round robin over both backends, as configured, before anything is measured.
        out["backends_seen"] = backends_answering(lab)
        if set(out["backends_seen"]) != set(BACKENDS.values()):
            raise LabError(f"{system.name}'s relay answered from {out['backends_seen']}, not from every one of "
                           f"{sorted(BACKENDS.values())}")
        for sec in security:                  # a first TLS handshake, caches filled: not measured
            run_wrk(lab.client, urls[sec], 10, RELAY_WARMUP_S, new_connections=False)
        errors = 0
        for sec in security:
            for conn in connections:
                for n in clients:
                    r = _point(lab, urls[sec], n, conn == "new", pids, seconds)
                    for metric, v in r.items():
                        out[point_key(conn, sec, n, metric)] = v
                    errors += r["errors"] + r["non_2xx"]
                    say(f"  {system.name} {conn} {sec} c{n}: {r['rps']:,.0f} requests/s, p50 "
                        f"{r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms"
                        + (f", {r['cpu_us_per_req']:.0f} µs CPU/request ({r['cpu_share']:.0%} of a core)"
                           if "cpu_us_per_req" in r else "")
                        + (f", {r['errors']} socket errors, {r['non_2xx']} non-2xx" if r["errors"] or r["non_2xx"]
                           else ""))
        out["errors"] = errors
        if relay.relay_pids() != pids:
            raise LabError(f"the relay process changed during the run ({pids} -> {relay.relay_pids()}): it restarted")
        if direct:
            url = f"http://{BACKENDS['web1']}:{BACKEND_PORT}/"
            for conn in connections:
                for n in clients:
                    r = _point(lab, url, n, conn == "new", [], seconds)
                    for metric, v in r.items():
                        out[point_key(conn, "", n, metric)] = v
                    say(f"  direct {conn} c{n}: {r['rps']:,.0f} requests/s, p99 {r['p99_us'] / 1000:.2f} ms")
        if profile:
            out["profile"] = _profile(lab, pids[0], procs.run_dir)
    finally:
        try:
            relay.stop()
        finally:
            try:
                backends.stop()
            finally:
                _restore_sysctls(old)
    return out


def describe_relay_run(r: dict[str, Any]) -> str:
    """One line about a relay run, for the progress output."""
    parts = []
    for sec in SECURITY:
        key = point_key("ka", sec, 50, "rps")
        if key in r:
            parts.append(f"keep-alive {sec} 50 clients {r[key]:,.0f}/s")
    return ", ".join(parts) + f", {r.get('errors', 0)} errors, load {r.get('loadavg_1m')}"
