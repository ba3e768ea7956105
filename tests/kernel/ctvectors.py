"""The ctnetlink golden vectors (proto/vectors/ctnetlink.json), for the codec's tests."""

from __future__ import annotations

import json
from pathlib import Path

from meshd.kernel import ctnetlink as ct

REPO = Path(__file__).resolve().parents[2]
DATA = json.loads((REPO / "proto/vectors/ctnetlink.json").read_text())


def raw(v) -> bytes:
    return bytes.fromhex(v["hex"])


class Vectors:
    """One section of the file ("vectors", "expect_vectors"): by name, as bytes, decoded."""

    def __init__(self, section: str):
        self.items = DATA[section]
        self.ids = [v["name"] for v in self.items]

    def vector(self, name: str):
        return next(v for v in self.items if v["name"] == name)

    def event(self, name: str) -> ct.CtEvent:
        (ev,) = ct.decode_events(raw(self.vector(name)))
        return ev
