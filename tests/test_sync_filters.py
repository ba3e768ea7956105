"""The replication filter: what is always ignored, and the configured filters."""

import ipaddress
from collections import namedtuple

from meshd.config.sync import SyncFilter
from meshd.sync.filters import EventFilter

Ev = namedtuple("Ev", "kind key attrs portid l4proto src dst status tcp_state")
NEW, UPDATE, DESTROY = 1, 2, 3
EXP_NEW, EXP_DESTROY = 4, 6
ASSURED, DST_NAT = 1 << 2, 1 << 5
ESTABLISHED, TIME_WAIT = 3, 7


def ev(src, dst, proto=6, kind=NEW, status=0, state=ESTABLISHED):
    return Ev(kind, b"k", b"a", 0, proto, ipaddress.ip_address(src).packed,
              ipaddress.ip_address(dst).packed, status, state if proto == 6 else None)


def test_flows_ending_at_the_node_are_ignored_unless_natted():
    f = EventFilter(SyncFilter())
    f.set_local_addresses({"192.0.2.2/24", "192.0.2.1", "2001:db8:1::1"})
    assert f.keep(ev("192.0.2.100", "198.51.100.100"))          # forwarded
    assert not f.keep(ev("192.0.2.100", "192.0.2.1"))            # to the virtual address
    assert not f.keep(ev("192.0.2.2", "192.0.2.3", proto=17))    # the node's own (sync) traffic
    assert not f.keep(ev("127.0.0.1", "127.0.0.1"))
    assert not f.keep(ev("::1", "::1"))
    assert not f.keep(ev("2001:db8:1::100", "2001:db8:1::1"))
    assert f.keep(ev("192.0.2.100", "192.0.2.1", status=DST_NAT))  # redirect: passes through
    assert f.stats.local == 5 and f.stats.passed == 2


def test_configured_protocol_address_and_state_filters():
    f = EventFilter(SyncFilter(ignore_protocols=(17,), ignore_addresses=("10.0.0.0/8", "198.51.100.7"),
                               ignore_tcp_states=("TIME_WAIT",)))
    assert not f.keep(ev("192.0.2.100", "198.51.100.100", proto=17))
    assert not f.keep(ev("10.1.2.3", "198.51.100.100"))
    assert not f.keep(ev("192.0.2.100", "198.51.100.7"))
    assert f.keep(ev("192.0.2.100", "198.51.100.8"))
    assert not f.keep(ev("192.0.2.100", "198.51.100.8", state=TIME_WAIT))
    # a flow that was replicated must still be removed when it ends
    assert f.keep(ev("192.0.2.100", "198.51.100.8", kind=DESTROY, state=TIME_WAIT))
    assert f.stats.as_dict() == {"passed": 2, "local": 0, "protocol": 1, "address": 2,
                                 "tcp_state": 1, "not_assured": 0, "expectation": 0}


def test_only_assured():
    f = EventFilter(SyncFilter(only_assured=True))
    assert not f.keep(ev("192.0.2.100", "198.51.100.8", status=0))
    assert f.keep(ev("192.0.2.100", "198.51.100.8", kind=UPDATE, status=ASSURED))
    assert f.keep(ev("192.0.2.100", "198.51.100.8", kind=DESTROY, status=0))


def test_link_local_multicast_and_broadcast_are_never_replicated():
    f = EventFilter(SyncFilter())
    assert not f.keep(ev("192.0.2.2", "224.0.0.18", proto=17))      # election adverts
    assert not f.keep(ev("192.0.2.2", "255.255.255.255", proto=17))
    assert not f.keep(ev("fe80::1", "ff02::12", proto=17))
    assert f.keep(ev("192.0.2.100", "239.1.2.3", proto=17))          # routed multicast passes


def exp(kind=EXP_NEW, helper="ftp", natted=False, master=("192.0.2.100", "198.51.100.100")):
    """An expectation as the codec gives it: the master's addresses, no TCP state."""
    return Ev(kind, b"E" + bytes(16), helper.encode(), 0, 6, ipaddress.ip_address(master[0]).packed,
              ipaddress.ip_address(master[1]).packed, (1 << 4 | 1 << 5) if natted else 0, None)


def helper_of(attrs):
    return attrs.decode()


def test_expectations_follow_their_master_and_skip_the_state_filters():
    f = EventFilter(SyncFilter(only_assured=True, ignore_tcp_states=("NONE",)), helper_of=helper_of)
    f.set_local_addresses({"192.0.2.1"})
    assert f.keep(exp())                                   # status 0, no state: not "not assured"
    assert not f.keep(exp(master=("192.0.2.100", "192.0.2.1")))            # a master to the node
    assert f.keep(exp(master=("192.0.2.100", "192.0.2.1"), natted=True))   # ... that is NATed
    assert f.stats.not_assured == 0 and f.stats.local == 1
    f2 = EventFilter(SyncFilter(ignore_addresses=("198.51.100.100",)), helper_of=helper_of)
    assert not f2.keep(exp()) and f2.stats.address == 1


def test_expectations_off_or_by_helper():
    off = EventFilter(SyncFilter(expectations=False), helper_of=helper_of)
    assert not off.keep(exp()) and not off.keep(exp(kind=EXP_DESTROY))
    assert off.keep(ev("192.0.2.100", "198.51.100.8"))     # flows are not affected
    assert off.stats.expectation == 2
    sip = EventFilter(SyncFilter(expectation_helpers=("sip",)), helper_of=helper_of)
    assert sip.keep(exp(helper="sip"))
    assert not sip.keep(exp(helper="ftp"))
    assert sip.keep(exp(kind=EXP_DESTROY, helper="ftp"))   # a replicated one must go when it ends
    assert sip.stats.expectation == 1


def test_unreadable_helper_name_leaves_the_expectation_out():
    def broken(attrs):
        raise ValueError("undecodable")
    f = EventFilter(SyncFilter(expectation_helpers=("ftp",)), helper_of=broken)
    assert not f.keep(exp())
