"""Scripted lab runs: `failover` (measures takeover time) and `demo` (narrated).

Both clean up after themselves on success, error or Ctrl-C: daemons are killed by
pid, the lab is taken down if the scenario brought it up (otherwise the firewalls
are reset: links up, no virtual address left behind).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, TextIO

from . import meshd_node as md
from .nsutil import EchoServer, tcp_connect
from .procs import Procs
from .topology import SERVER4, VIRTUAL_ADDRESSES, Lab, LabError, nsexec
from .watch import start_watch


class _Session:
    """Lab + processes + run dir, torn down together."""

    def __init__(self, prefix: str, lab: Lab | None, nodes: int, run_dir: str | None,
                 fresh: bool = False):
        self.brought_up = False
        if lab is None:
            lab = None if fresh else Lab.detect(prefix)
            if lab is None or lab.nodes < nodes:
                lab = Lab(prefix, nodes)
        self.lab = lab
        self.own_run_dir = run_dir is None
        self.run_dir = run_dir or tempfile.mkdtemp(prefix=f"mlab-{lab.prefix}")
        self.procs = Procs(self.run_dir, env=md.child_env())
        self.up_seconds = None

    def up(self) -> None:
        if not self.lab.is_up():
            self.up_seconds = self.lab.up()
            self.brought_up = True

    def close(self, error: BaseException | None = None) -> None:
        """Stop daemons, take the lab down (or reset it); keep the run dir only after an error."""
        self.procs.kill_all()
        try:
            if self.brought_up:
                self.lab.down()
            elif self.lab.is_up():
                for n in range(1, self.lab.nodes + 1):
                    self.lab.reset_fw(n)
        finally:
            if self.own_run_dir:
                if error is None or isinstance(error, KeyboardInterrupt):
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                elif isinstance(error, LabError):
                    error.args = (f"{error.args[0] if error.args else error}\n"
                                  f"(configs and logs kept in {self.run_dir})",)

    def __enter__(self) -> "_Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        out.write(text + "\n")
        out.flush()


def _require_meshd() -> None:
    ok, why = md.meshd_available()
    if not ok:
        raise LabError(f"cannot run meshd from this checkout: {why}")


def failover(json_out: bool = False, prefix: str = "mesh-", lab: Lab | None = None,
             run_dir: str | None = None, advbase_ms: int = 100, out: TextIO | None = sys.stdout,
             settle_s: float = 0.5) -> dict[str, Any]:
    """Kill the master (SIGKILL + links down) and time until the backup holds every virtual address.

    Returns {"takeover_ms", "new_master", "advbase_ms", ...}; prints it as one JSON
    object with json_out, as sentences otherwise (out=None: silent).
    """
    text = None if json_out else out
    _require_meshd()
    result: dict[str, Any] = {"scenario": "failover", "advbase_ms": advbase_ms}
    with _Session(prefix, lab, 2, run_dir) as s:
        s.up()
        lab = s.lab
        if s.up_seconds is not None:
            result["lab_up_s"] = round(s.up_seconds, 3)
            _say(text, f"Lab {lab.prefix}* is up ({s.up_seconds:.2f} s).")
        groups = md.default_groups(advbase_ms)
        names = [g["name"] for g in groups]
        for n in (1, 2):
            md.start_meshd(s.procs, lab, n, groups, advbase_ms)
        _say(text, f"Started meshd on fw1 and fw2 (adverts every {advbase_ms} ms); waiting for fw1 to be MASTER.")
        t_start = time.monotonic()
        md.wait_states(s.run_dir, {1: "MASTER", 2: "BACKUP"}, names, timeout=10.0, procs=s.procs)
        result["converge_ms"] = round((time.monotonic() - t_start) * 1000, 1)
        _say(text, f"fw1 is MASTER and fw2 BACKUP of {', '.join(names)} "
                   f"({result['converge_ms']:.0f} ms after start).")
        time.sleep(settle_s)     # a few adverts in steady state
        watch = start_watch(s.procs, lab.fw(2), VIRTUAL_ADDRESSES, name="watch-fw2", timeout=15)
        t_wall = time.time()
        t_kill = s.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGKILL)
        lab.fw_links(1, up=False)
        _say(text, "Killed fw1's meshd (SIGKILL) and set all of fw1's links down.")
        ev = watch.wait_result(timeout=15)
        if ev.get("event") != "present":
            raise LabError("fw2 did not take every virtual address within 15 s "
                           f"(watcher: {ev})\n{s.procs.logs(25)}")
        takeover_ms = (ev["time"] - t_kill) * 1000
        st2 = md.status(s.run_dir, 2)
        states2 = md.group_states(st2)
        result.update({
            "takeover_ms": round(takeover_ms, 1),
            "new_master": "fw2" if all(states2.get(g) == "MASTER" for g in names) else None,
            "fw2_states": states2,
            "addresses": [a.split("/")[0] for a in VIRTUAL_ADDRESSES],
        })
        recs = md.became_master_records(s.procs.get(md.MESHD_LOG.format(n=2)).log)
        after = [md.record_time_ms(r, t_kill, t_wall) for r, _ in recs]
        after = [a for a in after if a is not None and a > -50]
        if after:
            result["log_master_ms"] = round(min(after), 1)
        if result["new_master"] is None:
            raise LabError(f"fw2 holds the addresses but reports {states2}\n{s.procs.logs(25)}")
        _say(text, f"fw2 held all {len(VIRTUAL_ADDRESSES)} virtual addresses {takeover_ms:.0f} ms after "
                   f"the kill (advbase {advbase_ms} ms)"
                   + (f"; its log says MASTER at +{result['log_master_ms']:.0f} ms." if "log_master_ms" in result
                      else "."))
    if json_out and out is not None:
        out.write(json.dumps(result) + "\n")
        out.flush()
    return result


ECHO_PORT = 7007


def _connect_retry(lab: Lab, host: str, timeout: float) -> tuple[float, str]:
    """Connect client -> host:ECHO_PORT until it works; return (seconds, reply)."""
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        try:
            reply = tcp_connect(lab.client, host, ECHO_PORT, timeout=1.0, payload=b"hello meshd\n")
            return time.monotonic() - t0, reply.decode(errors="replace").strip()
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise LabError(f"the client could not reach {host}:{ECHO_PORT} within {timeout:g} s: {last}")


def _conntrack_count(lab: Lab, n: int) -> int:
    p = subprocess.run(nsexec(lab.fw(n), "conntrack", "-L", "-p", "tcp", "--dport", str(ECHO_PORT)),
                       capture_output=True, text=True)
    return sum(1 for line in p.stdout.splitlines() if line.strip())


def demo(prefix: str = "mesh-", out: TextIO = sys.stdout, advbase_ms: int = 100) -> None:
    """The README demo, narrated step by step."""
    _require_meshd()
    say = lambda t: _say(out, t)  # noqa: E731
    with _Session(prefix, None, 2, None, fresh=True) as s:
        say(f"1. Building the lab: namespaces {s.lab.prefix}client, fw1, fw2, server and a switch.")
        s.lab.down()
        s.up()
        lab = s.lab
        say(f"   Up in {s.up_seconds:.2f} s. The client (192.0.2.100) uses 192.0.2.1 as gateway, "
            "the server (198.51.100.100) uses 198.51.100.1: addresses no firewall holds yet.")
        groups = md.default_groups(advbase_ms)
        names = [g["name"] for g in groups]
        say(f"2. Starting meshd on fw1 (advskew 0) and fw2 (advskew 10), adverts every {advbase_ms} ms.")
        for n in (1, 2):
            md.start_meshd(s.procs, lab, n, groups, advbase_ms)
        sts = md.wait_states(s.run_dir, {1: "MASTER", 2: "BACKUP"}, names, timeout=10.0, procs=s.procs)
        say("   They elected fw1, the preferred node:")
        for n in (1, 2):
            say("     " + md.format_status(n, sts[n]))
        say(f"   fw1 holds {', '.join(a.split('/')[0] for a in VIRTUAL_ADDRESSES)}.")
        with EchoServer(lab.server, "0.0.0.0", ECHO_PORT):
            say(f"3. An echo server listens on the server, port {ECHO_PORT}. The client connects through the "
                "virtual gateway:")
            secs, reply = _connect_retry(lab, SERVER4, 5.0)
            say(f"   connected in {secs * 1000:.0f} ms, the server echoed {reply!r}; fw1's connection "
                f"tracking saw {_conntrack_count(lab, 1)} such connection(s), fw2's {_conntrack_count(lab, 2)}.")
            say("4. Failure: fw1's meshd is killed (SIGKILL) and all of fw1's links go down.")
            watch = start_watch(s.procs, lab.fw(2), VIRTUAL_ADDRESSES, name="watch-fw2", timeout=15)
            t_kill = s.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGKILL)
            lab.fw_links(1, up=False)
            ev = watch.wait_result(timeout=15)
            if ev.get("event") != "present":
                raise LabError(f"fw2 did not take over within 15 s\n{s.procs.logs(25)}")
            say(f"   fw2 held every virtual address {(ev['time'] - t_kill) * 1000:.0f} ms later.")
            st2 = md.status(s.run_dir, 2)
            say("     " + md.format_status(2, st2))
            say("5. The client connects again, now through fw2:")
            secs, reply = _connect_retry(lab, SERVER4, 5.0)
            say(f"   connected {secs * 1000:.0f} ms after the first try, the server echoed {reply!r}; "
                f"fw2's connection tracking now shows {_conntrack_count(lab, 2)} connection(s).")
        say("6. Tearing everything down.")
    say("   Done: daemons stopped, namespaces removed.")
