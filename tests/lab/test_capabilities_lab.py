"""meshd needs CAP_NET_ADMIN and CAP_NET_RAW, plus CAP_SETUID and CAP_SETGID to
start its hooks and scripts as [node] script_user and for its check engine to
drop to [health] check_user, CAP_KILL to kill that engine when it hangs, and
CAP_NET_BIND_SERVICE to bind a relay's listener below 1024 for the relay
engine, and nothing else (systemd/meshd.service).

Both lab firewalls run meshd under setpriv(1) the way the unit runs it: root,
the bounding set reduced to net_admin,net_raw,setuid,setgid,kill (so, as root,
exactly these are effective), no inheritable or ambient capability,
no_new_privs; its check engine child holds none. The
configuration uses every part of meshd that talks to the kernel: the
election (multicast on the group interfaces, rtnetlink addresses, AF_PACKET
gratuitous ARP), the state mesh (ctnetlink events with SO_RCVBUFFORCE, a
sync socket bound to its device, continuous commit into the peer's kernel)
and health checks (meshd's nftables table through libnftables, the NFLOG
reset watcher, an ICMP check). Control runs with one of the two dropped
show that the restriction is real and that each is needed: without
net_admin meshd becomes MASTER but cannot add its addresses, without
net_raw it cannot announce them.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
from meshlab import meshd_node as md
from meshlab.nsutil import EchoServer, ns_socket
from meshlab.topology import LAN_VIRTUAL, SERVER4, SRV_VIRTUAL, nsexec

pytestmark = pytest.mark.lab

CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW = 5, 6, 7, 10, 12, 13
UNIT_CAPABILITIES = ((1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW) | (1 << CAP_SETUID) | (1 << CAP_SETGID)
                     | (1 << CAP_KILL) | (1 << CAP_NET_BIND_SERVICE))
# setuid, setgid: scripts as script_user, the check engine as check_user; kill ends a hung engine.
DROP = ["setuid", "setgid", "kill", "net_bind_service"]
UNIT_SET = ["net_admin", "net_raw", *DROP]
FLOW_PORT = 7021
HEALTH_PORT = 8080
GROUPS = ("lan", "srv")

HEALTH = f"""
[health]
[[health.host]]
name = "server"
address = "{SERVER4}"

[[health.table]]
name = "servers"
hosts = ["server"]
port = {FLOW_PORT}
interval_ms = 300
rise = 1
check = {{ method = "icmp", timeout_ms = 500 }}

[[health.redirect]]
name = "web"
address = "{LAN_VIRTUAL[0].split("/")[0]}"
port = {HEALTH_PORT}
table = "servers"

[[health.relay]]
name = "tls"
address = "{LAN_VIRTUAL[0].split("/")[0]}"
port = 443
table = "servers"
"""


def setpriv(capabilities: list[str]) -> list[str]:
    bounding = ",".join(["-all"] + [f"+{c}" for c in capabilities])
    return ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--ambient-caps=-all",
            "--no-new-privs", "--"]


def start_restricted(lab, n: int, capabilities: list[str], **config) -> None:
    """Node n's meshd under setpriv; named like meshlab's, so wait_states sees it die."""
    path = md.write_config(lab.run_dir, n, **config)
    argv = setpriv(capabilities) + [sys.executable, "-m", "meshd", "--config", path, "--log-format", "json"]
    lab.procs.start(md.MESHD_LOG.format(n=n), lab.fw(n), argv, env=md.child_env(), cwd=md.REPO)


def process_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def log_records(lab, n: int) -> list[dict]:
    return [r for r, _ in md.find_log_event(lab.procs.get(md.MESHD_LOG.format(n=n)).log, lambda r, line: True)]


def problems(lab, n: int) -> list[dict]:
    """Warnings and errors, less the redirect's "down" before its first check (not a failure)."""
    return [r for r in log_records(lab, n) if r.get("level") in ("warning", "error")
            and not (r.get("event") == "health_redirect" and "not checked yet" in str(r.get("reason")))]


def wait_for(what: str, predicate, timeout: float, lab) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{lab.logs(30)}")
        time.sleep(0.1)


def run_in(ns: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(nsexec(ns, *argv), check=False, capture_output=True, text=True, timeout=30)


def kernel_flows(ns: str) -> str:
    return run_in(ns, "conntrack", "-L", "-p", "tcp", "--dport", str(FLOW_PORT)).stdout


def test_meshd_runs_whole_with_only_the_units_capabilities(meshd_ready, lab):
    sync = md.sync_section()
    for n in (1, 2):
        start_restricted(lab, n, UNIT_SET, sync=sync, extra_toml=HEALTH)
    md.wait_in_sync(lab.run_dir, (1, 2), timeout=20, procs=lab.procs)
    lab.wait_states({1: "MASTER", 2: "BACKUP"}, GROUPS, timeout=15)

    for n in (1, 2):
        status = process_status(lab.procs.get(md.MESHD_LOG.format(n=n)).pid)
        assert int(status["CapEff"], 16) == UNIT_CAPABILITIES, status["CapEff"]
        assert int(status["CapBnd"], 16) == UNIT_CAPABILITIES, status["CapBnd"]
        assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"
        engines = [r for r in log_records(lab, n) if r.get("event") == "check_engine_up"]
        assert engines, f"fw{n}: no check engine came up"
        engine = process_status(engines[-1]["pid"])
        assert int(engine["CapEff"], 16) == 0 and int(engine["CapPrm"], 16) == 0
        assert engine["Uid"].split()[0] != "0" and engine["NoNewPrivs"].strip() == "1"
        # The relay's port 443 was bound by the daemon (net_bind_service) for the relay engine.
        wait_for(f"fw{n}'s relay engine", lambda: (md.status(lab.run_dir, n).get("relay_engine") or {}).get("up"),
                 10, lab)
        relay = md.status(lab.run_dir, n)["relay_engine"]
        assert relay["not_listening"] == {} and relay["uid"] != 0, relay
        assert int(process_status(relay["pid"])["CapEff"], 16) == 0

    # The election: fw1 holds every virtual address, fw2 none; meshctl answers.
    for address in LAN_VIRTUAL + SRV_VIRTUAL:
        assert lab.topo.holders(address) == [lab.fw(1)], address
    result = md.meshctl(lab.run_dir, 1, "status")
    assert result.returncode == 0, result.stderr
    assert "lan" in result.stdout and "MASTER" in result.stdout
    assert any(r.get("event") == "addresses_added" for r in log_records(lab, 1))

    # Health: meshd's nftables table is in fw1's kernel and the ICMP check sees the server.
    table = run_in(lab.fw(1), "nft", "list", "table", "inet", "meshd")
    assert table.returncode == 0 and "slots_web" in table.stdout, table.stderr
    wait_for("the ICMP check to find the server up",
             lambda: '"up"' in md.meshctl(lab.run_dir, 1, "show", "hosts", "--json").stdout, 10, lab)

    # The state mesh: a flow through fw1 reaches fw2's cache and fw2's kernel.
    with EchoServer(lab.server, SERVER4, FLOW_PORT):
        flow = ns_socket(lab.client, socket.AF_INET, socket.SOCK_STREAM)
        try:
            flow.settimeout(3)
            flow.connect((SERVER4, FLOW_PORT))
            wait_for("fw2 to hold the replicated flow in its kernel",
                     lambda: SERVER4 in kernel_flows(lab.fw(2)), 10, lab)
        finally:
            flow.close()

    # The stop path too: bow-out, addresses and the nftables table removed, exit 0.
    assert lab.procs.kill(md.MESHD_LOG.format(n=1), signal.SIGTERM, wait=15) == 0
    lab.wait_states({2: "MASTER"}, GROUPS, timeout=10)
    assert lab.topo.addresses(lab.fw(1)).get("lan0", []) == ["192.0.2.2/24", "2001:db8:1::2/64"]
    table = run_in(lab.fw(1), "nft", "list", "table", "inet", "meshd")
    assert table.returncode != 0, "fw1's meshd left its nftables table behind"
    assert any(r.get("event") == "stopped" for r in log_records(lab, 1))

    # Nothing on the way asked for more: SO_RCVBUFFORCE did not fall back, no
    # announcement, address or table operation failed.
    for n in (1, 2):
        assert problems(lab, n) == [], f"fw{n} logged problems under the unit's capabilities"


@pytest.mark.parametrize("kept, event", [
    ("net_raw", "address_error"),        # no CAP_NET_ADMIN: rtnetlink refuses the addresses
    ("net_admin", "announce_failed"),    # no CAP_NET_RAW: no AF_PACKET socket for gratuitous ARP
])
def test_each_of_the_two_capabilities_is_needed(meshd_ready, lab, kept, event):
    start_restricted(lab, 1, [kept, *DROP])
    lab.wait_states({1: "MASTER"}, GROUPS, timeout=15)
    wait_for(f"{event} in the log", lambda: any(r.get("event") == event for r in log_records(lab, 1)), 5, lab)
    errors = [r for r in log_records(lab, 1) if r.get("event") == event]
    assert any("not permitted" in str(r.get("error")) for r in errors), errors
    held = [a for a in LAN_VIRTUAL + SRV_VIRTUAL if lab.topo.holders(a)]
    assert held == ([] if kept == "net_raw" else list(LAN_VIRTUAL + SRV_VIRTUAL))
