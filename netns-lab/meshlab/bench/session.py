"""The benchmark's measurements, its runs and the session that runs them on one lab.

(Being split: the load, the rows, the plan and the report are their own modules now.)
A run that fails records its error in its rows; the others go on.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from .. import meshd_node as md
from .. import scenarios as sc
from ..flows import summarize
from ..procs import Procs
from ..systems import make_system, reference_module
from ..topology import (
    LAN_VIRTUAL,
    SRV_VIRTUAL,
    VIRTUAL_ADDRESSES,
    Lab,
    LabError,
    nsexec,
)
from ..watch import start_watch
from .load import (
    CACHE_ONLY_COMMIT,
    FLOWS,
    FLOWS_REPLICATED_S,
    GAP_SIZES,
    GIVE_UP_S,
    LOSS_ENTRIES,
    LOSS_PERCENTS,
    LOSS_RATE,
    MEMORY_BIG,
    REPLICATION_ENTRIES,
    REPLICATION_RATE,
    REPLICATION_TIMEOUT_S,
    TAKEOVER_TIMEOUT_S,
)
from .plan import fits_budget, plan_phases
from .report import build_report

CONNTRACK_MAX = 1_200_000            # root namespace, while the benchmark runs
DEFAULT_REPS = 3
DEFAULT_BUDGET_S = 540.0             # the whole default run must end within 10 minutes
DEFAULT_PREFIX = "bench-"


# ---------------------------------------------------------------------- measurements


def cpu_snapshot(system, nodes) -> dict[int, float]:
    """{pid: CPU seconds} of every daemon process of the nodes."""
    snap = {}
    for n in nodes:
        for pid in system.daemon_pids(n):
            c = sc.cpu_seconds(pid)
            if c is not None:
                snap[pid] = c
    return snap


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process new in `after` counts from 0)."""
    return sum(c - before.get(pid, 0.0) for pid, c in after.items())


def rss_bytes(pids) -> int:
    """Summed resident set size of the processes (VmRSS of /proc/PID/status)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


def kernel_count(lab: Lab, n: int) -> int:
    """Entries in fw n's conntrack table."""
    p = subprocess.run(nsexec(lab.fw(n), "conntrack", "-C"), capture_output=True, text=True, timeout=30)
    try:
        return int(p.stdout.strip())
    except ValueError:
        raise LabError(f"conntrack -C in {lab.fw(n)} printed {p.stdout.strip()!r} "
                       f"(exit {p.returncode}: {p.stderr.strip()})") from None


def read_sysctl(ns: str | None, name: str) -> str:
    path = "/proc/sys/" + name.replace(".", "/")
    if ns is None:
        with open(path) as f:
            return f.read().strip()
    p = subprocess.run(nsexec(ns, "cat", path), capture_output=True, text=True, timeout=10)
    return p.stdout.strip()


@dataclass
class Waited:
    reached: bool
    at: float
    seen: dict[int, int]
    last_error: str | None = None


def wait_replicated(system, want: dict[int, int], timeout: float, origin: int = 1,
                    poll: float = 0.05) -> Waited:
    """Poll until each node n's external cache of `origin` holds at least want[n] entries.

    A count that cannot be read (a daemon too busy to answer in time) is retried, not fatal.
    """
    t0 = time.monotonic()
    seen: dict[int, int] = {n: -1 for n in want}
    last_error = None
    while True:
        for n in want:
            if seen[n] >= want[n]:
                continue
            try:
                seen[n] = system.external_count(n, origin)
            except (LabError, OSError, subprocess.SubprocessError) as e:
                last_error = str(e).splitlines()[0]
        now = time.monotonic()
        if all(seen[n] >= want[n] for n in want):
            return Waited(True, now, seen, last_error)
        if now - t0 >= timeout:
            return Waited(False, now, seen, last_error)
        time.sleep(poll)


_SS_TIMER = re.compile(r"timer:\((\w+),[^,]*,(\d+)\)")


def stalled_sockets(ss_output: str) -> int:
    """Sockets of `ss -Htno` output whose retransmission timer has fired at least once.

    A flow whose packets are being dropped retransmits (RTO 200 ms, doubling) until one
    gets through; the counter goes back to 0 at the first new acknowledgement.  A running
    flow has data in flight now and then, but no retransmission.
    """
    stalled = 0
    for line in ss_output.splitlines():
        m = _SS_TIMER.search(line)
        if m and m.group(1) == "on" and int(m.group(2)) > 0:
            stalled += 1
    return stalled


def flow_sockets_stalled(lab: Lab, port: int) -> int | None:
    """Established flow sockets, client and server side, in retransmission; None if `ss` fails."""
    stalled = 0
    for ns, side in ((lab.client, "dport"), (lab.server, "sport")):
        p = subprocess.run(nsexec(ns, "ss", "-Htno", "state", "established", f"( {side} = :{port} )"),
                           capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            return None
        stalled += stalled_sockets(p.stdout)
    return stalled


def wait_flows_settled(lab: Lab, port: int, t_kill: float, min_after: float = 1.0,
                       max_after: float = 25.0, poll: float = 0.1) -> float | None:
    """Seconds after the kill when no flow socket was retransmitting in two polls in a row
    (every surviving flow is running again); None if that did not happen within max_after.

    This ends a gap run as soon as the flows are back instead of after a fixed time long
    enough for the slowest system.  min_after: a flow stopped by the kill needs one RTO
    (200 ms) before it shows as retransmitting.
    """
    quiet = 0
    while True:
        now = time.monotonic()
        if now - t_kill >= max_after:
            return None
        stalled = flow_sockets_stalled(lab, port)
        quiet = quiet + 1 if stalled == 0 else 0
        if quiet >= 2 and now - t_kill >= min_after:
            return now - t_kill
        time.sleep(poll)


# ---------------------------------------------------------------------- the runs
#
# Each run starts its system, measures, and returns a dict of metrics; the caller
# (BenchSession.run_one) stops the system and resets the lab whatever happens.


_nets = itertools.count()


def fresh_net() -> int:
    """A client net (10.NET.0.0/16) for meshlab.preload that the last runs did not use.

    A run measures how many entries a cache gained; should anything of an earlier run
    linger somewhere (a daemon's resync from a peer, say), entries with new keys still
    count, where the same keys again would not.
    """
    return 1 + next(_nets) % 200


def virtual_holders(lab: Lab, nodes) -> dict[int, str]:
    """{node: "all" | "none" | "some"}: how many of the virtual addresses each firewall holds."""
    want = {a.split("/")[0] for a in VIRTUAL_ADDRESSES}
    out = {}
    for n in nodes:
        held = want & {a.split("/")[0] for addrs in lab.addresses(lab.fw(n)).values() for a in addrs}
        out[n] = "all" if held == want else "none" if not held else "some"
    return out


def gateway_diagnosis(lab: Lab) -> str:
    """Which firewall the client's and the server's ARP entries for their gateways point at,
    and who holds the virtual addresses: why flows cannot get through, in one line."""
    macs = {}
    for n in range(1, lab.nodes + 1):
        for dev in ("lan0", "srv0"):
            p = lab.ip(lab.fw(n), "-j", "link", "show", dev, check=False)
            try:
                macs[json.loads(p.stdout)[0]["address"]] = f"fw{n}"
            except (ValueError, IndexError, KeyError):
                pass
    parts = []
    for ns, gw in ((lab.client, LAN_VIRTUAL[0]), (lab.server, SRV_VIRTUAL[0])):
        ip = gw.split("/")[0]
        p = lab.ip(ns, "-j", "neigh", "show", ip, check=False)
        try:
            entries = json.loads(p.stdout or "[]")
        except ValueError:
            entries = []
        seen = [f"{macs.get(e.get('lladdr'), e.get('lladdr', '?'))} ({'/'.join(e.get('state', []))})"
                for e in entries]
        parts.append(f"{ns} ARP {ip} -> {', '.join(seen) or 'none'}")
    holders = virtual_holders(lab, range(1, lab.nodes + 1))
    parts.append("virtual addresses: " + ", ".join(f"fw{n} {h}" for n, h in holders.items()))
    return "; ".join(parts)


def _start(system, out: dict[str, Any], nodes=(1, 2), commit: str | None = None) -> None:
    t = time.monotonic()
    system.start(nodes, commit=commit)
    out["start_s"] = round(time.monotonic() - t, 2)


def _want(system, nodes, extra: int, timeout: float = 10.0) -> dict[int, int]:
    """{node: entries its external cache holds now + extra} (retried while a cache cannot be read)."""
    deadline = time.monotonic() + timeout
    want = {}
    for n in nodes:
        while (count := system.external_count(n)) < 0:
            if time.monotonic() > deadline:
                raise LabError(f"{system.name}: fw{n}'s external cache size cannot be read")
            time.sleep(0.1)
        want[n] = count + extra
    return want


def run_survival(system, lab: Lab, procs: Procs, preload: int, flows: int = FLOWS,
                 say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Rows 1 and 2: `flows` live TCP flows through fw1 (with `preload` entries in the table);
    fw1 killed (SIGKILL + links down); takeover time and the flows' gaps through fw2."""
    out: dict[str, Any] = {"preloaded": preload}
    _start(system, out)
    base = _want(system, (2,), 0)[2]
    out["cached_before"] = base           # (a few entries of earlier flows may come back)
    if preload:
        r = sc.run_preload(procs, lab, 1, preload, net=fresh_net())
        out["preload_s"] = round(r["seconds"], 3)
        w = wait_replicated(system, {2: base + preload}, timeout=REPLICATION_TIMEOUT_S)
        if not w.reached:
            raise LabError(f"{preload} preloaded entries not replicated to fw2 within "
                           f"{REPLICATION_TIMEOUT_S:g} s: fw2 holds {w.seen[2] - base}"
                           + (f" (last error: {w.last_error})" if w.last_error else ""))
        out["replicated_s"] = round(w.at - r["t_end"], 3)
    try:
        fr = sc.FlowRun(procs, lab, flows)
    except LabError as e:
        raise LabError(f"{str(e).splitlines()[0]} ({gateway_diagnosis(lab)})") from None
    w = wait_replicated(system, {2: base + preload + flows}, timeout=FLOWS_REPLICATED_S)
    out["flows_replicated"] = w.reached
    if not w.reached:
        say(f"    (fw2 holds {w.seen[2] - base - preload} of the {flows} flows' entries after "
            f"{FLOWS_REPLICATED_S:g} s; going on)")
    time.sleep(0.5)                 # steady state: the flows' last TCP state changes replicated
    # A backup that took over during the load (adverts starved) would carry the flows
    # already, and the kill would measure nothing: that is a failed run, not a short gap.
    roles = virtual_holders(lab, (1, 2))
    if roles != {1: "all", 2: "none"}:
        raise LabError(f"before the kill fw1 must hold every virtual address and fw2 none, but fw1 holds "
                       f"{roles[1]} and fw2 {roles[2]} (a takeover during the load?): {gateway_diagnosis(lab)}")
    watch = start_watch(procs, lab.fw(2), VIRTUAL_ADDRESSES, name="watch-fw2", timeout=TAKEOVER_TIMEOUT_S)
    t_kill = system.kill(1)
    lab.fw_links(1, up=False)
    ev = watch.wait_result(timeout=TAKEOVER_TIMEOUT_S + 5)
    if ev.get("event") != "present":
        fr.stop()
        raise LabError(f"fw2 did not take every virtual address within {TAKEOVER_TIMEOUT_S:g} s of the kill "
                       f"(watcher: {ev.get('event')}, present: {ev.get('present')})")
    out["takeover_ms"] = round((ev["time"] - t_kill) * 1000, 1)
    settled = wait_flows_settled(lab, sc.FLOW_PORT, t_kill)
    out["settled_s"] = None if settled is None else round(settled, 2)
    time.sleep(0.5)                 # a few round trips of every survivor after its gap
    res = fr.stop()
    s = summarize(res, t_fail=t_kill)
    out.update({k: s[k] for k in ("flows", "survived", "reset", "median_gap_ms", "max_gap_ms")})
    return out


def run_replication(system, lab: Lab, procs: Procs, entries: int, rate: float, commit: bool,
                    say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Rows 3-5: inject `entries` into fw1 (at `rate`/s; 0: as fast as possible); the time from
    the end of the injection until fw2 holds them all, the daemons' CPU for that, the RSS
    growth of fw2's daemons per entry; with `commit`, then time committing fw2's external
    cache into its (empty) kernel table."""
    out: dict[str, Any] = {"entries": entries}
    _start(system, out, commit=CACHE_ONLY_COMMIT)
    time.sleep(0.3)                 # let start-up allocations settle before the RSS baseline
    want = _want(system, (2,), entries)
    out["cached_before"] = want[2] - entries
    rss0 = rss_bytes(system.daemon_pids(2))
    cpu0 = cpu_snapshot(system, (1, 2))
    r = sc.run_preload(procs, lab, 1, entries, net=fresh_net(), rate=rate, batch=500 if rate else 2000)
    out["injection_s"] = round(r["seconds"], 3)
    out["injection_rate"] = r["rate"]
    w = wait_replicated(system, want, timeout=REPLICATION_TIMEOUT_S)
    cpu1 = cpu_snapshot(system, (1, 2))
    if not w.reached:
        raise LabError(f"fw2 holds {w.seen[2] - (want[2] - entries)} of {entries} entries "
                       f"{REPLICATION_TIMEOUT_S:g} s after the injection ended"
                       + (f" (last error: {w.last_error})" if w.last_error else ""))
    out["lag_s"] = round(max(0.0, w.at - r["t_end"]), 3)
    out["cpu_s"] = round(cpu_delta(cpu0, cpu1), 3)
    cached = system.external_count(2) - (want[2] - entries)
    rss1 = rss_bytes(system.daemon_pids(2))
    out["cached"] = cached
    out["rss_growth"] = rss1 - rss0
    out["rss_per_entry"] = round((rss1 - rss0) / cached, 1) if cached > 0 else None
    if commit:
        k0 = kernel_count(lab, 2)
        t0 = time.monotonic()
        system.commit(2)
        t_returned = time.monotonic()
        # The entries must really be in the kernel: count them (and wait, should a commit
        # return before its work is done).
        deadline = t_returned + 60
        k1 = kernel_count(lab, 2)
        while k1 < k0 + entries and time.monotonic() < deadline:
            time.sleep(0.02)
            k1 = kernel_count(lab, 2)
        t_done = max(t_returned, time.monotonic() if k1 >= k0 + entries else t_returned)
        out["committed"] = k1 - k0
        if k1 < k0 + entries:
            raise LabError(f"after the commit fw2's kernel table grew by {k1 - k0} entries, "
                           f"not {entries} (60 s after the commit returned)")
        out["commit_returned_s"] = round(t_returned - t0, 3)
        out["commit_s"] = round(t_done - t0, 3)
        out["commit_rate"] = round(entries / (t_done - t0))
    return out


def run_loss(system, lab: Lab, procs: Procs, percent: int, entries: int = LOSS_ENTRIES,
             rate: float = LOSS_RATE, give_up_s: float = GIVE_UP_S,
             say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Row 6: `percent` % of the replication datagrams dropped on both firewalls' sync0 input;
    inject `entries` into fw1 at `rate`/s; the fraction fw2 holds, and the time from the end of
    the injection until it holds them all (None after give_up_s)."""
    out: dict[str, Any] = {"loss": percent, "entries": entries, "give_up_s": give_up_s}
    _start(system, out)
    try:
        for n in (1, 2):
            sc.add_loss(lab, n, percent, port=system.sync_port)
        want = _want(system, (2,), entries)
        r = sc.run_preload(procs, lab, 1, entries, net=fresh_net(), rate=rate, batch=500)
        out["injection_s"] = round(r["seconds"], 3)
        w = wait_replicated(system, want, timeout=give_up_s, poll=0.1)
        got = w.seen[2] - (want[2] - entries)
        out["replicated"] = got
        out["fraction"] = round(min(1.0, max(0, got) / entries), 5)
        out["converge_s"] = round(max(0.0, w.at - r["t_end"]), 3) if w.reached else None
        out["dropped"] = {f"fw{n}": sc.loss_dropped(lab, n) for n in (1, 2)}
    finally:
        for n in (1, 2):
            sc.remove_loss(lab, n)
    return out


def run_three_nodes(system, lab: Lab, procs: Procs, entries: int = REPLICATION_ENTRIES,
                    rate: float = REPLICATION_RATE, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Row 7: three nodes; `entries` injected into fw1 at `rate`/s; time until fw2 AND fw3 hold
    them all, and the three daemons' CPU."""
    out: dict[str, Any] = {"entries": entries}
    _start(system, out, (1, 2, 3), commit=CACHE_ONLY_COMMIT)
    want = _want(system, (2, 3), entries)
    cpu0 = cpu_snapshot(system, (1, 2, 3))
    r = sc.run_preload(procs, lab, 1, entries, net=fresh_net(), rate=rate, batch=500)
    w = wait_replicated(system, want, timeout=REPLICATION_TIMEOUT_S)
    cpu1 = cpu_snapshot(system, (1, 2, 3))
    if not w.reached:
        raise LabError(f"after {REPLICATION_TIMEOUT_S:g} s fw2 holds {w.seen[2] - (want[2] - entries)} and fw3 "
                       f"{w.seen[3] - (want[3] - entries)} of {entries} entries")
    out["lag_s"] = round(max(0.0, w.at - r["t_end"]), 3)
    out["cpu_s"] = round(cpu_delta(cpu0, cpu1), 3)
    return out


RUNS: dict[str, tuple[int, Callable[..., dict[str, Any]]]] = {
    # kind: (lab nodes, run(system, lab, procs, say))
    "gap0": (2, lambda s, lab, p, say: run_survival(s, lab, p, 0, say=say)),
    "gap100k": (2, lambda s, lab, p, say: run_survival(s, lab, p, GAP_SIZES[1], say=say)),
    "gap200k": (2, lambda s, lab, p, say: run_survival(s, lab, p, GAP_SIZES[2], say=say)),
    "repl": (2, lambda s, lab, p, say: run_replication(s, lab, p, REPLICATION_ENTRIES, REPLICATION_RATE,
                                                       commit=True, say=say)),
    # (at row 3's rate: this row is about memory; the gap rows already inject at full speed)
    "mem500k": (2, lambda s, lab, p, say: run_replication(s, lab, p, MEMORY_BIG, REPLICATION_RATE,
                                                          commit=False, say=say)),
    "loss20": (2, lambda s, lab, p, say: run_loss(s, lab, p, LOSS_PERCENTS[0], say=say)),
    "loss50": (2, lambda s, lab, p, say: run_loss(s, lab, p, LOSS_PERCENTS[1], say=say)),
    "three": (3, lambda s, lab, p, say: run_three_nodes(s, lab, p, say=say)),
}


def describe_run(kind: str, r: dict[str, Any]) -> str:
    """One line about a run's result, for the progress output."""
    if "error" in r:
        return "ERROR " + r["error"]
    if kind.startswith("gap"):
        return (f"takeover {r['takeover_ms']:.0f} ms, gap median {r['median_gap_ms']} / max {r['max_gap_ms']} ms, "
                f"{r['survived']}/{r['flows']} flows survived")
    if kind in ("repl", "mem500k"):
        text = (f"{r['cached']} cached, lag {r['lag_s']:.2f} s, CPU {r['cpu_s']:.2f} s, "
                f"RSS {r['rss_per_entry']} bytes/entry")
        if "commit_s" in r:
            text += f", commit {r['commit_s']:.2f} s ({r['commit_rate']:,}/s)"
        return text
    if kind.startswith("loss"):
        conv = "stuck" if r["converge_s"] is None else f"{r['converge_s']:.2f} s"
        return f"{r['replicated']}/{r['entries']} replicated, converge {conv}"
    if kind == "three":
        return f"lag {r['lag_s']:.2f} s, CPU {r['cpu_s']:.2f} s"
    return json.dumps(r)


# ---------------------------------------------------------------------- the session


def raise_conntrack_max(value: int) -> int | None:
    """Raise the root namespace's nf_conntrack_max to `value` (new namespaces inherit it);
    return the old value to restore, None if it was already high enough."""
    path = "/proc/sys/net/netfilter/nf_conntrack_max"
    try:
        with open(path) as f:
            old = int(f.read().strip())
    except OSError as e:
        raise LabError(f"cannot read {path} ({e.strerror}): is the nf_conntrack module loaded?") from None
    if old >= value:
        return None
    with open(path, "w") as f:
        f.write(str(value))
    return old


def restore_conntrack_max(old: int | None) -> None:
    if old is not None:
        with open("/proc/sys/net/netfilter/nf_conntrack_max", "w") as f:
            f.write(str(old))




@dataclass
class BenchSession:
    """One lab (rebuilt only to change its node count or after a failed run), one Procs, and
    the root namespace's nf_conntrack_max: all restored by close()."""

    prefix: str
    advbase_ms: int
    out: TextIO
    lab: Lab | None = None
    procs: Procs | None = None
    run_dir: str = ""
    conntrack_max_old: int | None = None
    t0: float = field(default_factory=time.monotonic)
    failed_runs: int = 0
    kept_run_dir: bool = False

    def open(self) -> None:
        self.conntrack_max_old = raise_conntrack_max(CONNTRACK_MAX)
        self.run_dir = tempfile.mkdtemp(prefix=f"mlab-{self.prefix}")
        self.procs = Procs(self.run_dir, env=md.child_env())

    def say(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.t0:6.1f} s] {text}\n")
        self.out.flush()

    def lab_with(self, nodes: int) -> Lab:
        if self.lab is None or self.lab.nodes != nodes or not self.lab.is_up():
            self.lab = Lab(self.prefix, nodes)
            secs = self.lab.up()             # removes any lab of this prefix first
            have = int(read_sysctl(self.lab.fw(1), "net.netfilter.nf_conntrack_max") or 0)
            self.say(f"lab {self.prefix}* up with {nodes} firewalls ({secs:.2f} s); "
                     f"nf_conntrack_max in the firewalls {have:,}")
            if have < MEMORY_BIG + REPLICATION_ENTRIES:
                raise LabError(f"nf_conntrack_max in {self.lab.fw(1)} is {have}: the benchmark needs "
                               f"{CONNTRACK_MAX} (raised in the root namespace before the lab is created)")
        return self.lab

    def reset(self) -> None:
        """After a run: every process stopped, firewalls reset, conntrack tables flushed."""
        self.procs.kill_all()
        lab = self.lab
        if lab is None or not lab.is_up():
            return
        for n in range(1, lab.nodes + 1):
            sc.remove_loss(lab, n)
            lab.reset_fw(n)
            sc.flush_conntrack(lab, n)

    def run_one(self, kind: str, system_name: str, rep: int, reps_of_kind: int) -> dict[str, Any]:
        nodes, fn = RUNS[kind]
        result: dict[str, Any] = {"kind": kind, "system": system_name, "rep": rep}
        label = f"{kind} {system_name}" + (f" run {rep}/{reps_of_kind}" if reps_of_kind > 1 else "")
        self.say(f"{label} ...")
        t = time.monotonic()
        system = None
        try:
            lab = self.lab_with(nodes)
            system = make_system(system_name, self.procs, lab, self.advbase_ms)
            result.update(fn(system, lab, self.procs, lambda s: self.say(s)))
        except Exception as e:  # noqa: BLE001 - recorded in the row; the other runs go on
            self.failed_runs += 1
            text = f"{type(e).__name__}: {e}" if not isinstance(e, LabError) else str(e)
            result["error"] = text.strip().splitlines()[0][:400] if text.strip() else type(e).__name__
            self.say(f"{label} failed:\n{text if isinstance(e, LabError) else traceback.format_exc()}")
        finally:
            t_clean = time.monotonic()
            if system is not None:
                try:
                    system.stop()
                except Exception as e:  # noqa: BLE001 - the reset below kills what is left
                    self.say(f"{label}: stopping {system_name} failed: {e}")
            try:
                self.reset()
            except Exception as e:  # noqa: BLE001 - a fresh lab for the next run
                self.say(f"resetting the lab failed ({e}); rebuilding it")
                self.lab = None
            result["cleanup_s"] = round(time.monotonic() - t_clean, 2)
        result["seconds"] = round(time.monotonic() - t, 1)
        self.say(f"{label}: {describe_run(kind, result)} ({result['seconds']:.1f} s)")
        return result

    def close(self, keep_run_dir: bool) -> None:
        try:
            if self.procs is not None:
                self.procs.kill_all()
        finally:
            try:
                from ..topology import down
                down(self.prefix)
            finally:
                restore_conntrack_max(self.conntrack_max_old)
                self.conntrack_max_old = None
                if self.run_dir and not keep_run_dir:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                elif self.run_dir:
                    self.kept_run_dir = True
                    self.out.write(f"bench: configs and logs kept in {self.run_dir}\n")


def run_benchmark(rows: list[int], systems: list[str], reps: int, prefix: str = DEFAULT_PREFIX,
                  advbase_ms: int = 100, out: TextIO = sys.stderr,
                  budget_s: float | None = None) -> dict[str, Any]:
    """Every run of the plan; the report as a dict {"rows", "machine", "settings", "runs", ...}.

    budget_s: repetitions after the first are skipped when the time they are expected to take
    (the first one's) would end the benchmark later than budget_s seconds after its start.
    KeyboardInterrupt (Ctrl-C, or SIGTERM turned into it) stops the runs; everything is cleaned
    up and the report of what ran is returned with "interrupted": true.
    """
    session = BenchSession(prefix, advbase_ms, out)
    if "reference" in systems:
        try:
            ensure = getattr(reference_module(), "ensure_installed", None)
            if ensure is not None:
                ensure()                            # keepalived, conntrackd from Debian when missing
        except LabError as e:
            session.say(f"the reference cannot run ({e}); each of its runs will record that")
    phases = plan_phases(rows, systems, reps)
    results: list[dict[str, Any]] = []
    interrupted = False
    skipped: list[str] = []
    counts: dict[tuple[str, str], int] = {}
    for phase in phases:
        for kind, system, _ in phase.runs:
            counts[(kind, system)] = counts.get((kind, system), 0) + 1
    session.say(f"{sum(len(p.runs) for p in phases)} runs: rows {','.join(map(str, rows))}, systems "
                f"{','.join(systems)}, {reps} repetition(s)"
                + (f" within {budget_s:g} s" if budget_s else ""))
    first_repetition_s = None
    run_s: dict[tuple[str, str], float] = {}        # (kind, system): seconds of its first run
    try:
        session.open()
        for phase in phases:
            elapsed = time.monotonic() - session.t0
            if skipped or (phase.optional and first_repetition_s is not None and
                           not fits_budget(elapsed, first_repetition_s, budget_s)):
                skipped.append(phase.name)
                session.say(f"skipping {phase.name}: the first took {first_repetition_s or 0:.0f} s, "
                            f"{(budget_s or 0) - elapsed:.0f} s are left of the {budget_s:g} s budget")
                continue
            t_phase = time.monotonic()
            for i, (kind, system, rep) in enumerate(phase.runs):
                # (a repetition slower than the first, e.g. after a failure, is cut short too)
                elapsed = time.monotonic() - session.t0
                if phase.optional and not fits_budget(elapsed, run_s.get((kind, system), 0.0), budget_s):
                    skipped.append(f"{phase.name} from {kind} {system} on")
                    session.say(f"stopping {phase.name} before {kind} {system}: the {budget_s:g} s "
                                f"budget is used up")
                    break
                result = session.run_one(kind, system, rep, counts[(kind, system)])
                results.append(result)
                run_s.setdefault((kind, system), result["seconds"])
            if phase.name == "repetition 1":
                first_repetition_s = time.monotonic() - t_phase
    except KeyboardInterrupt:
        interrupted = True
        session.say("interrupted: cleaning up")
    finally:
        session.close(keep_run_dir=session.failed_runs > 0 and not interrupted)
    seconds = round(time.monotonic() - session.t0, 1)
    return build_report(results, rows=rows, systems=systems, reps=reps, advbase_ms=advbase_ms,
                        budget_s=budget_s, skipped=skipped, seconds=seconds, failed_runs=session.failed_runs,
                        run_dir_kept=session.run_dir if session.kept_run_dir else None,
                        interrupted=interrupted)
