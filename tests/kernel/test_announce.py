"""Frame builders for GARP and unsolicited NA: byte layout and checksums."""

import ipaddress
import struct

import pytest
from hypothesis import given, strategies as st

from meshd.kernel.announce import garp_frame, icmpv6_checksum, unsolicited_na_frame

MAC = bytes.fromhex("020000aabbcc")


def ones_complement_ok(data: bytes) -> bool:
    """Independent check: the one's-complement sum of data incl. its checksum is 0xffff.

    Uses 2**16 == 1 (mod 0xffff): the 16-bit one's-complement sum of a buffer
    is congruent to the buffer read as one big integer, mod 0xffff. A correct
    checksum makes that 0 (the sum is 0xffff, "negative zero").
    """
    if len(data) % 2:
        data += b"\x00"
    return int.from_bytes(data, "big") % 0xFFFF == 0


def test_garp_known_frame():
    expected = bytes.fromhex(
        "ffffffffffff" "020000aabbcc" "0806"      # Ethernet: broadcast, our MAC, ARP
        "0001" "0800" "06" "04" "0001"            # Ethernet/IPv4, 6/4 bytes, request
        "020000aabbcc" "c0000201"                 # sender MAC, sender IP 192.0.2.1
        "000000000000" "c0000201"                 # target MAC zero, target IP == sender IP
    ) + b"\x00" * 18                              # padded to the 60-byte minimum
    assert garp_frame(MAC, "192.0.2.1") == expected
    assert garp_frame(MAC, "192.0.2.1/24") == expected  # config form accepted


def test_na_layout():
    f = unsolicited_na_frame(MAC, "2001:db8:1::1/64")
    vip = ipaddress.IPv6Address("2001:db8:1::1").packed
    assert f[0:6] == bytes.fromhex("333300000001")
    assert f[6:12] == MAC
    assert f[12:14] == b"\x86\xdd"
    ip6 = f[14:54]
    assert ip6[0] >> 4 == 6
    assert struct.unpack("!H", ip6[4:6])[0] == 32      # payload length
    assert ip6[6] == 58 and ip6[7] == 255               # ICMPv6, hop limit 255
    assert ip6[8:24] == vip
    assert ip6[24:40] == ipaddress.IPv6Address("ff02::1").packed
    icmp = f[54:]
    assert len(icmp) == 32 and len(f) == 86
    assert icmp[0] == 136 and icmp[1] == 0
    flags = icmp[4]
    assert flags & 0x20            # Override
    assert not flags & 0x40        # Solicited
    assert not flags & 0x80        # Router (default)
    assert icmp[5:8] == b"\x00\x00\x00"
    assert icmp[8:24] == vip
    assert icmp[24:32] == b"\x02\x01" + MAC             # target link-layer address option


def test_na_checksum_independent():
    f = unsolicited_na_frame(MAC, "2001:db8:1::1")
    src, dst, icmp = f[22:38], f[38:54], f[54:]
    pseudo = src + dst + len(icmp).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    assert ones_complement_ok(pseudo + icmp)
    # and a corrupted frame must not verify
    bad = icmp[:10] + bytes([icmp[10] ^ 1]) + icmp[11:]
    assert not ones_complement_ok(pseudo + bad)


def test_na_router_flag():
    f = unsolicited_na_frame(MAC, "2001:db8:1::1", router=True)
    assert f[54 + 4] == 0xA0   # Router | Override
    src, dst, icmp = f[22:38], f[38:54], f[54:]
    assert ones_complement_ok(src + dst + len(icmp).to_bytes(4, "big") + b"\x00\x00\x00\x3a" + icmp)


def test_checksum_rfc1071_example():
    # RFC 1071 section 3 example words 0001 f203 f4f5 f6f7 sum to ddf2 -> checksum 220d.
    # icmpv6_checksum adds a pseudo-header; with zero addresses and a payload
    # whose length/next-header contribution we subtract, compare the core sum.
    payload = bytes.fromhex("0001f203f4f5f6f7")
    c = icmpv6_checksum(b"\x00" * 16, b"\x00" * 16, payload)
    # pseudo-header adds len (8) and next header (58) to the sum
    core = (0xDDF2 + 8 + 58) & 0xFFFF
    assert c == ~core & 0xFFFF


@pytest.mark.parametrize("bad", [b"", b"\x00" * 5, b"\x00" * 7])
def test_bad_mac(bad):
    with pytest.raises(ValueError):
        garp_frame(bad, "192.0.2.1")
    with pytest.raises(ValueError):
        unsolicited_na_frame(bad, "2001:db8::1")


def test_wrong_family():
    with pytest.raises(ValueError):
        garp_frame(MAC, "2001:db8::1")
    with pytest.raises(ValueError):
        unsolicited_na_frame(MAC, "192.0.2.1")


@given(st.binary(min_size=6, max_size=6), st.integers(0, 2**128 - 1), st.booleans())
def test_na_checksum_property(mac, addr, router):
    ip = str(ipaddress.IPv6Address(addr))
    f = unsolicited_na_frame(mac, ip, router=router)
    src, dst, icmp = f[22:38], f[38:54], f[54:]
    assert src == ipaddress.IPv6Address(addr).packed
    assert ones_complement_ok(src + dst + len(icmp).to_bytes(4, "big") + b"\x00\x00\x00\x3a" + icmp)


@given(st.binary(min_size=6, max_size=6), st.integers(0, 2**32 - 1))
def test_garp_property(mac, addr):
    ip = ipaddress.IPv4Address(addr)
    f = garp_frame(mac, str(ip))
    assert len(f) == 60
    assert f[6:12] == mac and f[22:28] == mac
    assert f[28:32] == f[38:42] == ip.packed
    assert f[20:22] == b"\x00\x01"
