"""The measured runs: what one run of one system does, from its start to its result.

Owns: `run_survival` (rows 1-2: live flows through fw1, fw1 killed, the takeover time
and the flows' gaps), `run_replication` (rows 3-5: injection, replication lag, daemon CPU,
RSS per entry, the commit), `run_loss` (row 6), `run_three_nodes` (row 7), `run_churn`
(row 8: a sustained churn of short flows, its CPU, sync traffic, overruns), `RUNS` (each
kind of run: the firewalls its lab needs and the run with its load; row 9's is
`relayrun.run_relay`), and `describe_run`
(a run's progress line).  A run starts its system, loads it, kills or measures, and
returns a dict of metrics; it raises LabError when what it would measure cannot be trusted.

Must not: stop the system or reset the lab afterwards (the session does that whatever
happened), build or take down a lab, choose which runs happen (`plan`), or aggregate
results into rows (`rows`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from .. import scenarios as sc
from ..flows import summarize
from ..procs import Procs
from ..topology import VIRTUAL_ADDRESSES, Lab, LabError
from ..watch import start_watch
from .load import (
    CACHE_ONLY_COMMIT,
    CHURN_KEEP_EVERY,
    CHURN_LIFETIME_S,
    CHURN_PER_GENERATOR,
    CHURN_RATES,
    CHURN_SECONDS,
    CHURN_SETTLE_S,
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
from .measure import (
    cpu_delta,
    cpu_snapshot,
    gateway_diagnosis,
    kernel_count,
    link_counters,
    netlink_drops,
    rss_bytes,
    virtual_holders,
    wait_flows_settled,
    wait_replicated,
)
from .relayrun import describe_relay_run, run_relay

_nets = itertools.count()


def fresh_net() -> int:
    """A client net (10.NET.0.0/16) for meshlab.preload that the last runs did not use.

    A run measures how many entries a cache gained; should anything of an earlier run
    linger somewhere (a daemon's resync from a peer, say), entries with new keys still
    count, where the same keys again would not.
    """
    return 1 + next(_nets) % 200


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


def run_churn(system, lab: Lab, procs: Procs, rate: float, seconds: float = CHURN_SECONDS,
              say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Row 8: new flows created on fw1 at `rate`/s for `seconds`, each deleted
    CHURN_LIFETIME_S later but every CHURN_KEEP_EVERY-th; both daemons replicating.
    The rate the generators reached, each node's daemon CPU as % of one core over the
    churn (from the first new flow to CHURN_SETTLE_S after the last deletion), packets and
    bytes per second fw1 sent on sync0, the kernel's event-socket drops on either node,
    and whether fw2's copy ended with exactly the flows kept (none lost, none stale)."""
    out: dict[str, Any] = {"rate_asked": rate, "seconds": seconds, "lifetime_s": CHURN_LIFETIME_S}
    _start(system, out, commit=CACHE_ONLY_COMMIT)
    base = _want(system, (2,), 0)[2]
    drops0 = {n: netlink_drops(lab, n) for n in (1, 2)}
    link0 = link_counters(lab, 1)
    cpu0 = {n: cpu_snapshot(system, (n,)) for n in (1, 2)}
    t0 = time.monotonic()
    parts = max(1, -(-int(rate) // CHURN_PER_GENERATOR))
    r = sc.run_churn(procs, lab, 1, rate, seconds, CHURN_LIFETIME_S, net=fresh_net(),
                     keep_every=CHURN_KEEP_EVERY, parts=parts)
    time.sleep(CHURN_SETTLE_S)
    elapsed = time.monotonic() - t0
    cpu1 = {n: cpu_snapshot(system, (n,)) for n in (1, 2)}
    link1 = link_counters(lab, 1)
    out.update({"rate": r["rate"], "generators": parts, "late_max_s": r["late_max_s"],
                "created": r["created"], "kept": r["kept"], "failed": r["failed"],
                "elapsed_s": round(elapsed, 2)})
    if r["failed"]:
        raise LabError(f"the churn generators' requests failed {r['failed']} times: {r['errors']}")
    per_node = {n: 100 * cpu_delta(cpu0[n], cpu1[n]) / elapsed for n in (1, 2)}
    out["cpu_pct_fw1"] = round(per_node[1], 1)
    out["cpu_pct_fw2"] = round(per_node[2], 1)
    out["cpu_pct"] = round(per_node[1] + per_node[2], 1)
    out["sync_packets_per_s"] = round((link1["tx_packets"] - link0["tx_packets"]) / elapsed)
    out["sync_bytes_per_s"] = round((link1["tx_bytes"] - link0["tx_bytes"]) / elapsed)
    out["overruns"] = sum(netlink_drops(lab, n) - drops0[n] for n in (1, 2))
    # The copy: exactly the flows kept, within a few more seconds.
    w = wait_replicated(system, {2: base + r["kept"]}, timeout=10)
    held = w.seen[2] - base
    deadline = time.monotonic() + 5
    while held > r["kept"] and time.monotonic() < deadline:      # deletions still on their way
        time.sleep(0.2)
        held = system.external_count(2) - base
    out["peer_holds"] = held
    out["lost"] = max(0, r["kept"] - held)
    out["stale"] = max(0, held - r["kept"])
    out["copy_errors"] = out["lost"] + out["stale"]
    reached = r["rate"] >= 0.95 * rate
    out["sustained"] = reached and out["overruns"] == 0 and out["lost"] == 0 and out["stale"] == 0
    out["sustained_rate"] = r["rate"] if out["sustained"] else 0
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
    **{kind: (2, lambda s, lab, p, say, rate=rate: run_churn(s, lab, p, rate, say=say))
       for kind, rate in CHURN_RATES.items()},
    "relay": (2, lambda s, lab, p, say: run_relay(s, lab, p, say=say)),
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
    if kind == "relay":
        return describe_relay_run(r)
    if kind.startswith("churn"):
        return (f"{r['rate']:,}/s reached, CPU {r['cpu_pct_fw1']} + {r['cpu_pct_fw2']} % of a core, "
                f"{r['sync_packets_per_s']:,} packets/s on sync0, overruns {r['overruns']}, "
                f"lost {r['lost']}, stale {r['stale']}")
    return json.dumps(r)
