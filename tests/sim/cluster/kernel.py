"""The simulated kernel of one node: its conntrack table and its addresses.

Flows are real ctnetlink entries (the attrs a kernel event carries: tuples,
status, timeout, mark, TCP state), built here and decoded by meshd's own
decoder, so that the node core's filter, the merge of UPDATE events and
`parse_entry` see what they see in production.  A flow's *version* is its
CTA_MARK: an UPDATE writes a new version, so every change is new bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshd.kernel import ctnetlink as ct

TCP_ESTABLISHED = 3
FLOW_STATUS = ct.IPS_CONFIRMED | ct.IPS_ASSURED | ct.IPS_SEEN_REPLY
SERVER = bytes((203, 0, 113, 10))          # where the simulated clients connect to
_HDR = struct.Struct("=IHHII")


@dataclass(frozen=True)
class Tuple:
    src: bytes
    dst: bytes
    sport: int
    dport: int


def entry_attrs(t: Tuple, version: int) -> bytes:
    """The attrs of one established TCP flow, at a version (its CTA_MARK)."""
    head, tail = _halves(t)
    return head + version.to_bytes(4, "big") + tail


def _halves(t: Tuple) -> tuple[bytes, bytes]:
    """The attrs before and after the CTA_MARK value (4 bytes)."""
    def tup(tag, src, dst, sport, dport):
        return ct.nest(tag,
                       ct.nest(ct.CTA_TUPLE_IP, ct.nla(ct.CTA_IP_V4_SRC, src), ct.nla(ct.CTA_IP_V4_DST, dst)),
                       ct.nest(ct.CTA_TUPLE_PROTO, ct.nla(ct.CTA_PROTO_NUM, b"\x06"),
                               ct.nla(ct.CTA_PROTO_SRC_PORT, sport.to_bytes(2, "big")),
                               ct.nla(ct.CTA_PROTO_DST_PORT, dport.to_bytes(2, "big"))))
    protoinfo = ct.nest(ct.CTA_PROTOINFO, ct.nest(ct.CTA_PROTOINFO_TCP,
                                                  ct.nla(ct.CTA_PROTOINFO_TCP_STATE, bytes((TCP_ESTABLISHED,)))))
    head = b"".join((bytes((ct.AF_INET, 0, 0, 0)),
                     tup(ct.CTA_TUPLE_ORIG, t.src, t.dst, t.sport, t.dport),
                     tup(ct.CTA_TUPLE_REPLY, t.dst, t.src, t.dport, t.sport),
                     ct.nla(ct.CTA_STATUS, FLOW_STATUS.to_bytes(4, "big")),
                     ct.nla(ct.CTA_TIMEOUT, (432000).to_bytes(4, "big"))))
    mark = ct.nla(ct.CTA_MARK, bytes(4))
    return head + mark[:4], protoinfo


class FlowFactory:
    """Every flow of one simulation: new ones, new versions, and CtEvents for any attrs.

    Each flow has its own client address and port (a counter), so keys never
    collide; `decoded` remembers what the decoder made of each attrs seen.
    """

    def __init__(self):
        self.count = 0
        self.tuples: dict[bytes, Tuple] = {}        # key -> its tuple
        self.versions: dict[bytes, int] = {}        # key -> latest version
        self._halves: dict[bytes, tuple[bytes, bytes]] = {}
        self.decoded: dict[bytes, ct.CtEvent] = {}  # attrs -> the event the decoder made of it

    def new(self, node_id: int) -> tuple[bytes, bytes]:
        """A new flow of a client behind node `node_id`: (key, attrs)."""
        self.count += 1
        i = self.count
        t = Tuple(bytes((100, node_id & 0xFF, (i >> 8) & 0xFF, i & 0xFF)), SERVER,
                  1024 + (i >> 16), 443)
        head, tail = _halves(t)
        attrs = head + b"\0\0\0\x01" + tail
        key = self.event(ct.NEW, attrs).key
        self.tuples[key] = t
        self.versions[key] = 1
        self._halves[key] = head, tail
        return key, attrs

    def next_version(self, key: bytes) -> bytes:
        v = self.versions[key] = self.versions[key] + 1
        head, tail = self._halves[key]
        return head + v.to_bytes(4, "big") + tail

    def event(self, kind: int, attrs: bytes) -> ct.CtEvent:
        """The CtEvent the kernel reader would deliver for `attrs` (portid 0: traffic)."""
        e = self.decoded.get(attrs)
        if e is None:
            msg = _HDR.pack(ct.HDR_LEN + len(attrs), ct.CT_NEW, ct.NLM_F_CREATE, 0, 0) + attrs
            (e,) = ct.decode_events(msg)
            self.decoded[attrs] = e
        return e if e.kind == kind else e._replace(kind=kind)

    def key(self, attrs: bytes) -> bytes:
        return self.event(ct.NEW, attrs).key


@dataclass(frozen=True)
class AddressChange:
    """Addresses added to or removed from a node; with an audit, what the
    conntrack table held at that moment."""
    time: float
    group: str
    added: bool
    addresses: tuple[str, ...]
    table: frozenset | None = None


class SimKernel:
    """One node's kernel.

    table:   key -> attrs, every conntrack entry (the node's own flows and the
             peers' flows injected into it);
    local:   key -> attrs, the flows whose packets pass through this node now
             (the ground truth the state mesh should replicate);
    addresses: address -> group, and `changes`, every add and remove in order.
    """

    def __init__(self, flows: FlowFactory):
        self.flows = flows
        self.table: dict[bytes, bytes] = {}
        self.local: dict[bytes, bytes] = {}
        self.addresses: dict[str, str] = {}
        self.changes: list[AddressChange] = []

    def dump(self) -> list[ct.CtEvent]:
        """The table as a dump delivers it (kind NEW)."""
        event = self.flows.event
        return [event(ct.NEW, a) for a in self.table.values()]

    def inject(self, entries) -> None:
        """Create or replace entries (attrs), as the committer does."""
        key = self.flows.key
        table = self.table
        for attrs in entries:
            table[key(attrs)] = attrs

    def delete(self, entries) -> None:
        key = self.flows.key
        for attrs in entries:
            self.table.pop(key(attrs), None)

    def add_addresses(self, now: float, group: str, addresses, audit: bool) -> None:
        for a in addresses:
            self.addresses[a] = group
        self.changes.append(AddressChange(now, group, True, tuple(addresses),
                                          frozenset(self.table) if audit else None))

    def remove_addresses(self, now: float, group: str, addresses) -> bool:
        """Whether any of them was held."""
        held = [a for a in addresses if self.addresses.get(a) == group]
        for a in held:
            del self.addresses[a]
        if held:
            self.changes.append(AddressChange(now, group, False, tuple(held)))
        return bool(held)

    def holds(self, group: str) -> bool:
        return group in self.addresses.values()

    def reboot(self) -> None:
        self.table.clear()
        self.local.clear()
