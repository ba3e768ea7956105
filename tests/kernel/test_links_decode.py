"""Sans-I/O rtnetlink link decoder: hand-built messages, garbage, and a kernel oracle."""

import socket
import struct
import sys

import pytest
from hypothesis import given, settings, strategies as st

from meshd.kernel.links import LinkDecodeError, LinkEvent, parse_link_messages

IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000


def rtattr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\x00" * (-len(raw) % 4)


def link_msg(kind=16, index=2, flags=IFF_UP | IFF_LOWER_UP, name="eth0", family=0, extra=b""):
    attrs = b""
    if name is not None:
        attrs += rtattr(3, name.encode() + b"\x00")
    attrs += rtattr(16, b"\x06") + extra  # IFLA_OPERSTATE = UP
    body = struct.pack("=BxHiII", family, 1, index, flags, 0xFFFFFFFF) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_newlink_up():
    assert parse_link_messages(link_msg()) == [LinkEvent(2, "eth0", True, False)]


def test_admin_up_without_carrier_is_down():
    assert parse_link_messages(link_msg(flags=IFF_UP))[0].up is False
    assert parse_link_messages(link_msg(flags=IFF_UP | IFF_RUNNING))[0].up is False
    assert parse_link_messages(link_msg(flags=IFF_LOWER_UP))[0].up is False


def test_dellink():
    assert parse_link_messages(link_msg(kind=17)) == [LinkEvent(2, "eth0", False, True)]


def test_no_name():
    assert parse_link_messages(link_msg(name=None)) == [LinkEvent(2, None, True, False)]


def test_bridge_family_ignored():
    # A bridge port leaving its bridge: RTM_DELLINK with family AF_BRIDGE.
    assert parse_link_messages(link_msg(kind=17, family=7)) == []


def test_other_types_ignored_and_sequence():
    done = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)        # NLMSG_DONE
    newaddr = struct.pack("=IHHII", 24, 20, 0, 0, 0) + b"\x00" * 8  # RTM_NEWADDR
    buf = link_msg(index=5, name="a") + newaddr + link_msg(kind=17, index=6, name="bb") + done
    assert parse_link_messages(buf) == [LinkEvent(5, "a", True, False), LinkEvent(6, "bb", False, True)]


def test_nested_flag_masked_and_unaligned_name():
    # odd-length name forces padding; a nested attribute (NLA_F_NESTED) is skipped fine
    extra = rtattr(0x8000 | 18, rtattr(1, b"xyz"))
    assert parse_link_messages(link_msg(name="vlan100", extra=extra))[0].name == "vlan100"


def test_non_utf8_name_does_not_raise():
    raw = link_msg(name="x")
    raw = raw.replace(b"x\x00", b"\xff\x00")
    assert parse_link_messages(raw)[0].name is not None


def test_empty():
    assert parse_link_messages(b"") == []


def test_every_truncation_raises_decode_error():
    buf = link_msg(index=5, name="a") + link_msg(kind=17, index=6, name="bb")
    first = len(link_msg(index=5, name="a"))
    for cut in range(1, len(buf)):
        if cut == first:
            assert len(parse_link_messages(buf[:cut])) == 1
            continue
        with pytest.raises(LinkDecodeError):
            parse_link_messages(buf[:cut])


@pytest.mark.parametrize("bad", [
    struct.pack("=IHHII", 8, 16, 0, 0, 0),              # length below header size
    struct.pack("=IHHII", 1000, 16, 0, 0, 0),           # length past buffer
    struct.pack("=IHHII", 20, 16, 0, 0, 0) + b"\0" * 4,  # ifinfomsg truncated
    link_msg()[:-8] + struct.pack("=HH", 2, 3) + b"\0" * 4,  # rtattr length < 4
])
def test_malformed(bad):
    with pytest.raises(LinkDecodeError):
        parse_link_messages(bad)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_only_decode_error(data):
    try:
        out = parse_link_messages(data)
    except LinkDecodeError:
        return
    assert all(isinstance(e, LinkEvent) for e in out)


@given(st.sampled_from([16, 17]), st.binary(max_size=120), st.integers(0, 40))
@settings(max_examples=500)
def test_random_bodies_only_decode_error(kind, body, slack):
    # a plausible header in front of random data reaches the attribute parser
    length = 16 + len(body) + (slack if slack % 2 else 0)
    data = struct.pack("=IHHII", length, kind, 0, 0, 0) + body
    try:
        parse_link_messages(data)
    except LinkDecodeError:
        pass


def _kernel_link_dump() -> list[bytes]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        s.bind((0, 0))
        s.settimeout(5)
        s.send(struct.pack("=IHHII", 32, 18, 0x301, 1, 0) + struct.pack("=BxHiII", 0, 0, 0, 0, 0))
        bufs = []
        while True:
            data = s.recv(1 << 16)
            bufs.append(data)
            pos = 0
            while pos < len(data):
                length, kind = struct.unpack_from("=IH", data, pos)
                if kind in (2, 3):  # NLMSG_ERROR / NLMSG_DONE
                    return bufs
                pos += (length + 3) & ~3
    finally:
        s.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="rtnetlink")
def test_kernel_dump_matches_pyroute2():
    """Decode a real RTM_GETLINK dump and cross-check every message with pyroute2."""
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    ours, theirs = [], []
    for data in _kernel_link_dump():
        ours += parse_link_messages(data)
        for msg in MarshalRtnl().parse(data):
            if msg["header"]["type"] in (16, 17) and msg["family"] == 0:
                flags = msg["flags"]
                theirs.append(LinkEvent(msg["index"], msg.get_attr("IFLA_IFNAME"),
                                        bool(flags & IFF_UP and flags & IFF_LOWER_UP), False))
    assert ours and ours == theirs
    assert {e.name for e in ours} >= {"lo"}
