"""Discovery's I/O shell (meshd/sync/mdns.py) without a network: what a resolved
announcement becomes (bounded), and that zeroconf's thread only hands plain
values to the trio loop, where the node core is called.  The real multicast
is in tests/lab/test_discovery_lab.py."""

from __future__ import annotations

import threading

import trio
from zeroconf import ServiceInfo

from meshd.sync.discovery import MAX_ADDRESSES, SERVICE_TYPE
from meshd.sync.mdns import (
    MAX_NAME,
    MAX_TXT_BYTES,
    Announcer,
    instance_name,
    parse_announcement,
    txt_record,
)

FP = "0123456789abcdef"
NAME = f"fw2 (meshd 2).{SERVICE_TYPE}"


def _props(**kw) -> dict:
    return {k.encode(): v.encode() for k, v in {**txt_record(2, "fw2", 7113, FP, "0.1.0"), **kw}.items()}


def test_a_well_formed_announcement():
    a = parse_announcement(NAME, _props(), 60, 7113, ["203.0.113.2"], 4)
    assert (a.name, a.node, a.node_name, a.port, a.fingerprint, a.version, a.addresses) == \
        ("fw2 (meshd 2)", 2, "fw2", 7113, FP, "0.1.0", ("203.0.113.2",))


def test_malformed_fields_become_none_and_the_table_says_so():
    a = parse_announcement(NAME, _props(id="0", port="99999", fp="XYZ", name="a\x00b" + "n" * 200),
                           60, None, ["203.0.113.2"], 4)
    assert a.node is None and a.port is None and a.fingerprint == ""
    assert len(a.node_name) == MAX_NAME and "\x00" not in a.node_name
    assert parse_announcement(NAME, _props(id="1" * 11), 60, 7113, [], 4).node is None


def test_bounds_size_type_family_and_addresses():
    assert parse_announcement(NAME, _props(), MAX_TXT_BYTES + 1, 7113, ["203.0.113.2"], 4) is None
    assert parse_announcement("fw2._http._tcp.local.", _props(), 60, 7113, ["203.0.113.2"], 4) is None
    many = [f"203.0.113.{i}" for i in range(10)] + ["2001:db8::2", "224.0.0.251", "0.0.0.0", "junk"]
    a = parse_announcement(NAME, _props(), 60, 7113, many, 4)
    assert a.addresses == tuple(many[:MAX_ADDRESSES])
    assert parse_announcement(NAME, _props(), 60, 7113, many, 6).addresses == ("2001:db8::2",)


def test_instance_name_is_one_dns_label():
    assert instance_name(7, "fw7") == "fw7 (meshd 7)"
    assert len(instance_name(4294967295, "x" * 80).encode()) <= 63


class _Node:
    """Records the node core's discovery inputs and the thread they ran on."""

    def __init__(self):
        self.calls: list[tuple] = []

    def announced(self, key, node, name, address, port, fp, now):
        self.calls.append(("announced", key, node, address, threading.get_ident()))
        return []

    def withdrawn(self, key, now):
        self.calls.append(("withdrawn", key, threading.get_ident()))
        return []


class _Zeroconf:
    def __init__(self, info):
        self.info = info

    def get_service_info(self, type_, name, timeout=3000):
        return self.info


class _Change:
    def __init__(self, name):
        self.name = name


def test_results_cross_from_zeroconfs_thread_to_the_loop():
    node = _Node()
    changes = []
    ann = Announcer(node, lambda acts: None, lambda *a, **k: None, node_id=1, name="fw1", port=7113,
                    fingerprint=FP, version="0.1.0", interface="sync0", family=4,
                    on_change=lambda: changes.append(threading.get_ident()))
    info = ServiceInfo(SERVICE_TYPE, NAME, port=7113, properties=txt_record(2, "fw2", 7113, FP, "0.1.0"),
                       server="fw2.local.", parsed_addresses=["203.0.113.2", "198.51.100.2"])
    zc = _Zeroconf(info)

    async def main():
        ann._token = trio.lowlevel.current_trio_token()
        loop_thread = threading.get_ident()

        def zeroconf_thread():
            ann._on_state_change(zc, SERVICE_TYPE, NAME, _Change("Added"))
            ann._on_state_change(zc, SERVICE_TYPE, NAME, _Change("Removed"))

        t = threading.Thread(target=zeroconf_thread)
        t.start()
        await trio.to_thread.run_sync(t.join)
        with trio.move_on_after(2):
            async for item in ann._receive:
                ann._take(item)
                if any(c[0] == "withdrawn" for c in node.calls):
                    break
        return loop_thread

    loop_thread = trio.run(main)
    announced = [c for c in node.calls if c[0] == "announced"]
    withdrawn = [c for c in node.calls if c[0] == "withdrawn"]
    assert sorted(c[3] for c in announced) == ["198.51.100.2", "203.0.113.2"]
    assert all(c[2] == 2 for c in announced)
    assert sorted(c[1] for c in withdrawn) == sorted(c[1] for c in announced)
    assert {c[-1] for c in node.calls} == {loop_thread} and set(changes) == {loop_thread}
