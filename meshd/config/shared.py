"""The settings every node of a cluster must agree on, as (name, value) text
pairs that a node carries in its authenticated ABOUT frames
(proto/sync.md, 4.7), and the differences between two such lists in words.

Why text pairs: the receiver need not share this node's version of meshd to
compare them, and `meshctl cluster` shows them as they are ("group lan:
advbase_ms 100 here, 200 on fw2").  Secrets never appear: a key is carried
as its keyed fingerprint (compare.key_fingerprint); a long value (the
addresses of a group) as a short digest, compared but not shown.

Sans-I/O; the order is the order of importance, so that a list cut to fit
one datagram keeps what explains most (the keys first).
"""

from __future__ import annotations

import hashlib
import ipaddress

from .compare import key_fingerprint
from .load import Config

DIGESTED = ("addresses",)          # settings carried as a digest (too long to show)


def _digest(text: str) -> str:
    return "#" + hashlib.sha256(text.encode()).hexdigest()[:12]


def shared_settings(config: Config) -> list[tuple[str, str]]:
    c = config.cluster
    out = [("cluster keys", ",".join(str(k.id) for k in sorted(c.keys, key=lambda k: k.id)))]
    for key_id in sorted(config.secrets):
        out.append((f"cluster key {key_id}", key_fingerprint(config.secrets[key_id])))
    out += [("cluster.port", str(c.port)), ("cluster.multicast_v4", c.multicast_v4),
            ("cluster.multicast_v6", c.multicast_v6)]
    s = config.sync
    if s is not None:
        out += [("sync.port", str(s.port)), ("sync.multicast_group", str(s.multicast_group or "-"))]
        f = s.filter
        out += [("sync.filter.ignore_protocols", ",".join(map(str, sorted(f.ignore_protocols))) or "-"),
                ("sync.filter.ignore_addresses", ",".join(sorted(f.ignore_addresses)) or "-"),
                ("sync.filter.ignore_tcp_states", ",".join(sorted(f.ignore_tcp_states)) or "-"),
                ("sync.filter.only_assured", str(f.only_assured).lower())]
        if not f.expectations or f.expectation_helpers:
            # only when not the default, so that a default file digests as before the key existed
            out.append(("sync.filter.expectations", "false" if not f.expectations
                        else ",".join(sorted(f.expectation_helpers))))
    for g in sorted(config.groups, key=lambda g: g.id):
        addrs = ",".join(sorted(str(ipaddress.ip_interface(a)) for a in g.addresses))
        out += [(f"group {g.name}: id", str(g.id)),
                (f"group {g.name}: advbase_ms", str(g.advbase_ms)),
                (f"group {g.name}: addresses", _digest(addrs)),
                (f"group {g.name}: peers", "unicast" if g.peers else "multicast")]
    return out


def settings_digest(settings: list[tuple[str, str]]) -> bytes:
    """16 bytes over every pair: equal lists, equal digests (for a list cut short)."""
    h = hashlib.sha256()
    for name, value in settings:
        h.update(name.encode() + b"\0" + value.encode() + b"\0")
    return h.digest()[:16]


def _ids(text: str) -> str:
    return "{" + ", ".join(text.split(",")) + "}" if text else "{}"


def differences(here: list[tuple[str, str]], there: list[tuple[str, str]], who: str) -> list[str]:
    """Each setting that differs, in words; settings one side has and the other
    does not (a group, the state mesh) are named too."""
    a, b = dict(here), dict(there)
    out = []
    for name in [n for n, _ in here] + [n for n, _ in there if n not in a]:
        x, y = a.get(name), b.get(name)
        if x == y:
            continue
        if name == "cluster keys" and x is not None and y is not None:
            out.append(f"cluster keys: here {_ids(x)}, {who} {_ids(y)}")
        elif x is None:
            out.append(f"{name}: on {who} only ({_shown(name, y)})")
        elif y is None:
            out.append(f"{name}: here only ({_shown(name, x)}), not on {who}")
        elif name.startswith("cluster key "):
            out.append(f"{name}: the secrets differ (fingerprint {x} here, {y} on {who})")
        elif name.endswith(DIGESTED):
            out.append(f"{name}: differ (`meshd --check --peer` lists them)")
        else:
            out.append(f"{name}: {x} here, {y} on {who}")
    return out


def _shown(name: str, value: str) -> str:
    return "its value not shown" if name.endswith(DIGESTED) else value
