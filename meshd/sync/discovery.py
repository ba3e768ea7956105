"""Discovery's rules (sans-I/O): what an announcement heard on the sync link is.

`[sync] discover = true` makes each node announce itself by DNS-SD (the
shell's side: meshd/sync/mdns.py) with its node id, name, sync port and a
keyed fingerprint of the cluster key (`fingerprint`).  This table holds
what was heard and decides, for each announcement, what it is
(proto/sync.md, 3.2):

* this node itself, a node of another cluster (fingerprint differs), a node
  on another sync port: listed, nothing else;
* a configured peer: configured peers take precedence; one announced at
  another address than its configured one is ignored (and listed so);
* a peer found earlier by discovery: announced at another address than the
  one it proved the key from, ignored;
* otherwise a *candidate* of the sync core (SyncCore.add_candidate): sent
  bounded heartbeats, and a peer only once it has proved the key in the
  state mesh's own authenticated exchange (membership.promote).

An announcement is unauthenticated (anyone on the link can send one): it
never adds a peer, changes a cache or opens a port here.  The addresses
this table hands the shell for a candidate are where its heartbeats go,
at most MAX_ADDRESSES per node id, at most MAX_HEARD announcements held.

Must not: touch a socket or zeroconf, read a clock, log.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

DISCOVERY_INFO = b"meshd discovery v1"
SERVICE_TYPE = "_meshd-sync._udp.local."
MAX_HEARD = 64            # announcements held (a flood of them is refused beyond)
MAX_ADDRESSES = 4         # addresses per candidate node id that heartbeats go to


def fingerprint(secret: bytes) -> str:
    """HMAC-SHA256(secret, "meshd discovery v1"), first 8 bytes in hex: the same
    key gives the same value on every node, and nothing about the secret."""
    return hmac.new(secret, DISCOVERY_INFO, hashlib.sha256).hexdigest()[:16]


@dataclass
class Heard:
    """One announcement, as the shell decoded it."""
    key: str                  # the service instance name
    node: int | None
    name: str
    address: str
    port: int | None
    fingerprint: str
    first_heard: float
    last_heard: float
    reason: str = ""


class DiscoveryTable:
    """What discovery heard, and which of it the sync core tries as a candidate.

    Args:
        node_id: this node.
        port: this node's sync port (a node on another port cannot be a peer).
        fingerprints: this node's cluster-key fingerprints (every key held, so
            that nodes in the middle of a key rotation still find each other).
        configured: the configured peers, id -> address.
        sync: the SyncCore (add_candidate, remove_candidate, peers, discovered).
    """

    def __init__(self, node_id: int, port: int, fingerprints, configured: dict[int, str], sync):
        self.node_id = node_id
        self.port = port
        self.fingerprints = frozenset(fingerprints)
        self.configured = dict(configured)
        self.sync = sync
        self.heard: dict[str, Heard] = {}
        self.peer_address: dict[int, str] = {}     # discovered peer -> the address it proved from
        self.refused = 0
        self.version = 0          # raised at every decision: the shell refreshes its address maps

    # ------------------------------------------------------------------ inputs

    def announced(self, key: str, node: int | None, name: str, address: str, port: int | None,
                  fp: str, now: float) -> None:
        """An announcement (new or updated) heard; the caller routes any actions
        of the sync core afterwards (candidates send only from its timer)."""
        h = self.heard.get(key)
        if h is None:
            if len(self.heard) >= MAX_HEARD:
                self.refused += 1
                return
            h = self.heard[key] = Heard(key, node, name, _norm(address), port, fp, now, now)
        else:
            h.node, h.name, h.address, h.port, h.fingerprint, h.last_heard = \
                node, name, _norm(address), port, fp, now
        self._decide(now)

    def withdrawn(self, key: str, now: float) -> None:
        """An announcement removed (its node said goodbye, or its TTL ran out)."""
        if self.heard.pop(key, None) is not None:
            self._decide(now)

    def promoted(self, node: int, address: str | None, now: float) -> None:
        """The sync core made candidate `node` a peer, from a frame of `address`:
        that address is its own from now on (frames go there)."""
        if address is not None:
            self.peer_address[node] = _norm(address)
        self._decide(now)

    def reconfigure(self, port: int, fingerprints, configured: dict[int, str], now: float) -> None:
        self.port = port
        self.fingerprints = frozenset(fingerprints)
        self.configured = dict(configured)
        for pid in list(self.peer_address):
            if pid in self.configured or pid not in self.sync.peers:
                del self.peer_address[pid]
        self._decide(now)

    # ------------------------------------------------------------------ queries

    def candidate_addresses(self, node: int) -> list[str]:
        """Where the heartbeats to candidate `node` go."""
        return [h.address for h in self.heard.values()
                if h.node == node and h.reason == "not proven yet"][:MAX_ADDRESSES]

    def addresses(self) -> dict[str, int]:
        """address -> node id, for the receive path's hint: discovered peers' own
        addresses and candidates' announced ones."""
        out = {a: pid for pid, a in self.peer_address.items()}
        for cid in self.sync.candidates:
            for a in self.candidate_addresses(cid):
                out.setdefault(a, cid)
        return out

    def peer_addresses(self) -> dict[str, int]:
        """address -> node id of the discovered peers (proven): where frames to
        them go, and whom the flood guard admits."""
        return {a: pid for pid, a in self.peer_address.items() if pid in self.sync.peers}

    def view(self, now: float) -> dict:
        """`meshctl discover`: every announcement heard, and why it was or was not taken."""
        rows = []
        for h in sorted(self.heard.values(), key=lambda h: (h.node or 0, h.address)):
            reason = h.reason
            at = self.sync.discovered.get(h.node)
            if reason == "taken as peer" and at is not None:
                reason = f"taken as peer since {round(now - at, 1)} s ago"
            rows.append({"node": h.node, "name": h.name, "address": h.address, "port": h.port,
                         "fingerprint": h.fingerprint, "reason": reason,
                         "peer": h.reason == "taken as peer",
                         "first_heard_ago_s": round(now - h.first_heard, 3),
                         "last_heard_ago_s": round(now - h.last_heard, 3)})
        return {"node": self.node_id, "fingerprint": sorted(self.fingerprints), "heard": rows,
                "announcements_refused": self.refused,
                "candidates": sorted(self.sync.candidates),
                "discovered_peers": {pid: {"address": self.peer_address.get(pid),
                                           "since_ago_s": round(now - at, 3)}
                                     for pid, at in sorted(self.sync.discovered.items())}}

    # ------------------------------------------------------------------ the rules

    def _reason(self, h: Heard) -> str:
        sync = self.sync
        if h.node is None:
            return "malformed announcement: no node id"
        if h.node == self.node_id:
            return "this node" if h.fingerprint in self.fingerprints else \
                "this node's id, another cluster: fingerprint differs"
        if h.fingerprint not in self.fingerprints:
            return "other cluster: fingerprint differs"
        if h.port != self.port:
            return f"sync port {h.port}, ours is {self.port}: ignored"
        if h.node in self.configured:
            if _norm(self.configured[h.node]) == h.address:
                return "configured peer"
            return f"configured peer, at {self.configured[h.node]}: announcement ignored"
        if h.node in sync.discovered and h.node in sync.peers:
            mine = self.peer_address.get(h.node)
            if mine is not None and mine != h.address:
                return f"taken as peer at {mine}: announcement at another address ignored"
            return "taken as peer"
        return "not proven yet"

    def _decide(self, now: float) -> None:
        """Every announcement's reason, and the sync core's candidates to match."""
        self.version += 1
        want: list[int] = []
        addresses: dict[int, int] = {}
        for h in sorted(self.heard.values(), key=lambda h: h.first_heard):
            h.reason = self._reason(h)
            if h.reason == "not proven yet":
                n = addresses.get(h.node, 0)
                if n >= MAX_ADDRESSES:
                    h.reason = f"not proven yet; {MAX_ADDRESSES} addresses of node {h.node} tried already"
                    continue
                addresses[h.node] = n + 1
                if h.node not in want:
                    want.append(h.node)
        sync = self.sync
        for cid in [c for c in sync.candidates if c not in want]:
            sync.remove_candidate(cid)
        for cid in want:
            if cid not in sync.candidates and not sync.add_candidate(cid, now):
                for h in self.heard.values():
                    if h.node == cid and h.reason == "not proven yet":
                        h.reason = "not proven yet; the candidate table is full"


def _norm(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return address
