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
from .watch import JsonLines as BaseJsonLines
from .watch import start_watch


class _Session:
    """Lab + processes + run dir, torn down together."""

    def __init__(self, prefix: str, lab: Lab | None, nodes: int, run_dir: str | None,
                 fresh: bool = False, procs: Procs | None = None):
        self.brought_up = False
        if lab is None:
            lab = None if fresh else Lab.detect(prefix)
            if lab is None or lab.nodes < nodes:
                lab = Lab(prefix, nodes)
        self.lab = lab
        if procs is not None:             # a caller's (a test fixture's): its run dir and logs
            run_dir = procs.run_dir
        self.own_run_dir = run_dir is None
        self.run_dir = run_dir or tempfile.mkdtemp(prefix=f"mlab-{lab.prefix}")
        self.procs = procs if procs is not None else Procs(self.run_dir, env=md.child_env())
        self.up_seconds = None
        self.flush_conntrack = False      # state-mesh scenarios: leave no injected entries behind

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
                    if self.flush_conntrack:
                        flush_conntrack(self.lab, n)
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


# ====================================================================== the state mesh
#
# `survival`: live TCP flows through fw1, fw1 killed, do they go on through fw2?
# `sync_loss`: entries injected into fw1 while the sync link loses packets; how
# long until fw2 holds all of them?  The helpers below are shared with
# tests/lab/test_state_mesh_lab.py.

FLOW_PORT = 7010
LOSS_TABLE = "meshlab_loss"


class JsonLines(BaseJsonLines):
    """JSON lines of a lab process, waited for by event name."""

    def wait_for(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next(max(0.0, deadline - time.monotonic()))
            if ev is None:
                state = "running" if self.proc.alive() else f"exited {self.proc.popen.returncode}"
                raise LabError(f"{self.proc.name} in {self.proc.ns} ({state}) gave no {event!r} line "
                               f"within {timeout:g} s\n{self.proc.log_tail()}")
            if ev.get("event") == event:
                return ev
            if ev.get("event") == "error":
                raise LabError(f"{self.proc.name} in {self.proc.ns}: {ev.get('error')}\n{self.proc.log_tail()}")


def mesh_groups(advbase_ms: int = 100) -> tuple[list[dict[str, Any]], list[str]]:
    groups = md.default_groups(advbase_ms)
    return groups, [g["name"] for g in groups]


def start_mesh(procs: Procs, lab: Lab, nodes=(1, 2), advbase_ms: int = 100, sync: bool = True,
               sync_options: dict[str, Any] | None = None) -> list[str]:
    """meshd on each node, the edge groups, and (sync) a [sync] section with unicast peers
    on the sync link.  Returns the group names."""
    groups, names = mesh_groups(advbase_ms)
    all_nodes = tuple(range(1, lab.nodes + 1))
    for n in nodes:
        table = md.sync_section(all_nodes, **(sync_options or {})) if sync else None
        md.start_meshd(procs, lab, n, groups, advbase_ms, sync=table)
    return names


def wait_mesh(procs: Procs, nodes, names: list[str], sync: bool = True, timeout: float = 15.0) -> None:
    """Node 1 MASTER, the others BACKUP, and (sync) every state mesh in sync."""
    md.wait_states(procs.run_dir, {n: ("MASTER" if n == 1 else "BACKUP") for n in nodes}, names,
                   timeout=timeout, procs=procs)
    if sync:
        md.wait_in_sync(procs.run_dir, nodes, timeout=timeout, procs=procs)


def run_preload(procs: Procs, lab: Lab, n: int, count: int, net: int = 1, rate: float = 0,
                batch: int = 2000, first: int = 0, timeout: float | None = None,
                wait: bool = True, name: str | None = None):
    """`python3 -m meshlab.preload` in fw n: its result dict (wait) or its JsonLines (not wait)."""
    argv = [sys.executable, "-m", "meshlab.preload", str(count), "--net", str(net), "--batch", str(batch),
            "--first", str(first)]
    if rate:
        argv += ["--rate", str(rate)]
    proc = procs.start(name or f"preload-fw{n}-{net}", lab.fw(n), argv, env=md.child_env(),
                       cwd=md.REPO, stdout_pipe=True)
    lines = JsonLines(proc)
    if not wait:
        return lines
    if timeout is None:
        timeout = 60 + (count / rate if rate else count / 20000)
    result = lines.wait_for("done", timeout)
    procs.wait(proc.name, 10)
    if result.get("failed"):
        raise LabError(f"preload into fw{n}: {result['failed']} entries failed: {result.get('errors')}")
    return result


def wait_caught_up(run_dir: str, origin: int, replicas, timeout: float, want: int = 0,
                   poll: float = 0.1) -> dict[str, Any]:
    """Until every replica's external cache of `origin` holds at least `want` entries and at
    least as many as origin's internal cache has now.

    (The internal cache may hold a few entries besides the ones a scenario made, e.g. the
    peers' election adverts: counting against it keeps those from passing for missing ones.)
    Returns {"reached", "at" (monotonic), "seconds", "want", "origin_internal", "seen": {node: count}}.
    """
    t0 = time.monotonic()
    seen: dict[int, int] = {}
    internal = -1
    while True:
        # (a stats answer costs the daemon a walk over its caches: ask the origin only
        # once the replicas look complete)
        seen = {n: md.external_count(md.sync_stats(run_dir, n), origin) for n in replicas}
        if all(c >= want for c in seen.values()):
            internal = md.internal_count(md.sync_stats(run_dir, origin))
        now = time.monotonic()
        if internal >= 0 and all(c >= max(want, internal) for c in seen.values()):
            return {"reached": True, "at": now, "seconds": now - t0, "want": want,
                    "origin_internal": internal, "seen": seen}
        if now - t0 >= timeout:
            return {"reached": False, "at": now, "seconds": now - t0, "want": want,
                    "origin_internal": internal, "seen": seen}
        time.sleep(poll)


def add_loss(lab: Lab, n: int, percent: int, port: int = md.SYNC_PORT) -> None:
    """Drop `percent` % of the state-mesh datagrams arriving on fw n's sync0 (a table of its own);
    100: all of them (a link that is lost in one direction)."""
    sample = "" if percent >= 100 else f"numgen random mod 100 < {int(percent)} "
    rules = (f"table inet {LOSS_TABLE} {{\n"
             f"  chain input {{\n"
             f"    type filter hook input priority -10; policy accept;\n"
             f"    iifname \"sync0\" udp dport {port} {sample}counter drop\n"
             f"  }}\n}}\n")
    remove_loss(lab, n)
    p = subprocess.run(nsexec(lab.fw(n), "nft", "-f", "-"), input=rules, capture_output=True, text=True)
    if p.returncode != 0:
        raise LabError(f"cannot add the loss rule in {lab.fw(n)}: {p.stderr.strip()}")


def remove_loss(lab: Lab, n: int) -> None:
    subprocess.run(nsexec(lab.fw(n), "nft", "delete", "table", "inet", LOSS_TABLE), capture_output=True)


def loss_dropped(lab: Lab, n: int) -> int | None:
    """Packets the loss rule of fw n dropped so far."""
    p = subprocess.run(nsexec(lab.fw(n), "nft", "-j", "list", "table", "inet", LOSS_TABLE),
                       capture_output=True, text=True)
    try:
        for item in json.loads(p.stdout)["nftables"]:
            for e in (item.get("rule") or {}).get("expr", []):
                if "counter" in e:
                    return int(e["counter"]["packets"])
    except (ValueError, KeyError):
        pass
    return None


def flush_conntrack(lab: Lab, n: int) -> None:
    subprocess.run(nsexec(lab.fw(n), "conntrack", "-F"), capture_output=True)


def cpu_seconds(pid: int) -> float | None:
    """CPU time of a live process, in seconds.

    utime + stime count in clock ticks (10 ms), which a C daemon replicating
    a few thousand entries can stay under: for a process of one thread, its
    scheduler run time (/proc/PID/schedstat, nanoseconds) instead.  With more
    threads, utime + stime, which also hold the threads that have ended.
    """
    import os
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if int(fields[17]) == 1:                      # num_threads
            with open(f"/proc/{pid}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def daemons_cpu(procs: Procs, nodes) -> float:
    total = 0.0
    for n in nodes:
        c = cpu_seconds(procs.get(md.MESHD_LOG.format(n=n)).pid)
        total += c or 0.0
    return total


class FlowRun:
    """The flows server (server namespace) and client (client namespace) of meshlab.flows."""

    def __init__(self, procs: Procs, lab: Lab, flows: int, port: int = FLOW_PORT, interval_ms: float = 10.0,
                 host: str = SERVER4, name: str = "flows"):
        self.procs = procs
        self.name = name
        srv = procs.start(f"{name}-server", lab.server,
                          [sys.executable, "-m", "meshlab.flows", "server", "--port", str(port)],
                          env=md.child_env(), cwd=md.REPO, stdout_pipe=True)
        JsonLines(srv).wait_for("ready", 10)
        cli = procs.start(f"{name}-client", lab.client,
                          [sys.executable, "-m", "meshlab.flows", "client", host, "--port", str(port),
                           "--flows", str(flows), "--interval-ms", str(interval_ms)],
                          env=md.child_env(), cwd=md.REPO, stdout_pipe=True)
        self.client = JsonLines(cli)
        self.ready = self.client.wait_for("ready", 20)

    def stop(self) -> dict:
        """Stop the client: its result ({"event": "result", "time", "flows": [...]})."""
        self.procs.send_signal(f"{self.name}-client", signal.SIGTERM)
        result = self.client.wait_for("result", 10)
        self.procs.kill(f"{self.name}-client", signal.SIGTERM, wait=5)
        self.procs.kill(f"{self.name}-server", signal.SIGTERM, wait=5)
        return result


def _log_records(procs: Procs, n: int, event: str) -> list[dict]:
    return md.log_events(procs.get(md.MESHD_LOG.format(n=n)).log, event)


def survival(json_out: bool = False, prefix: str = "mesh-", lab: Lab | None = None, run_dir: str | None = None,
             flows: int = 100, preload: int = 0, sync: bool = True, nodes: int = 2, advbase_ms: int = 100,
             after_s: float = 5.0, commit: str = "continuous", out: TextIO | None = sys.stdout,
             procs: Procs | None = None, replicate_timeout: float = 120.0) -> dict[str, Any]:
    """Live TCP flows through fw1; fw1 dies (SIGKILL + links down); how many go on through fw2?

    Returns {"flows", "survived", "median_gap_ms", "max_gap_ms", "preloaded", "takeover_ms",
    "sync", ...}.  Without sync the flows must die: fw2's ruleset drops the non-SYN
    packets of flows its conntrack does not know (nf_conntrack_tcp_loose = 0).
    """
    text = None if json_out else out
    _require_meshd()
    result: dict[str, Any] = {"scenario": "survival", "sync": sync, "nodes": nodes, "advbase_ms": advbase_ms,
                              "preloaded": preload}
    if sync:
        result["commit"] = commit
    node_list = tuple(range(1, nodes + 1))
    with _Session(prefix, lab, nodes, run_dir, procs=procs) as s:
        s.up()
        lab = s.lab
        if s.up_seconds is not None:
            result["lab_up_s"] = round(s.up_seconds, 3)
            _say(text, f"Lab {lab.prefix}* is up ({s.up_seconds:.2f} s).")
        s.flush_conntrack = True
        if not s.brought_up:
            for n in range(1, lab.nodes + 1):
                flush_conntrack(lab, n)
        names = start_mesh(s.procs, lab, node_list, advbase_ms, sync, {"commit": commit})
        _say(text, f"meshd on {', '.join(f'fw{n}' for n in node_list)} (adverts every {advbase_ms} ms, "
                   + ("[sync] on the sync link" if sync else "no [sync]: no replication") + ").")
        wait_mesh(s.procs, node_list, names, sync)
        _say(text, "fw1 is MASTER" + (" and the state mesh is in sync." if sync else "."))
        replicas = node_list[1:]
        if preload:
            r = run_preload(s.procs, lab, 1, preload)
            result["preload_s"] = round(r["seconds"], 3)
            _say(text, f"Injected {preload} entries into fw1's conntrack table in {r['seconds']:.2f} s.")
            if sync:
                w = wait_caught_up(s.run_dir, 1, replicas, replicate_timeout, want=preload)
                result["replicated_s"] = round(w["at"] - r["t_end"], 3)
                if not w["reached"]:
                    raise LabError(f"replication of {preload} entries incomplete after "
                                   f"{replicate_timeout:g} s: {w['seen']}\n{s.procs.logs(25)}")
                _say(text, f"fw2 holds them all {result['replicated_s']:.2f} s after the injection ended.")
        fr = FlowRun(s.procs, lab, flows)
        _say(text, f"{flows} TCP flows client -> {SERVER4}:{FLOW_PORT}, a message every 10 ms each.")
        if sync:
            w = wait_caught_up(s.run_dir, 1, replicas, 30.0, want=preload + flows)
            if not w["reached"]:
                raise LabError(f"the flows were not replicated within 30 s: {w}\n{s.procs.logs(25)}")
        time.sleep(0.5)             # steady state (and the last TCP state updates replicated)
        watch = start_watch(s.procs, lab.fw(2), VIRTUAL_ADDRESSES, name="watch-fw2", timeout=30)
        t_kill = s.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGKILL)
        lab.fw_links(1, up=False)
        _say(text, "Killed fw1's meshd (SIGKILL) and set its links down.")
        ev = watch.wait_result(timeout=30)
        if ev.get("event") == "present":
            result["takeover_ms"] = round((ev["time"] - t_kill) * 1000, 1)
            _say(text, f"fw2 held every virtual address {result['takeover_ms']:.0f} ms after the kill.")
        else:
            result["takeover_ms"] = None
            _say(text, f"fw2 did not take over within 30 s ({ev}).")
        time.sleep(max(0.0, t_kill + after_s - time.monotonic()))
        res = fr.stop()
        from .flows import summarize
        result.update(summarize(res, t_fail=t_kill))
        commits = [r for r in _log_records(s.procs, 2, "takeover_commit") if r.get("committed")]
        if commits:
            result["takeover_committed"] = sum(int(r.get("committed") or 0) for r in commits)
            result["takeover_commit_ms"] = round(sum(float(r.get("ms") or 0) for r in commits), 1)
        _say(text, f"{result['survived']}/{flows} flows survived; gap median {result['median_gap_ms']} ms, "
                   f"max {result['max_gap_ms']} ms.")
    if json_out and out is not None:
        out.write(json.dumps(result) + "\n")
        out.flush()
    return result


def sync_loss(json_out: bool = False, prefix: str = "mesh-", lab: Lab | None = None, run_dir: str | None = None,
              loss: int = 20, entries: int = 50000, rate: float = 25000, both: bool = True,
              give_up_s: float = 120.0, batch: int = 500, out: TextIO | None = sys.stdout,
              procs: Procs | None = None, sync_options: dict[str, Any] | None = None,
              verify: bool = True) -> dict[str, Any]:
    """Inject `entries` into fw1 at `rate`/s while the sync link drops `loss` % of the datagrams
    (on fw2's sync0 input, and fw1's too with `both`); time until fw2's external cache of
    node 1 holds them all (give up after give_up_s).

    Returns {"entries", "replicated", "converge_s", "loss", ...}; converge_s is None if
    replication did not complete.  With verify, "replicated_injected" counts the injected
    flows in a dump of fw2's copy (the cache may hold a few other entries of fw1's).
    """
    text = None if json_out else out
    _require_meshd()
    result: dict[str, Any] = {"scenario": "sync-loss", "entries": entries, "loss": loss,
                              "loss_on": "fw1+fw2" if both else "fw2"}
    lossy = (1, 2) if both else (2,)
    with _Session(prefix, lab, 2, run_dir, procs=procs) as s:
        s.up()
        lab = s.lab
        s.flush_conntrack = True
        try:
            if not s.brought_up:
                for n in (1, 2):
                    flush_conntrack(lab, n)
            names = start_mesh(s.procs, lab, (1, 2), sync_options=sync_options)
            wait_mesh(s.procs, (1, 2), names)
            for n in lossy:
                add_loss(lab, n, loss)
            _say(text, f"{loss}% random loss on the sync input of {result['loss_on']}; injecting {entries} "
                       f"entries into fw1 at {rate:g}/s.")
            cpu0 = daemons_cpu(s.procs, (1, 2))
            r = run_preload(s.procs, lab, 1, entries, rate=rate, batch=batch)
            result["injection_s"] = round(r["seconds"], 3)
            result["injection_rate"] = r["rate"]
            w = wait_caught_up(s.run_dir, 1, (2,), give_up_s, want=entries)
            result["replicated"] = w["seen"].get(2)
            result["converge_s"] = round(max(0.0, w["at"] - r["t_end"]), 3) if w["reached"] else None
            result["daemons_cpu_s"] = round(daemons_cpu(s.procs, (1, 2)) - cpu0, 2)
            result["dropped_by_loss_rule"] = {f"fw{n}": loss_dropped(lab, n) for n in lossy}
            if verify:
                # Count the injected flows themselves in fw2's copy (not just the cache size).
                from .preload import PER_SOURCE, client_address
                clients = {client_address(1, i) for i in range(0, entries, PER_SOURCE)}
                result["replicated_injected"] = sum(
                    1 for a in md.control_stream(s.run_dir, 2, {"cmd": "dump", "cache": "external", "peer": 1})
                    if (a.get("entry", {}).get("orig") or {}).get("src") in clients)
            st1 = md.sync_stats(s.run_dir, 1)
            result["fw1_internal"] = md.internal_count(st1)
            c1 = (st1.get("sync") or {}).get("counters") or {}
            result["fw1_records_resent"] = c1.get("records sent resend")
            result["fw1_bulks"] = (st1.get("sync") or {}).get("bulk_resyncs_started")
            if w["reached"]:
                _say(text, f"fw2 held all {entries} entries {result['converge_s']:.2f} s after the injection "
                           f"ended ({result['injection_s']:.2f} s of injection).")
            else:
                _say(text, f"gave up after {give_up_s:g} s: fw2 holds {result['replicated']} of {entries}.")
        finally:
            for n in lossy:
                remove_loss(lab, n)
    if json_out and out is not None:
        out.write(json.dumps(result) + "\n")
        out.flush()
    return result


def tree_cpu(pids) -> float:
    """CPU seconds of processes and everything below them (meshd's engines too)."""
    from .reference import descendants
    return sum(cpu_seconds(p) or 0.0 for p in descendants(list(pids)))


def run_churn(procs: Procs, lab: Lab, n: int, rate: float, seconds: float, lifetime_s: float = 2.0,
              net: int = 3, batch: int = 250, keep_every: int = 0, parts: int = 1,
              name: str | None = None) -> dict[str, Any]:
    """`python3 -m meshlab.churn` in fw n until it ends, split over `parts` processes (each
    rate / parts, its own client net from `net` on: one process of Python reaches about
    15k ctnetlink requests/s, and churn is two per flow); the results summed."""
    lines = []
    for k in range(parts):
        argv = [sys.executable, "-m", "meshlab.churn", "--rate", str(rate / parts), "--seconds", str(seconds),
                "--lifetime-ms", str(lifetime_s * 1000), "--net", str(net + k), "--batch", str(batch),
                "--keep-every", str(keep_every)]
        proc = procs.start(f"{name or f'churn-fw{n}'}-{k}", lab.fw(n), argv, env=md.child_env(), cwd=md.REPO,
                           stdout_pipe=True)
        lines.append((proc, JsonLines(proc)))
    results = []
    for proc, out in lines:
        results.append(out.wait_for("done", seconds + lifetime_s + 60))
        procs.wait(proc.name, 10)
    total = {k: sum(r[k] for r in results) for k in ("created", "deleted", "kept", "failed")}
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {**total, "errors": errors, "rate_asked": rate, "parts": parts,
            "rate": sum(r["rate"] or 0 for r in results),
            "late_max_s": max(r["late_max_s"] for r in results),
            "t_start": min(r["t_start"] for r in results), "t_end": max(r["t_end"] for r in results)}


def churn_cost(procs: Procs, lab: Lab, rate: float, seconds: float = 15.0, lifetime_s: float = 2.0,
               settle_s: float = 3.0, net: int = 3) -> dict[str, Any]:
    """A churn of short flows on fw1 (fw1 and fw2 meshd running): what replicating it cost.

    CPU of both daemons (and their engines) per second of churn, as % of one core; frames
    and bytes fw1 sent on the sync link per second; overruns; and whether fw2's copy of
    fw1's flows matched fw1's own table once the churn had ended and `settle_s` passed.
    """
    pids = {k: procs.get(md.MESHD_LOG.format(n=k)).pid for k in (1, 2)}
    before = md.sync_stats(procs.run_dir, 1)
    cpu0 = {k: tree_cpu([p]) for k, p in pids.items()}
    t0 = time.monotonic()
    r = run_churn(procs, lab, 1, rate, seconds, lifetime_s, net)
    time.sleep(settle_s)
    elapsed = time.monotonic() - t0
    cpu = {k: tree_cpu([p]) - cpu0[k] for k, p in pids.items()}
    after = md.sync_stats(procs.run_dir, 1)
    sent0, sent1 = ((s.get("sync") or {}).get("frames_sent") or {} for s in (before, after))
    c0, c1 = ((s.get("sync") or {}).get("counters") or {} for s in (before, after))
    k0, k1 = (s.get("kernel") or {} for s in (before, after))
    frames = sum(sent1.values()) - sum(sent0.values())
    w = wait_caught_up(procs.run_dir, 1, (2,), 10)
    return {"rate_asked": rate, "rate": r["rate"], "late_max_s": r["late_max_s"],
            "created": r["created"], "failed": r["failed"], "seconds": seconds, "elapsed_s": round(elapsed, 2),
            "cpu_pct": {f"fw{k}": round(100 * v / elapsed, 1) for k, v in cpu.items()},
            "cpu_pct_both": round(100 * sum(cpu.values()) / elapsed, 1),
            "frames_per_s": round(frames / elapsed), "data_frames_per_s":
                round(((sent1.get("DATA", 0)) - (sent0.get("DATA", 0))) / elapsed),
            "bytes_per_s": round((c1.get("bytes sent", 0) - c0.get("bytes sent", 0)) / elapsed),
            "records_live": c1.get("records sent live", 0) - c0.get("records sent live", 0),
            "overruns": k1.get("overruns", 0) - k0.get("overruns", 0),
            "young": after.get("young"),
            "matched": bool(w["reached"]) and w["seen"].get(2) == w["origin_internal"],
            "peer_copy": w["seen"].get(2), "origin_internal": w["origin_internal"]}
