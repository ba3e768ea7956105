"""commit_scope = "group": which replicated flows touch a group's networks."""

import json
from pathlib import Path

from meshd.kernel import ctnetlink as ct
from meshd.node.takeover import touches as _touches

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "proto" / "vectors" / "ctnetlink.json").read_text())


def attrs_of(name: str) -> bytes:
    v = next(v for v in VECTORS["vectors"] if v["name"] == name)
    return ct.decode_events(bytes.fromhex(v["hex"]))[0].attrs


def test_a_flow_touches_the_groups_whose_networks_hold_one_of_its_addresses():
    attrs = attrs_of("ipv4_tcp_new")              # 192.168.100.2 -> 10.0.2.2, captured from the kernel
    assert _touches(attrs, ("10.0.2.1/24",))
    assert _touches(attrs, ("192.168.100.1/24", "2001:db8::1/64"))
    assert not _touches(attrs, ("203.0.113.1/24",))
    assert not _touches(attrs, ("2001:db8::1/64",))
