"""The raw RTM_NEWADDR encoder, decoded by pyroute2 (the oracle)."""

from __future__ import annotations

import ipaddress

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from meshd.kernel.addresses import IFA_F_NODAD, RTM_NEWADDR, newaddr_message


def decode(data: bytes):
    msg = ifaddrmsg(data)
    msg.decode()
    return msg


def test_ipv4_request():
    msg = decode(newaddr_message(7, ipaddress.ip_interface("192.0.2.1/24"), seq=3))
    assert msg["header"]["type"] == RTM_NEWADDR and msg["header"]["sequence_number"] == 3
    assert msg["header"]["flags"] == 0x1 | 0x4 | 0x200 | 0x400      # request, ack, excl, create
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (2, 24, 7)
    assert msg.get_attr("IFA_LOCAL") == "192.0.2.1" and msg.get_attr("IFA_ADDRESS") == "192.0.2.1"
    assert msg.get_attr("IFA_CACHEINFO") is None


def test_ipv6_request_is_nodad_and_deprecated():
    msg = decode(newaddr_message(9, ipaddress.ip_interface("2001:db8:1::1/64"), seq=1))
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (10, 64, 9)
    assert msg.get_attr("IFA_ADDRESS") == "2001:db8:1::1"
    assert msg.get_attr("IFA_FLAGS") == IFA_F_NODAD
    ci = msg.get_attr("IFA_CACHEINFO")
    assert ci["ifa_preferred"] == 0 and ci["ifa_valid"] == 0xFFFFFFFF
    assert msg["header"]["length"] == len(newaddr_message(9, ipaddress.ip_interface("2001:db8:1::1/64"), 1))


def test_lifetime_and_renewal_flags():
    v4 = decode(newaddr_message(7, ipaddress.ip_interface("192.0.2.1/24"), 1, lifetime_s=1))
    ci = v4.get_attr("IFA_CACHEINFO")
    assert (ci["ifa_preferred"], ci["ifa_valid"]) == (1, 1)
    assert v4["header"]["flags"] & 0x200                     # an add is exclusive
    renew = decode(newaddr_message(7, ipaddress.ip_interface("192.0.2.1/24"), 1, lifetime_s=1, renew=True))
    assert renew["header"]["flags"] == 0x1 | 0x4 | 0x100 | 0x400      # request, ack, replace, create
    v6 = decode(newaddr_message(9, ipaddress.ip_interface("2001:db8:1::1/64"), 1, lifetime_s=3, renew=True))
    ci = v6.get_attr("IFA_CACHEINFO")
    assert (ci["ifa_preferred"], ci["ifa_valid"]) == (0, 3)  # still deprecated: never a source
    assert v6.get_attr("IFA_FLAGS") == IFA_F_NODAD
