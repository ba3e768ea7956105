"""FTP through a failover: the helper's expectation and the control connection's helper replicated.

A real FTP server (pyftpdlib, tests/lab/ftp_server.py) in the server
namespace, Python's ftplib in the client, and both firewalls with the `ftp`
conntrack helper (nftables `ct helper`), `snat to` the virtual address
`fully-random` towards the server, and a forward policy that accepts only
`ct state established,related` and new control connections to port 21: a
data connection that no expectation announced is dropped.

Control connection A asks PASV on fw1 (fw1's helper creates the
expectation), fw1 fails over (its daemon stopped), and A's data connection
then goes through fw2: it must work with expectations replicated, and must
fail without (`[sync.filter] expectations = false`), which is what makes
this test able to fail. Control connection B, logged in before the
failover, sends PASV as its very first command after it: fw2's helper on
the committed control connection (CTA_HELP, with its sequence tracking
picked up) must create the expectation itself, whatever the setting.

Root only (tests/lab/conftest.py skips otherwise).
"""

from __future__ import annotations

import ftplib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshlab import meshd_node as md
from meshlab import scenarios as sc
from meshlab.nsutil import in_netns
from meshlab.topology import SERVER4, SRV_VIRTUAL

from meshd.kernel import conntrack as kct
from meshd.kernel import ctnetlink as ct

pytestmark = pytest.mark.lab

FTP_SERVER = str(Path(__file__).with_name("ftp_server.py"))
VIRTUAL = SRV_VIRTUAL[0].split("/")[0]           # 198.51.100.1: what the server sees
FILE = "data.bin"
DATA_TIMEOUT = 2.0                               # s: a dropped SYN is retried after 1 s

RULES = f"""\
flush ruleset
table inet lab {{
    ct helper ftp-std {{ type "ftp" protocol tcp; }}
    chain pre {{
        type filter hook prerouting priority filter; policy accept;
        iifname "lan0" tcp dport 21 ct helper set "ftp-std"
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        meta l4proto {{ icmp, ipv6-icmp }} accept
        iifname "lan0" oifname "srv0" tcp dport 21 tcp flags & (syn|ack) == syn ct state new accept
        counter
    }}
}}
table ip labnat {{
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "srv0" ip saddr 192.0.2.0/24 snat to {VIRTUAL} fully-random
    }}
}}
"""


def _load_rules(lab) -> None:
    for n in (1, 2):
        subprocess.run(lab.topo.exec_argv(lab.fw(n), "nft", "-f", "-"), input=RULES, text=True,
                       check=True, capture_output=True, timeout=30)


def _start_server(lab, root: str) -> None:
    proc = lab.procs.start("ftpd", lab.server, [sys.executable, FTP_SERVER, SERVER4, root],
                           env=md.child_env(), cwd=md.REPO, stdout_pipe=True)
    line = proc.popen.stdout.readline().decode().strip()
    assert line == "ready", f"the FTP server did not start: {line!r}\n{lab.logs(20)}"


def _login() -> ftplib.FTP:
    f = ftplib.FTP()
    f.connect(SERVER4, 21, timeout=5)
    f.login()
    f.voidcmd("TYPE I")
    return f


def _pasv(f: ftplib.FTP) -> tuple[str, int]:
    return ftplib.parse227(f.sendcmd("PASV"))


def _retr(f: ftplib.FTP, host: str, port: int) -> bytes:
    """The data connection to an announced passive port, then RETR on it."""
    data = socket.create_connection((host, port), timeout=DATA_TIMEOUT)
    try:
        resp = f.sendcmd(f"RETR {FILE}")
        assert resp.startswith("1"), resp
        data.settimeout(5)
        chunks = []
        while chunk := data.recv(1 << 16):
            chunks.append(chunk)
    finally:
        data.close()
    f.voidresp()
    return b"".join(chunks)


def _expectations(lab, n: int) -> list[dict]:
    return [ct.parse_expect(e.attrs) for e in in_netns(lab.fw(n), kct.dump_expectations)]


def _control_entry(lab, n: int, sport: int) -> dict | None:
    for e in in_netns(lab.fw(n), kct.dump_table):
        p = ct.parse_entry(e.attrs)
        if p["orig"].get("dport") == 21 and p["orig"].get("sport") == sport:
            return p
    return None


def _external(lab, n: int) -> list[dict]:
    """fw n's external cache as `meshctl dump external` streams it."""
    return [a["entry"] for a in md.control_stream(lab.run_dir, n, {"cmd": "dump", "cache": "external"})]


def _wait(what: str, fn, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout:g} s")
        time.sleep(0.05)


@pytest.mark.parametrize("expectations,commit", [(True, "continuous"), (True, "takeover"), (False, "continuous")],
                         ids=["replicated", "replicated_takeover_commit", "not_replicated"])
def test_ftp_data_connection_announced_before_the_failover(meshd_ready, lab, tmp_path, expectations, commit):
    t0 = time.monotonic()
    root = tmp_path / "ftp"
    root.mkdir()
    payload = os.urandom(256 * 1024)
    (root / FILE).write_bytes(payload)
    os.chmod(tmp_path, 0o755)
    _load_rules(lab)
    _start_server(lab, str(root))
    names = sc.start_mesh(lab.procs, lab.topo, (1, 2),
                          sync_options={"commit": commit, "filter": {"expectations": expectations}})
    sc.wait_mesh(lab.procs, (1, 2), names)

    a = in_netns(lab.client, _login)
    b = in_netns(lab.client, _login)
    try:
        host, port = _pasv(a)                            # fw1's helper expects the data connection
        mine = lambda e: e["tuple"]["dport"] == port and e["master"]["dport"] == 21
        assert [e for e in _expectations(lab, 1) if mine(e)], "fw1's helper created no expectation"
        a_port, b_port = a.sock.getsockname()[1], b.sock.getsockname()[1]
        held = _wait("fw2's external cache lacks the control connections", lambda: (lambda x: x if all(
            any(e.get("orig", {}).get("sport") == p for e in x) for p in (a_port, b_port)) else None)(_external(lab, 2)))
        if expectations:              # `meshctl dump` shows it, decoded
            replicated = _wait("fw2's external cache lacks the expectation",
                               lambda: [e for e in _external(lab, 2) if e.get("expectation") and mine(e)])
            assert replicated[0]["helper"] == "ftp" and replicated[0]["nat"]["dir"] == "orig", replicated
        else:
            time.sleep(0.5)                             # it would have arrived by now
            assert not [e for e in _external(lab, 2) + held if e.get("expectation")]
        if commit == "continuous":    # the peer's flows reach fw2's kernel as they come
            for sport in (a_port, b_port):
                entry = _wait("the control connection is not in fw2's kernel",
                              lambda: _control_entry(lab, 2, sport))
                assert entry["helper"]["name"] == "ftp", entry          # CTA_HELP committed with it
                assert entry["reply"]["dst"] == VIRTUAL, entry          # and its SNAT
            in_kernel = _wait("the expectation is not in fw2's kernel",
                              lambda: [e for e in _expectations(lab, 2) if mine(e)]) if expectations else []
            assert not expectations or in_kernel[0]["helper"] == "ftp"
        else:
            assert not _expectations(lab, 2) and _control_entry(lab, 2, a_port) is None

        t_fail = time.monotonic()
        lab.procs.send_signal(md.MESHD_LOG.format(n=1), signal.SIGTERM)
        lab.wait_states({2: "MASTER"}, names, timeout=5)
        took_over = time.monotonic() - t_fail
        if commit == "takeover":      # the masters, then the expectations, before the addresses
            rec = md.log_events(lab.procs.get(md.MESHD_LOG.format(n=2)).log, "takeover_commit")
            rec = [r for r in rec if r.get("from_node") == 1 and "reason" not in r][-1]   # not the skip
            assert rec["committed"] >= 2 and rec["expectations"] == 1 and not rec["expectations_failed"], rec
            assert _control_entry(lab, 2, a_port)["helper"]["name"] == "ftp"

        # A: the data connection fw1 announced, now through fw2
        if expectations:
            assert in_netns(lab.client, _retr, a, host, port) == payload
        else:
            with pytest.raises(OSError):             # the SYN is dropped: nothing expected it
                in_netns(lab.client, _retr, a, host, port)
        # B: PASV as its first command after the failover: fw2's own helper expects it
        host2, port2 = in_netns(lab.client, _pasv, b)
        assert [e for e in _expectations(lab, 2) if e["tuple"]["dport"] == port2], \
            "fw2's helper on the committed control connection created no expectation"
        assert in_netns(lab.client, _retr, b, host2, port2) == payload
        # A's expectation, used up on fw2 before fw2 adopted fw1's flows, is not adopted
        log = lab.procs.get(md.MESHD_LOG.format(n=2)).log
        _wait("fw2 did not adopt fw1's flows", lambda: md.log_events(log, "flows_adopted"))
        internal = [a["entry"] for a in md.control_stream(lab.run_dir, 2, {"cmd": "dump", "cache": "internal"})]
        assert [e for e in internal if any(e.get(s, {}).get("sport") == a_port for s in ("orig", "master"))], \
            "fw2 did not adopt A's control connection"
        assert not [e for e in internal if e.get("expectation")], f"a used-up expectation came back: {internal}"
    finally:
        for f in (a, b):
            f.close()
    print(f"expectations={expectations} commit={commit}: takeover {took_over * 1000:.0f} ms, "
          f"test {time.monotonic() - t0:.1f} s")
