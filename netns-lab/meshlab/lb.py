"""The load-balancing lab: a redirect on the virtual address 192.0.2.1:80 to
three HTTP backends (198.51.100.11-13, "web") with a backup table (one
"sorry" server, 198.51.100.21), every backend its own process in the server
namespace (meshlab.backends), meshd's health checks on every firewall.

`LbRun` sets it up and tears it down; `lb()` is `lab scenario lb`: kill one
backend while a client keeps connecting, time until it leaves the slot map,
and count where new connections went before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, TextIO

from . import meshd_node as md
from .backends import http_get
from .nsutil import ns_socket
from .procs import Procs
from .topology import Lab, LabError, nsexec
from .watch import JsonLines

VIP, PORT = "192.0.2.1", 80
WEB = {"web1": "198.51.100.11", "web2": "198.51.100.12", "web3": "198.51.100.13"}
SORRY = {"sorry1": "198.51.100.21"}
REDIRECT = "www"


def health_toml(interval_ms: int = 500, fall: int = 2, rise: int = 2, rst_burst: int = 3,
                timeout_ms: int = 300, fast_interval_ms: int | None = None,
                down_interval_ms: int | None = None, demote: str | None = None) -> str:
    """The [health] section every lab firewall runs."""
    fast = fast_interval_ms or max(100, interval_ms // 5)
    down = down_interval_ms or interval_ms
    hosts = "\n".join(f'[[health.host]]\nname = "{n}"\naddress = "{a}"\n' for n, a in {**WEB, **SORRY}.items())
    check = f'{{ method = "http", path = "/health", code = 200, timeout_ms = {timeout_ms} }}'
    return f"""
[health]
rst_burst = {rst_burst}
rst_window_ms = 2000

{hosts}
[[health.table]]
name = "web"
hosts = {json.dumps(list(WEB))}
port = {PORT}
interval_ms = {interval_ms}
fast_interval_ms = {fast}
down_interval_ms = {down}
fall = {fall}
rise = {rise}
check = {check}

[[health.table]]
name = "sorry"
hosts = {json.dumps(list(SORRY))}
port = {PORT}
interval_ms = {interval_ms}
check = {check}

[[health.redirect]]
name = "{REDIRECT}"
address = "{VIP}"
port = {PORT}
table = "web"
backup_table = "sorry"
mode = "round-robin"
""" + (f'demote = "{demote}"\n' if demote else "")


class LbRun:
    """Backends in the server namespace + meshd with [health] on the firewalls."""

    def __init__(self, procs: Procs, lab: Lab, advbase_ms: int = 100, **health: Any):
        self.procs = procs
        self.lab = lab
        self.advbase_ms = advbase_ms
        self.health = health_toml(**health)
        self.added: list[str] = []

    # ------------------------------------------------------------------ set-up

    def add_backend_addresses(self) -> None:
        for a in {**WEB, **SORRY}.values():
            self.lab.ip(self.lab.server, "addr", "add", f"{a}/24", "dev", "eth0")
            self.added.append(a)

    def start_backend(self, name: str) -> None:
        address = {**WEB, **SORRY}[name]
        proc = self.procs.start(f"backend-{name}", self.lab.server,
                                [sys.executable, "-m", "meshlab.backends", name, address, "--port", str(PORT)],
                                env=md.child_env(), cwd=md.REPO, stdout_pipe=True)
        lines = JsonLines(proc)
        ev = lines.next(10)
        if not ev or ev.get("event") != "ready":
            raise LabError(f"backend {name} did not start: {ev}\n{proc.log_tail()}")

    def kill_backend(self, name: str) -> float:
        t = self.procs.send_signal(f"backend-{name}")
        self.procs.wait(f"backend-{name}", 5)
        return t

    def start_meshd(self, nodes=(1, 2)) -> list[str]:
        groups = md.default_groups(self.advbase_ms)
        for n in nodes:
            md.start_meshd(self.procs, self.lab, n, groups, self.advbase_ms, extra_toml=self.health)
        return [g["name"] for g in groups]

    def close(self) -> None:
        for a in self.added:
            self.lab.ip(self.lab.server, "addr", "del", f"{a}/24", "dev", "eth0", check=False)
        self.added = []

    # ------------------------------------------------------------------ looking

    def slot_addresses(self, n: int) -> set[str] | None:
        """Backend addresses in fw n's slot map of the redirect (None: no table)."""
        p = subprocess.run(nsexec(self.lab.fw(n), "nft", "-j", "list", "map", "inet", "meshd",
                                  f"slots_{REDIRECT}"), capture_output=True, text=True)
        if p.returncode != 0:
            return None
        found: set[str] = set()

        def walk(x: Any) -> None:
            if isinstance(x, str) and x.count(".") == 3:
                found.add(x)
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)

        for item in json.loads(p.stdout).get("nftables", []):
            if "map" in item:
                walk(item["map"].get("elem", []))
        return found

    def wait_slots(self, n: int, want: set[str], timeout: float, poll: float = 0.02) -> float:
        """Until fw n's slot map holds exactly `want`; seconds waited (LabError on timeout)."""
        t0 = time.monotonic()
        while True:
            got = self.slot_addresses(n)
            if got == want:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise LabError(f"fw{n}'s slot map holds {sorted(got or [])}, not {sorted(want)}, "
                               f"after {timeout:g} s\n{self.procs.logs(15)}")
            time.sleep(poll)

    def connect(self, timeout: float = 1.0) -> str:
        """One new connection client -> VIP:80: the name of the backend that answered, or why not."""
        try:
            return http_get(lambda fam: ns_socket(self.lab.client, fam), VIP, PORT, "/", timeout)
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            return f"error: {e.strerror or e}"

    def counts(self, n: int) -> dict[str, int]:
        return dict(Counter(self.connect() for _ in range(n)))


class Traffic:
    """A client connecting to the VIP every `every` seconds in a thread (for the reset watcher)."""

    def __init__(self, run: LbRun, every: float = 0.02):
        self.run = run
        self.every = every
        self.results: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.results[self.run.connect(timeout=0.5)] += 1
            self._stop.wait(self.every)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(5)
        return dict(self.results)


def lb(json_out: bool = False, prefix: str = "mesh-", connections: int = 60, interval_ms: int = 500,
       fall: int = 2, traffic: bool = True, out: TextIO | None = sys.stdout) -> dict[str, Any]:
    """`lab scenario lb`: kill web2; {"killed", "before", "after", "detection_s", ...}."""
    from .scenarios import _require_meshd, _say, _Session
    text = None if json_out else out
    _require_meshd()
    result: dict[str, Any] = {"scenario": "lb", "interval_ms": interval_ms, "fall": fall,
                              "resets_watched": traffic}
    with _Session(prefix, None, 2, None) as s:
        s.up()
        run = LbRun(s.procs, s.lab, interval_ms=interval_ms, fall=fall)
        try:
            run.add_backend_addresses()
            for name in {**WEB, **SORRY}:
                run.start_backend(name)
            names = run.start_meshd()
            md.wait_states(s.run_dir, {1: "MASTER", 2: "BACKUP"}, names, timeout=15, procs=s.procs)
            run.wait_slots(1, set(WEB.values()), timeout=15)
            _say(text, f"fw1 is MASTER and forwards {VIP}:{PORT} to {', '.join(WEB)} (checks every "
                       f"{interval_ms} ms, fall {fall}).")
            result["before"] = run.counts(connections)
            _say(text, f"{connections} new connections before: {result['before']}")
            flow = Traffic(run) if traffic else None
            t_kill = run.kill_backend("web2")
            result["killed"] = "web2"
            run.wait_slots(1, {WEB["web1"], WEB["web3"]}, timeout=30)
            result["detection_s"] = round(time.monotonic() - t_kill, 3)
            if flow is not None:
                result["during"] = flow.stop()
            bursts = md.log_events(s.procs.get(md.MESHD_LOG.format(n=1)).log, "health_rst_burst")
            result["rst_bursts"] = len(bursts)
            _say(text, f"killed web2: out of fw1's slot map {result['detection_s']:.2f} s later"
                       + (f" ({len(bursts)} reset burst(s) seen)" if traffic else "") + ".")
            result["after"] = run.counts(connections)
            _say(text, f"{connections} new connections after: {result['after']}")
        finally:
            run.close()
    if json_out and out is not None:
        out.write(json.dumps(result) + "\n")
        out.flush()
    return result
