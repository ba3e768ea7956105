"""Two nodes' configurations side by side: what must agree and does not,
what must differ and collides (`meshd --check --peer FILE`).

Why: firewall pairs fail most often through their files.  A file written
from the other node's by a text substitution can change a key id by
accident; both files pass `meshd --check`, and at run time each node
rejects the other's adverts as `unknown key` and both become master.  Each
finding says the setting, both values, and what the nodes would do.

Sans-I/O: two loaded Configs in, findings out.  Secrets are compared by a
keyed fingerprint (key_fingerprint), never printed; a peer file whose
secrets could not be read here is compared without them, and says so.

Must not: read files (the caller loads both), or know a wire format.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from .load import Config

FINGERPRINT_INFO = b"meshd key fingerprint v1"


@dataclass(frozen=True)
class Finding:
    level: str          # "error": the cluster breaks; "warning": it works, not as meant
    setting: str        # the setting, as written in the files ("group lan: advbase_ms")
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.setting}: {self.message}"


def key_fingerprint(secret: bytes) -> str:
    """A keyed fingerprint of a secret (HMAC with the secret as the key): the
    same secrets give the same 16 hex digits, and nothing about the secret
    can be learnt from them."""
    return hmac.new(secret, FINGERPRINT_INFO, hashlib.sha256).hexdigest()[:16]


def _ids(ids) -> str:
    return "{" + ", ".join(str(i) for i in sorted(ids)) + "}"


def _addrs(addresses) -> tuple[str, ...]:
    return tuple(sorted(str(ipaddress.ip_interface(a)) for a in addresses))


def compare(here: Config, peer: Config, peer_label: str, secrets_compared: bool = True) -> list[Finding]:
    """The findings for this node's file (`here`) against a peer's."""
    out: list[Finding] = []
    _nodes(here, peer, peer_label, out)
    _cluster(here, peer, peer_label, secrets_compared, out)
    _groups(here, peer, peer_label, out)
    _sync(here, peer, peer_label, out)
    return out


def _nodes(here: Config, peer: Config, who: str, out: list[Finding]) -> None:
    if here.node.id == peer.node.id:
        out.append(Finding("error", "node.id", f"{here.node.id} here and on {who}: each node rejects the "
                                              "other's adverts and frames as its own (duplicate node id)"))
    if here.node.name == peer.node.name:
        out.append(Finding("warning", "node.name", f"{here.node.name!r} here and on {who}: logs and "
                                                  "`meshctl` cannot tell the nodes apart"))


def _cluster(here: Config, peer: Config, who: str, secrets_compared: bool, out: list[Finding]) -> None:
    a, b = here.cluster, peer.cluster
    for name in ("port", "multicast_v4", "multicast_v6"):
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            out.append(Finding("error", f"cluster.{name}", f"{x} here, {y} on {who}: the nodes do not "
                                                          "hear each other's adverts"))
    ids_a, ids_b = {k.id for k in a.keys}, {k.id for k in b.keys}
    if ids_a != ids_b:
        common = ids_a & ids_b
        what = ("no key in common: each node rejects the other's adverts and frames as `unknown key`"
                if not common else "rotation in progress, or a key id changed by accident")
        out.append(Finding("error" if not common else "warning", "cluster keys",
                           f"here {_ids(ids_a)}, {who} {_ids(ids_b)}: {what}"))
    if a.send_key not in ids_b:
        out.append(Finding("error", "cluster.send_key", f"{a.send_key} here, and {who} has no key "
                                                        f"{a.send_key}: it rejects this node's adverts "
                                                        "and frames as `unknown key`"))
    if b.send_key not in ids_a:
        out.append(Finding("error", "cluster.send_key", f"{b.send_key} on {who}, and this file has no key "
                                                        f"{b.send_key}: this node rejects {who}'s adverts "
                                                        "and frames as `unknown key`"))
    if not secrets_compared:
        return
    for key_id in sorted(ids_a & ids_b):
        sa, sb = here.secrets.get(key_id), peer.secrets.get(key_id)
        if sa is None or sb is None:
            continue
        fa, fb = key_fingerprint(sa), key_fingerprint(sb)
        if fa != fb:
            out.append(Finding("error", f"cluster key {key_id}",
                               f"the secrets differ (fingerprint {fa} here, {fb} on {who}): adverts "
                               "signed with it are rejected as `bad mac`, frames as `bad tag`"))


def _groups(here: Config, peer: Config, who: str, out: list[Finding]) -> None:
    by_id = {g.id: g for g in peer.groups}
    for g in here.groups:
        p = by_id.pop(g.id, None)
        if p is None:
            out.append(Finding("warning", f"group {g.name}", f"id {g.id} is not on {who}: no other node "
                                                             "backs it up there"))
            continue
        label = f"group {g.name}"
        if p.name != g.name:
            out.append(Finding("warning", f"group id {g.id}", f"named {g.name!r} here, {p.name!r} on {who}"))
        rejects = f"{who} rejects this node's adverts for it as `peer config differs`, and both become master"
        if p.advbase_ms != g.advbase_ms:
            out.append(Finding("error", f"{label}: advbase_ms", f"{g.advbase_ms} here, {p.advbase_ms} on "
                                                                f"{who}: {rejects}"))
        if _addrs(p.addresses) != _addrs(g.addresses):
            only_here = sorted(set(_addrs(g.addresses)) - set(_addrs(p.addresses)))
            only_there = sorted(set(_addrs(p.addresses)) - set(_addrs(g.addresses)))
            out.append(Finding("error", f"{label}: addresses",
                               f"only here {only_here or '-'}, only on {who} {only_there or '-'}: {rejects}"))
        if bool(g.peers) != bool(p.peers):
            def mode(c) -> str:
                return "unicast" if c.peers else "multicast"
            out.append(Finding("error", f"{label}: peers",
                               f"{mode(g)} here, {mode(p)} on {who}: the unicast side only hears its "
                               "peers' addresses, the multicast side only sends to the group"))
        if g.check_ttl != p.check_ttl:
            out.append(Finding("warning", f"{label}: check_ttl", f"{g.check_ttl} here, {p.check_ttl} on {who}"))
        if (g.sync_set is None) != (p.sync_set is None):
            out.append(Finding("warning", f"{label}: sync_set", f"{g.sync_set} here, {p.sync_set} on {who}"))
    for p in by_id.values():
        out.append(Finding("warning", f"group {p.name}", f"id {p.id} is on {who} only: this node never "
                                                         "backs it up"))


def _sync(here: Config, peer: Config, who: str, out: list[Finding]) -> None:
    a, b = here.sync, peer.sync
    if (a is None) != (b is None):
        out.append(Finding("error", "sync", f"{'configured' if a else 'absent'} here, "
                                            f"{'configured' if b else 'absent'} on {who}: the flows of "
                                            "one node are lost when the other takes over"))
        return
    if a is None or b is None:
        return
    for name in ("port", "multicast_group"):
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            out.append(Finding("error", f"sync.{name}", f"{x} here, {y} on {who}: no frame arrives"))
    if a.filter != b.filter:
        fields = [f for f in ("ignore_protocols", "ignore_addresses", "ignore_tcp_states", "only_assured",
                              "expectations", "expectation_helpers")
                  if getattr(a.filter, f) != getattr(b.filter, f)]
        for f in fields:
            out.append(Finding("warning", f"sync.filter.{f}",
                               f"{getattr(a.filter, f)} here, {getattr(b.filter, f)} on {who}: the nodes "
                               "replicate different flows, and after a failback some are missing"))
    peers_a = {p.id: p.address for p in a.peers}
    peers_b = {p.id: p.address for p in b.peers}
    if peer.node.id not in peers_a:
        out.append(Finding("error", "sync.peers", f"{who} (node id {peer.node.id}) is not among this node's "
                                                  f"peers {_ids(peers_a)}: its frames are rejected as "
                                                  "`unknown sender`"))
    if here.node.id not in peers_b:
        out.append(Finding("error", "sync.peers", f"this node (id {here.node.id}) is not among {who}'s "
                                                  f"peers {_ids(peers_b)}: {who} rejects its frames as "
                                                  "`unknown sender`"))
    to_peer, to_here = a.peer(peer.node.id), b.peer(here.node.id)
    both = sorted(set(to_peer.paths) & set(to_here.paths)) if to_peer and to_here else []
    if both:
        out.append(Finding("error", "sync.peers", f"this file reaches {who} at {', '.join(both)}, and "
                                                  f"{who}'s file reaches this node at the same address: "
                                                  "one of them is wrong"))
    elif to_peer and to_here and len(to_peer.paths) != len(to_here.paths):
        # Heartbeats go over every path: a node that knows one path only takes
        # the other's copies for replays, and cannot switch when its path fails.
        out.append(Finding("error", "sync.peers", f"{len(to_peer.paths)} path(s) to {who} here "
                                                  f"({', '.join(to_peer.paths)}), {len(to_here.paths)} "
                                                  f"from {who} to this node ({', '.join(to_here.paths)}): "
                                                  "the paths between two nodes go both ways"))
    for pid, addr in peers_a.items():
        if pid not in (peer.node.id,) and pid in peers_b and peers_b[pid] != addr:
            out.append(Finding("error", "sync.peers", f"node {pid} at {addr} here, at {peers_b[pid]} on "
                                                      f"{who}"))
