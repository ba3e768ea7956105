"""Measurements on /proc and inside the lab's namespaces, for the runs.

Owns: the CPU time and resident memory of daemon processes (`cpu_snapshot`, `cpu_delta`,
`rss_bytes`), the size of a firewall's conntrack table (`kernel_count`), what crossed
the sync link (`link_counters`) and the kernel's event-socket drops (`netlink_drops`), a sysctl
(`read_sysctl`), waiting until caches hold what was injected (`wait_replicated`), flow
sockets in TCP retransmission (`stalled_sockets`, `wait_flows_settled`), and who holds
the virtual addresses and why flows cannot pass (`virtual_holders`, `gateway_diagnosis`).

Must not: start, signal or stop a process, or change the lab or a firewall: it only
reads, and waits.  What a run loads, kills and records is `runs`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass

from .. import scenarios as sc
from ..topology import (
    LAN_VIRTUAL,
    SRV_VIRTUAL,
    VIRTUAL_ADDRESSES,
    Lab,
    LabError,
    nsexec,
)

# ---------------------------------------------------------------------- processes and tables


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
    p = subprocess.run(nsexec(lab.fw(n), "conntrack", "-C"), capture_output=True, text=True, timeout=30,
                       check=False)
    try:
        return int(p.stdout.strip())
    except ValueError:
        raise LabError(f"conntrack -C in {lab.fw(n)} printed {p.stdout.strip()!r} "
                       f"(exit {p.returncode}: {p.stderr.strip()})") from None


def link_counters(lab: Lab, n: int, dev: str = "sync0") -> dict[str, int]:
    """{"tx_packets", "tx_bytes", "rx_packets", "rx_bytes"} of fw n's `dev`: what went over
    the sync link, whichever system sent it."""
    p = subprocess.run(nsexec(lab.fw(n), "ip", "-s", "-j", "link", "show", dev), capture_output=True,
                       text=True, timeout=10, check=False)
    try:
        stats = json.loads(p.stdout)[0]["stats64"]
        return {"tx_packets": stats["tx"]["packets"], "tx_bytes": stats["tx"]["bytes"],
                "rx_packets": stats["rx"]["packets"], "rx_bytes": stats["rx"]["bytes"]}
    except (ValueError, KeyError, IndexError):
        raise LabError(f"ip -s -j link show {dev} in {lab.fw(n)}: {p.stdout.strip()[:200]!r} "
                       f"(exit {p.returncode}: {p.stderr.strip()})") from None


def netlink_drops(lab: Lab, n: int) -> int:
    """Messages the kernel dropped on fw n's ctnetlink sockets (ENOBUFS: an event socket
    overrun), summed from /proc/net/netlink in its namespace: the same count for every
    system, whatever it logs."""
    p = subprocess.run(nsexec(lab.fw(n), "cat", "/proc/net/netlink"), capture_output=True, text=True,
                       timeout=10, check=False)
    drops = 0
    for line in p.stdout.splitlines()[1:]:
        fields = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; NETLINK_NETFILTER is 12
        if len(fields) >= 10 and fields[1] == "12":
            drops += int(fields[8])
    return drops


def read_sysctl(ns: str | None, name: str) -> str:
    """The value of sysctl `name` ("net.netfilter.nf_conntrack_max") in namespace ns (None: this one)."""
    path = "/proc/sys/" + name.replace(".", "/")
    if ns is None:
        with open(path) as f:
            return f.read().strip()
    p = subprocess.run(nsexec(ns, "cat", path), capture_output=True, text=True, timeout=10, check=False)
    return p.stdout.strip()


@dataclass
class Waited:
    """What wait_replicated saw: whether every cache got there, when it stopped, the last counts."""

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
        for n, wanted in want.items():
            if seen[n] >= wanted:
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
                           capture_output=True, text=True, timeout=10, check=False)
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


# ---------------------------------------------------------------------- the virtual addresses


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
