"""The cluster as this node hears it (`meshctl cluster`), and the split-brain rule.

Sans-I/O.  The sources: the election core's peer table (adverts: who is
master of what, when last heard), the state mesh's peers (frames, lags) and
their ABOUT frames (name, version, every group's state and demotion as the
peer sees it, the shared settings: meshd/config/shared.py).

Split brain: two nodes claiming MASTER of one group.  A preemption or a
failover has both for up to an advert interval, and an ABOUT can be sent in
that moment; so a claim counts only when it holds for SPLIT_BRAIN_CONFIRM_S
(more than one ABOUT interval: two ABOUTs in a row said so).

Must not: log or touch anything (the daemon logs SplitBrain events).
"""

from __future__ import annotations

from ..config.shared import differences, settings_digest, shared_settings
from .actions import SplitBrain

SPLIT_BRAIN_CONFIRM_S = 3.0


def masters(node) -> dict[str, set[int]]:
    """Per group name: the nodes that claim MASTER (this one, and peers by their ABOUT)."""
    e = node.election
    by_id = {g.config.id: g.config.name for g in e.groups.values()}
    out = {name: set() for name in by_id.values()}
    for g in e.groups.values():
        if g.state.value == "MASTER":
            out[g.config.name].add(e.node_id)
    if node.sync is not None:
        for pid, (about, _heard) in node.sync.peer_about().items():
            for grp in (about or {}).get("groups", ()):
                name = by_id.get(grp["id"])
                if name is not None and grp["state"] == "MASTER" and not node.sync.peers[pid].absent:
                    out[name].add(pid)
    return out


class SplitBrainWatch:
    """Which groups have two masters, since when; the events when that changes."""

    def __init__(self):
        self.suspected: dict[str, float] = {}       # group -> first seen with two masters
        self.confirmed: dict[str, tuple[int, ...]] = {}
        self.count = 0                               # split brains confirmed since start

    def update(self, claims: dict[str, set[int]], now: float) -> list[SplitBrain]:
        out = []
        for group, nodes in claims.items():
            if len(nodes) > 1:
                since = self.suspected.setdefault(group, now)
                if group not in self.confirmed and now - since >= SPLIT_BRAIN_CONFIRM_S:
                    self.confirmed[group] = tuple(sorted(nodes))
                    self.count += 1
                    out.append(SplitBrain(group, self.confirmed[group], True))
            else:
                self.suspected.pop(group, None)
                if group in self.confirmed:
                    out.append(SplitBrain(group, self.confirmed.pop(group), False))
        return out


KEY_HINT_S = 10.0         # an unknown-key reject this recent explains a silent peer


def _key_hint(last: dict | None, keys_here: str) -> str | None:
    """What a recent `unknown key` reject of a peer's frames says about the keys."""
    if last is None or last["reason"] != "unknown key" or last["ago_s"] > KEY_HINT_S:
        return None
    return (f"cluster keys: its frames are sealed under {last['detail']}, the cluster keys here are "
            f"{keys_here} (its cluster.send_key, or cluster.keys here; from the frames' clear header)")


def cluster_view(node, now: float) -> dict:
    """The `cluster` answer: this node, then every node it hears."""
    e, s, cfg = node.election, node.sync, node.config
    here = shared_settings(cfg)
    nodes: dict[int, dict] = {}

    def entry(pid: int) -> dict:
        return nodes.setdefault(pid, {"id": pid, "name": None, "version": None, "epoch": None,
                                      "groups": [], "adverts": {}, "sync": None, "settings": None})

    for g in e.groups.values():
        for pid, peer in g.peers.items():
            entry(pid)["adverts"][g.config.name] = {
                "last_heard_ago_s": round(now - peer["last_seen"], 3), "demotion": peer["demotion"],
                "advskew": peer["advskew"], "source": peer["source"]}
    if s is not None:
        names = {g.config.id: g.config.name for g in e.groups.values()}
        rejects = s.peer_rejects(now)
        keys_here = "{" + ", ".join(str(k.id) for k in sorted(cfg.cluster.keys, key=lambda k: k.id)) + "}"
        for pid, (about, heard) in s.peer_about().items():
            n, p = entry(pid), s.peers[pid]
            summary = p.summary(now)
            lag_out = None
            if p.mcast_cum is not None:
                lag_out = s.mcast.seq - p.mcast_cum
            n["epoch"] = p.epoch
            n["sync"] = {"absent": p.absent, "last_frame_ago_s": summary["since_last_frame_s"],
                         "lag_in_frames": summary["in"]["mcast"]["lag"], "lag_out_frames": lag_out,
                         "missing_in": summary["in"]["mcast"]["missing"],
                         "external_entries": summary["in"]["external_entries"],
                         "rejected": rejects[pid]["counts"], "last_reject": rejects[pid]["last"]}
            hint = _key_hint(rejects[pid]["last"], keys_here)
            if about is None:
                if hint:
                    n["settings"] = {"agree": False, "complete": False, "differences": [hint]}
                continue
            n["name"], n["version"] = about["name"], about["version"]
            n["about_ago_s"] = round(now - heard, 3)
            n["groups"] = [{"name": names.get(g["id"], f"id {g['id']}"), "id": g["id"], "state": g["state"],
                            "demotion": g["demotion"]} for g in about["groups"]]
            diffs = differences(here, about["settings"], about["name"] or f"node {pid}")
            agree = about["settings_digest"] == settings_digest(here)
            if not agree and not diffs:
                diffs = ["settings beyond those carried differ (`meshd --check --peer` compares the files)"]
            if hint:
                diffs.append(hint)
                agree = False
            n["settings"] = {"agree": agree, "complete": about["complete"], "differences": diffs}
    claims = masters(node)
    return {
        "node": {"id": e.node_id, "name": cfg.node.name, "epoch": e.epoch, "in_sync": node.in_sync,
                 "groups": [{"name": g.config.name, "id": g.config.id, "state": g.state.value,
                             "demotion": e.group_demotion(g)} for g in e.groups.values()]},
        "nodes": [nodes[k] for k in sorted(nodes)],
        "masters": {g: sorted(v) for g, v in claims.items()},
        "split_brain": {g: list(v) for g, v in node.split_brain.confirmed.items()},
        "split_brains_seen": node.split_brain.count,
    }
