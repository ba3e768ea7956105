"""meshd.kernel.conntrack and the ctnetlink codec against the real kernel, in throw-away namespaces.

Every test works in namespaces of its own (mshct-<pid>-<n>): conntrack tables
are per network namespace, so the host's table is never touched. Fixtures
delete the namespaces whatever the outcome. Root only.
"""

import errno
import json
import os
import socket
import struct
import time
from pathlib import Path

import ctlab
import pytest
import trio

from meshd import fastct
from meshd.kernel import ctnetlink as ct
from meshd.kernel.conntrack import CtCommitter, CtEventReader, Overrun, dump_table
from meshd.kernel.ctnetlink.netlink import _message

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, conntrack)"),
]

REPO = Path(__file__).resolve().parents[2]
VECTORS = {v["name"]: v for v in json.loads((REPO / "proto/vectors/ctnetlink.json").read_text())["vectors"]}
T = ctlab.Topology


@pytest.fixture
def ns():
    n = ctlab.CtNs()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture(params=["python", "c"])
def hot_path(request, monkeypatch):
    """The reader's burst loop and the dump's decode: recv_into and events.py, or the
    accelerator's recvmmsg and C."""
    fast = None
    if request.param == "c":
        fast = fastct.accelerator()
        if fast is None:
            pytest.skip("meshd._fastct is not built")
    monkeypatch.setattr(fastct, "FAST", fast)
    return request.param


@pytest.fixture
def topo():
    t = ctlab.Topology(fw_sysctls={"net.netfilter.nf_conntrack_tcp_loose": "0"})
    try:
        yield t
    finally:
        t.close()


def vector_attrs(name: str) -> bytes:
    return ct.decode_events(bytes.fromhex(VECTORS[name]["hex"]))[0].attrs


def dump_in(n: ctlab.CtNs) -> dict:
    """key -> parse_entry() of the table of n."""
    with n.entered():
        return {e.key: ct.parse_entry(e.attrs) for e in dump_table()}


def raw_create(sock: socket.socket, attrs: bytes, seq: int = 1, flags: int = 0x405) -> int:
    """Send attrs as a create request unchanged; the errno the kernel answers (0: created)."""
    sock.send(_message(ct.CT_NEW, flags, seq, attrs))
    return next(err for s, err in ct.iter_acks(sock.recv(65536)) if s == seq)


def nl_socket(n: ctlab.CtNs) -> socket.socket:
    s = ctlab.sock_in(n.name, socket.AF_NETLINK, socket.SOCK_RAW, ct.NETLINK_NETFILTER)
    s.bind((0, 0))
    s.settimeout(5)
    return s


def key_of(attrs: bytes) -> bytes:
    return ct.decode_events(_message(ct.CT_NEW, ct.NLM_F_MULTI, 1, attrs))[0].key


# --- what the kernel accepts on create ----------------------------------------------------

def test_status_bits_on_create(ns):
    """EXPECTED and DYING: EBUSY. No CONFIRMED: EBUSY. Derived bits: ignored. No timeout: EINVAL."""
    base = {"status": ct.IPS_CONFIRMED, "mark": None, "with_id": False}
    with nl_socket(ns) as s:
        results = {}
        for bit in range(16):
            attrs = ctlab.entry(bit, **dict(base, status=ct.IPS_CONFIRMED | 1 << bit))
            err = raw_create(s, attrs, seq=100 + bit)
            got = dump_in(ns).get(key_of(attrs))
            results[ct.IPS_NAMES[bit]] = (err, got is not None and 1 << bit & got["status"] != 0)
        assert results["EXPECTED"][0] == results["DYING"][0] == errno.EBUSY
        for name in ("SEEN_REPLY", "ASSURED", "CONFIRMED", "FIXED_TIMEOUT", "HELPER"):
            assert results[name] == (0, True), name
        for name in ("SRC_NAT", "DST_NAT", "SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "TEMPLATE", "UNTRACKED",
                     "OFFLOAD", "HW_OFFLOAD"):
            assert results[name] == (0, False), name            # accepted, silently not set
        assert raw_create(s, ctlab.entry(50, **dict(base, status=ct.IPS_SEEN_REPLY))) == errno.EBUSY
        assert raw_create(s, ctlab.entry(51, timeout=None)) == errno.EINVAL
        # an update may not take SEEN_REPLY or ASSURED back
        assured = ctlab.entry(52, with_id=False)
        assert raw_create(s, assured) == 0
        assert raw_create(s, ctlab.entry(52, status=ct.IPS_CONFIRMED, with_id=False), flags=0x405) == errno.EBUSY
    # the committer masks the status: every bit set is fine
    with ns.entered(), CtCommitter() as c:
        r = c.commit([ctlab.entry(60 + i, status=0xFFFF) for i in range(3)])
    assert (r.ok, r.failed) == (3, 0)


def test_event_only_attribute_is_refused(ns):
    """CTA_TIMESTAMP_EVENT (in every event) makes a create fail with EINVAL; the rest is ignored."""
    attrs = vector_attrs("ipv4_tcp_established")
    assert ct.attr_value(attrs, ct.CTA_TIMESTAMP_EVENT) is not None
    without = attrs[:4] + b"".join(ct.nla(rt, attrs[s:e]) for t, rt, s, e in ct.iter_attrs(attrs, 4)
                                   if t != ct.CTA_TIMESTAMP_EVENT)
    with nl_socket(ns) as s:
        assert raw_create(s, attrs) == errno.EINVAL
        assert raw_create(s, without) == 0
        # read-only attributes of dumps are ignored on create
        extra = b"".join((ct.nla(ct.CTA_ID, b"\0\0\0\1"), ct.nla(ct.CTA_USE, b"\0\0\0\1"),
                          ct.nest(ct.CTA_COUNTERS_ORIG, ct.nla(1, bytes(8)), ct.nla(2, bytes(8))),
                          ct.nest(ct.CTA_TIMESTAMP, ct.nla(1, bytes(8))), ct.nla(40, b"new!")))
        assert raw_create(s, ctlab.entry(1, with_id=False, extra=extra)) == 0
    with ns.entered(), CtCommitter() as c:
        assert c.commit([vector_attrs(n) for n in ("ipv4_udp_reply", "icmpv6_echo", "sctp_injected")]).ok == 3


# --- commit -------------------------------------------------------------------------------------

def test_commit_creates_updates_and_counts_errors(ns):
    n = 3000
    good = [ctlab.entry(i, timeout=200 + i % 50, mark=i % 7) for i in range(n)]
    no_timeout = [ctlab.entry(n + i, timeout=None) for i in range(3)]      # EINVAL: a create needs a timeout
    bad_state = [ctlab.entry(n + 10 + i, state=12) for i in range(2)]      # ERANGE: no such TCP state
    garbage = [b"\x02\0\0\0" + b"\xff" * 9, b""]                             # never reaches the kernel
    entries = good[:1000] + no_timeout + good[1000:2000] + bad_state + garbage + good[2000:]
    with ns.entered(), CtCommitter() as c:
        r = c.commit(entries)
        assert (r.ok, r.failed) == (n, 7), r
        assert r.errors_by_reason == {"EINVAL": 3, "ERANGE": 2, "EBADMSG": 2}
        assert ns.count() == n
        again = c.commit(entries)                                         # create-or-update
        assert (again.ok, again.errors_by_reason) == (n, {"EINVAL": 3, "ERANGE": 2, "EBADMSG": 2})
        assert "EEXIST" not in again.retried and ns.count() == n
        table = {e.key: e for e in dump_table()}
    assert set(table) == {key_of(a) for a in good}
    for a in good[::97]:
        p = ct.parse_entry(table[key_of(a)].attrs)
        want = ct.parse_entry(a)
        assert (p["orig"], p["reply"], p["mark"]) == (want["orig"], want["reply"], want["mark"])
        assert p["timeout"] <= want["timeout"] and p["tcp"]["state"] == "ESTABLISHED"
        for side in ("orig", "reply"):
            assert {"BE_LIBERAL", "WINDOW_SCALE", "SACK_PERM"} <= set(p["tcp"][f"flags_{side}"]["names"])
        assert (p["tcp"]["wscale_orig"], p["tcp"]["wscale_reply"]) == (7, 7)
        assert {"SEEN_REPLY", "ASSURED"} <= set(p["status_flags"])


def test_commit_timeouts(ns):
    short = [ctlab.entry(i) for i in range(20)]
    with ns.entered(), CtCommitter() as c:
        assert c.commit(short, 2).ok == 20
        assert c.commit([ctlab.entry(100 + i) for i in range(5)], [30, 40, None, 50, 60]).ok == 5
        table = {e.key: ct.parse_entry(e.attrs)["timeout"] for e in dump_table()}
        assert all(table[key_of(a)] <= 2 for a in short)
        assert table[key_of(ctlab.entry(102))] <= 300 and 38 <= table[key_of(ctlab.entry(101))] <= 40
        time.sleep(3.5)
        left = {e.key for e in dump_table()}              # a dump skips (and reaps) expired entries
    assert not left & {key_of(a) for a in short} and len(left) == 5


def test_commit_nat_entries_create_then_update(ns):
    entries = [ctlab.entry(i, snat="192.0.2.1") for i in range(50)] + \
              [ctlab.entry(100 + i, dnat=("10.9.9.9", 8080)) for i in range(50)] + \
              [ctlab.entry(200 + i, family=socket.AF_INET6, snat="fd00::99") for i in range(20)] + \
              [vector_attrs("snat_tcp"), vector_attrs("dnat_tcp")]
    with ns.entered(), CtCommitter() as c:
        r = c.commit(entries)
        assert (r.ok, r.failed, r.retried) == (len(entries), 0, {})
        again = c.commit(entries)
        # existing NAT entries: EOPNOTSUPP, then updated without the NAT attributes
        assert (again.ok, again.failed, again.retried) == (len(entries), 0, {"EOPNOTSUPP": len(entries)})
    table = dump_in(ns)
    for a in entries:
        want, got = ct.parse_entry(a), table[key_of(a)]
        assert got["reply"] == want["reply"]
        nat = {"SRC_NAT"} if want["reply"]["dst"] != want["orig"]["src"] else {"DST_NAT"}
        assert nat <= set(got["status_flags"])


def test_commit_retry_plans(ns):
    """Older state over newer (EBUSY) and an unknown helper (EOPNOTSUPP, ENOENT): all committed."""
    newer = [ctlab.entry(i) for i in range(20)]
    older = [ctlab.entry(i, status=ct.IPS_CONFIRMED, state=2, mark=9) for i in range(20)]
    helper = ct.nest(ct.CTA_HELP, ct.nla(ct.CTA_HELP_NAME, b"no-such-helper\0"))
    unknown_helper = [ctlab.entry(100 + i, extra=helper) for i in range(5)]
    with ns.entered(), CtCommitter() as c:
        assert c.commit(newer).ok == 20
        r = c.commit(older + unknown_helper)
    assert (r.ok, r.failed, r.retried) == (25, 0, {"EBUSY": 20, "EOPNOTSUPP": 5})
    table = dump_in(ns)
    for a in older:        # the status could not go back; the rest of the update applied
        p = table[key_of(a)]
        assert "ASSURED" in p["status_flags"] and p["mark"] == 9 and p["tcp"]["state"] == "SYN_RECV"
    assert all("helper" not in table[key_of(a)] for a in unknown_helper)


def test_commit_related_before_master_and_helpers(ns):
    """The FTP data entry (CTA_TUPLE_MASTER) before its control entry: ENOENT, then resent."""
    data, control = vector_attrs("dump_ftp_data_related"), vector_attrs("dump_ftp_control")
    with ns.entered(), CtCommitter() as c:
        r = c.commit([data, control])
    assert (r.ok, r.failed, r.retried) == (2, 0, {"ENOENT": 1})
    table = dump_in(ns)
    got_data, got_control = table[key_of(data)], table[key_of(control)]
    assert got_data["master"] == got_control["orig"] and "EXPECTED" in got_data["status_flags"]
    assert got_control["helper"] == {"name": "ftp"}
    assert got_control["seq_adj_orig"] == ct.parse_entry(control)["seq_adj_orig"]
    assert "SEQ_ADJUST" in got_control["status_flags"] and "SRC_NAT" in got_control["status_flags"]


def test_commit_labels_need_a_label_user(ns):
    labelled = [ctlab.entry(i, labels=b"\x08" + bytes(15), zone=7) for i in range(5)]
    with ns.entered(), CtCommitter() as c:
        assert c.commit(labelled).ok == 5                 # no label user: created, labels dropped
        assert all("labels" not in p for p in dump_in(ns).values())
        again = c.commit(labelled)                        # update of an entry without label storage
        assert (again.ok, again.retried) == (5, {"ENOSPC": 5})
        c.flush()
        ns.nft("table inet t {\n chain c {\n type filter hook prerouting priority 0;\n ct label set 1\n }\n}\n")
        assert c.commit(labelled).ok == 5
    table = dump_in(ns)
    assert all(p["labels"] == "08" + "00" * 15 and p["zone"] == 7 for p in table.values())


def test_delete_and_flush(ns):
    entries = [ctlab.entry(i) for i in range(100)]
    with ns.entered(), CtCommitter() as c:
        c.commit(entries)
        r = c.delete(entries[:30], keys=[key_of(a) for a in entries[30:40]])
        assert (r.ok, r.failed) == (40, 0) and ns.count() == 60
        assert c.delete(entries[:5]).errors_by_reason == {"ENOENT": 5}
        c.flush()
        assert ns.count() == 0


def test_dump_table_20k(ns, hot_path):
    entries = [ctlab.entry(i, family=socket.AF_INET6 if i % 4 == 0 else socket.AF_INET, proto=(6, 17, 6, 1)[i % 4])
               for i in range(20000)]
    with ns.entered(), CtCommitter() as c:
        assert c.commit(entries).ok == 20000
        t = time.perf_counter()
        table = dump_table()
        seconds = time.perf_counter() - t
        v6 = dump_table(socket.AF_INET6)
    assert len(table) == 20000 and {e.key for e in table} == {key_of(a) for a in entries}
    assert all(e.kind == ct.NEW for e in table) and len(v6) == 5000
    print(f"dump_table ({hot_path}): 20000 entries in {seconds:.3f} s ({20000 / seconds:,.0f}/s)")


def test_commit_100k_rate(ns):
    """The number to beat: conntrackd commits 100k entries in 1.12 s (about 90k/s) here."""
    entries = [ctlab.entry(i) for i in range(100_000)]
    with ns.entered(), CtCommitter() as c:
        r = c.commit(entries)
        assert (r.ok, r.failed) == (100_000, 0)
        assert ns.count() == 100_000
        again = c.commit(entries)
    assert again.ok == 100_000
    print(f"commit 100k: create {100_000 / r.seconds:,.0f}/s ({r.seconds:.2f} s), "
          f"update {100_000 / again.seconds:,.0f}/s ({again.seconds:.2f} s)")
    assert r.seconds < 5


# --- the event reader -----------------------------------------------------------------------

async def _collect(reader: CtEventReader, work, until, timeout: float = 10.0) -> list:
    """Run reader and `work` (a blocking function, in a thread); items received until until(items)."""
    send, recv = trio.open_memory_channel(64)
    items: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.run, send)
        await trio.to_thread.run_sync(work)
        with trio.move_on_after(timeout):
            async for item in recv:
                items.append(item)
                if until(items):
                    break
        nursery.cancel_scope.cancel()
    return items


def _events(items: list) -> list:
    return [e for item in items if isinstance(item, list) for e in item]


def test_reader_sees_real_flows(topo, hot_path):
    topo.fw.nft("table inet t {\n chain f {\n type filter hook forward priority 0;\n ct state established accept\n }\n}\n")
    with topo.fw.entered():
        reader = CtEventReader()
    srv = ctlab.sock_in(topo.srv.name, socket.AF_INET, socket.SOCK_STREAM)
    cli = ctlab.sock_in(topo.cli.name, socket.AF_INET, socket.SOCK_STREAM)
    udp_srv = ctlab.sock_in(topo.srv.name, socket.AF_INET6, socket.SOCK_DGRAM)
    udp_cli = ctlab.sock_in(topo.cli.name, socket.AF_INET6, socket.SOCK_DGRAM)
    key = struct.pack("!HBB", 0, socket.AF_INET, 6) + socket.inet_aton(T.CLI4) + socket.inet_aton(T.SRV4) \
        + struct.pack("!HH", 43001, 5001)

    def traffic():
        srv.bind((T.SRV4, 5001))
        srv.listen()
        cli.bind((T.CLI4, 43001))
        cli.settimeout(5)
        cli.connect((T.SRV4, 5001))
        conn, _ = srv.accept()
        cli.sendall(b"ping")
        conn.recv(10)
        udp_srv.bind((T.SRV6, 5353))
        udp_cli.sendto(b"x", (T.SRV6, 5353))
        _, peer = udp_srv.recvfrom(10)
        udp_srv.sendto(b"y", peer)
        udp_cli.settimeout(5)
        udp_cli.recvfrom(10)
        conn.close()
        topo.fw.run("conntrack", "-D", "-p", "tcp", "--orig-port-dst", "5001")

    try:
        items = trio.run(_collect, reader, traffic,
                         lambda items: any(e.kind == ct.DESTROY and e.key == key for e in _events(items)))
    finally:
        for s in (srv, cli, udp_srv, udp_cli):
            s.close()
        reader.close()
    evs = [e for e in _events(items) if e.key == key]
    kinds = [e.kind for e in evs]
    assert kinds[0] == ct.NEW and kinds[-1] == ct.DESTROY and ct.UPDATE in kinds
    assert any(e.tcp_state == ct.TCP_CONNTRACK_ESTABLISHED for e in evs)
    assert all(e.portid == 0 for e in evs[:-1]) and evs[-1].portid != 0     # the tool deleted it
    assert evs[0].src == socket.inet_aton(T.CLI4) and evs[0].l4proto == 6
    udp = [e for e in _events(items) if e.l4proto == 17]
    assert udp and udp[0].src == socket.inet_pton(socket.AF_INET6, T.CLI6) and len(udp[0].key) == 40
    assert reader.overruns == 0 and reader.events == len(_events(items)) and reader.bursts >= 1


@pytest.mark.parametrize("kernel_filter", [True, False], ids=["socket-filter", "portid-check"])
def test_reader_skips_own_injections(ns, monkeypatch, kernel_filter, hot_path):
    if not kernel_filter:       # a kernel that refuses the filter: read_burst's check does it
        monkeypatch.setattr(CtEventReader, "_filter_own", lambda self: None)
    with ns.entered():
        committer = CtCommitter()
        reader = CtEventReader(own_portids=[committer.portid])
    foreign = ("-I", "-p", "udp", "-s", "10.7.0.1", "-d", "10.7.0.2", "--sport", "1", "--dport", "2", "-t", "50")

    def work():
        assert committer.commit([ctlab.entry(i) for i in range(500)]).ok == 500
        ns.run("conntrack", *foreign)

    try:
        items = trio.run(_collect, reader, work, lambda items: any(e.l4proto == 17 for e in _events(items)))
    finally:
        reader.close()
        committer.close()
    evs = _events(items)
    assert [e.l4proto for e in evs] == [17] and evs[0].kind == ct.NEW
    assert evs[0].portid not in (0, committer.portid)
    if kernel_filter:           # dropped by the kernel: never read
        assert reader.own_filter and reader.own_skipped == 0
    else:
        assert reader.own_skipped == 500


def test_reader_overrun_is_a_marker_not_a_crash(ns, hot_path):
    logged = []
    with ns.entered():
        reader = CtEventReader(rcvbuf=4096, log=lambda event, **f: logged.append(event))
        committer = CtCommitter()

    async def scenario() -> tuple[list, list]:
        send, recv = trio.open_memory_channel(10000)
        before, after = [], []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run, send)
            with trio.fail_after(10):
                while not any(isinstance(i, Overrun) for i in before):
                    before.append(await recv.receive())
            while True:                              # drain what was queued, until quiet
                with trio.move_on_after(0.5) as quiet:
                    before.append(await recv.receive())
                if quiet.cancelled_caught:
                    break
            # the reader goes on after an overrun: new events arrive
            await trio.to_thread.run_sync(lambda: committer.commit([ctlab.entry(9000 + i, proto=17)
                                                                    for i in range(3)]))
            with trio.fail_after(10):
                while sum(e.l4proto == 17 for e in _events(after)) < 3:
                    after.append(await recv.receive())
            nursery.cancel_scope.cancel()
        return before, after

    try:
        # the reader is not reading yet: thousands of NEW events overflow 4 KiB
        assert committer.commit([ctlab.entry(i) for i in range(3000)]).ok == 3000
        before, after = trio.run(scenario)
    finally:
        reader.close()
        committer.close()
    assert [i.reason for i in before if isinstance(i, Overrun)] == ["enobufs"] * reader.overruns
    assert reader.overruns >= 1 and "ct_events_overrun" in logged
    # the kernel reports ENOBUFS before what is still queued, which is older than
    # the loss: discarded, so the marker is first and no old event follows it
    assert isinstance(before[0], Overrun) and _events(before) == []
    assert 0 < reader.discarded < 3000
    assert [e.l4proto for e in _events(after)] == [17, 17, 17]


def test_reader_throughput(ns, hot_path):
    """50k real NEW events queued in the kernel, then read, decoded and delivered through run()."""
    n = 50_000
    with ns.entered():
        reader = CtEventReader(rcvbuf=64 << 20)
        committer = CtCommitter()
    assert reader.implementation == hot_path

    async def drain() -> float:
        send, recv = trio.open_memory_channel(64)
        got = 0
        async with trio.open_nursery() as nursery:
            t = time.perf_counter()
            nursery.start_soon(reader.run, send)
            async for batch in recv:
                assert isinstance(batch, list)
                got += len(batch)
                if got >= n:
                    break
            seconds = time.perf_counter() - t
            nursery.cancel_scope.cancel()
        return seconds

    try:
        assert committer.commit([ctlab.entry(i) for i in range(n)]).ok == n
        seconds = trio.run(drain)
    finally:
        reader.close()
        committer.close()
    assert reader.overruns == 0 and reader.events == n
    print(f"event reader ({hot_path}): {n} events in {seconds:.2f} s ({n / seconds:,.0f}/s, "
          f"{reader.bursts} bursts of up to {reader.burst})")


def test_reader_buffer_fallback_warns(ns):
    """Without CAP_NET_ADMIN, SO_RCVBUFFORCE fails: SO_RCVBUF (capped by rmem_max) and a warning.

    (Subscribing to the conntrack groups needs CAP_NET_ADMIN too, so the
    unprivileged reader here subscribes to nothing: groups=0.)
    """
    code = ("import json; from meshd.kernel.conntrack import CtEventReader; logs = []; "
            "r = CtEventReader(rcvbuf=32 << 20, groups=0, "
            "log=lambda e, level='info', **f: logs.append([e, level, f])); print(json.dumps(logs))")
    out = ns.run("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "python3", "-c", code,
                 env_pythonpath=str(REPO)).stdout
    (event, level, fields), = json.loads(out)
    assert (event, level) == ("netlink_buffer_limited", "warning")
    assert fields["wanted"] == 32 << 20 and 0 < fields["granted"] < 32 << 20
    with ns.entered(), CtEventReader(rcvbuf=32 << 20) as reader:     # as root: granted (doubled)
        assert reader.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 32 << 20


# --- the takeover: state restored from a dump keeps flows alive ---------------------------------

RULES = """
table inet filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "f0" tcp flags syn ct state new accept
  }
}
table ip nat {
  chain pre { type nat hook prerouting priority dstnat; ip daddr 192.168.100.1 tcp dport 8080 dnat to 10.0.2.2:80; }
  chain post { type nat hook postrouting priority srcnat; oifname "f1" tcp dport 5002 snat to 10.0.2.1; }
}
"""


def _exchange(a: socket.socket, b: socket.socket, payload: bytes, timeout: float) -> bool:
    a.sendall(payload)
    b.settimeout(timeout)
    try:
        return b.recv(100) == payload
    except (TimeoutError, ConnectionError):
        return False


def test_restore_after_flush_keeps_tcp_flows(topo):
    """Dump fw's table, flush it, commit the dump back: the flows (plain, SNAT, DNAT) go on.

    fw drops everything that is not an established flow or a new SYN, with
    nf_conntrack_tcp_loose=0: a flow survives only if its entry (with its NAT
    binding) is back. A control flow left out of the commit must stall.
    """
    topo.fw.nft(RULES)
    flows = {"plain": (T.SRV4, 5001, T.SRV4, 5001), "snat": (T.SRV4, 5002, T.SRV4, 5002),
             "dnat": (T.FW4C, 8080, T.SRV4, 80), "control": (T.SRV4, 5003, T.SRV4, 5003)}
    socks = []
    pairs = {}
    try:
        for name, (dst, dport, laddr, lport) in flows.items():
            srv = ctlab.sock_in(topo.srv.name, socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((laddr, lport))
            srv.listen()
            cli = ctlab.sock_in(topo.cli.name, socket.AF_INET, socket.SOCK_STREAM)
            cli.settimeout(5)
            cli.connect((dst, dport))
            conn, peer = srv.accept()
            socks += [srv, cli, conn]
            pairs[name] = (cli, conn)
            assert _exchange(cli, conn, b"before", 2) and _exchange(conn, cli, b"back", 2)
            if name == "snat":
                assert peer[0] == T.FW4S
        with topo.fw.entered():
            entries = dump_table()
        control_port = pairs["control"][0].getsockname()[1]
        keep = [e.attrs for e in entries
                if not (e.l4proto == 6 and struct.unpack("!H", e.key[-4:-2])[0] == control_port)]
        assert len(keep) == len(entries) - 1 == 3
        with topo.fw.entered(), CtCommitter() as c:
            c.flush()
            assert topo.fw.count() == 0
            r = c.commit(keep)
            assert (r.ok, r.failed) == (len(keep), 0)
        for name in ("plain", "snat", "dnat"):
            cli, conn = pairs[name]
            assert _exchange(cli, conn, b"after-" + name.encode(), 3), name
            assert _exchange(conn, cli, b"reply-" + name.encode(), 3), name
        cli, conn = pairs["control"]
        assert not _exchange(cli, conn, b"lost", 1.5)
    finally:
        for s in socks:
            s.close()


# --- expectations --------------------------------------------------------------------------------

EXPECT = {v["name"]: v for v in json.loads((REPO / "proto/vectors/ctnetlink.json").read_text())["expect_vectors"]}


def expect_attrs(name: str) -> bytes:
    return ct.decode_events(bytes.fromhex(EXPECT[name]["hex"]))[0].attrs


def strip_help(attrs: bytes) -> bytes:
    return attrs[:4] + b"".join(attrs[s - 4:e] + b"\0" * (-(e - s) & 3)
                                for t, _rt, s, e in ct.iter_attrs(attrs, ct.NFGEN_LEN) if t != ct.CTA_HELP)


def test_expectation_commit_needs_its_master_with_a_helper(ns):
    """What the kernel says to an expectation committed through ctnetlink (6.18): ENOENT without
    its master, EOPNOTSUPP for a master without a helper, and with one it is created, NAT and
    expect function included; deleted by its key, then ENOENT."""
    from meshd.kernel.conntrack import dump_expectations
    master = vector_attrs("dump_ftp_control")         # the active FTP's control connection: SNAT, ftp
    exp = expect_attrs("expect_active_new")
    key = ct.decode_events(bytes.fromhex(EXPECT["expect_active_new"]["hex"]))[0].key
    with ns.entered(), CtCommitter() as c:
        r = c.commit_expectations([exp])
        assert (r.ok, r.errors_by_reason) == (0, {"ENOENT": 1})
        assert c.commit([strip_help(master)]).ok == 1
        r = c.commit_expectations([exp])
        assert (r.ok, r.errors_by_reason) == (0, {"EOPNOTSUPP": 1})
        c.flush()
        assert c.commit([master]).ok == 1
        # what the old master had left of it (10 s) does not count: the helper's own timeout does
        short = exp[:4] + b"".join(
            ct.nla(t, (10).to_bytes(4, "big")) if t == ct.CTA_EXPECT_TIMEOUT else exp[s - 4:e] + b"\0" * (-(e - s) & 3)
            for t, _rt, s, e in ct.iter_attrs(exp, ct.NFGEN_LEN))
        assert c.commit_expectations([short]).ok == 1
        (got,) = dump_expectations()
        assert got.key == key
        p, want = ct.parse_expect(got.attrs), EXPECT["expect_active_new"]["expect"]
        for k in ("tuple", "mask", "master", "helper", "fn", "nat", "class"):
            assert p.get(k) == want.get(k), k
        assert 290 <= p["timeout"] <= 300                          # the ftp helper's: 300 s
        # committed again, it exists: refreshed, and then the timeout sent is the one it gets
        assert c.commit_expectations([short]).ok == 1
        assert ct.parse_expect(dump_expectations()[0].attrs)["timeout"] <= 10
        assert c.delete_expectations(keys=[key]).ok == 1
        assert c.delete_expectations(keys=[key]).errors_by_reason == {"ENOENT": 1}
        assert dump_expectations() == []
        # they belong to their master: it goes, they go
        assert c.commit_expectations([exp]).ok == 1 and len(dump_expectations()) == 1
        assert c.delete([master]).ok == 1
        assert dump_expectations() == []
