"""The whole state of a core, as a comparable value: "no invalid input changes
state" is snapshot(core) before == after.

The walk follows attributes, dicts, lists, sets, deques and dataclasses (slots
too), down from the core; what it leaves out is named here, and only counters
of rejects (the documented effect of a reject) and cryptographic objects
(AESGCM contexts hold no state a frame can change) are left out.

Must not: change what it walks.
"""

from __future__ import annotations

import enum
from collections import Counter, deque

# Attribute names that a rejected input is documented to change: the reject
# counters, the last reject of a peer's frames (Peer.last_reject, a hint for
# `meshctl cluster`), and the sync core's scratch of the input being handled
# (its `now`, the actions gathered and whom the datagram just received was
# heard from, SyncCore.__init__), which every input sets.
SKIP_ATTRS = frozenset({"rejected", "now", "out", "last_reject", "heard_from"})
SKIP_COUNTER_KEYS = ("bytes received", "rejected: ")
ATOM_TYPES = frozenset({int, float, str, bytes, bool, type(None)})


def snapshot(obj, skip: frozenset = SKIP_ATTRS):
    atoms = ATOM_TYPES
    on_path: set[int] = set()

    def walk(x, depth=0):
        t = type(x)
        if t in atoms or isinstance(x, enum.Enum):
            return x
        if depth > 40:
            return "<deep>"
        if id(x) in on_path:
            return ("<ref>", t.__name__)
        if t.__module__.startswith("cryptography"):
            return ("<opaque>", t.__name__)
        on_path.add(id(x))
        try:
            d = depth + 1
            if t is Counter:
                return ("Counter", tuple(sorted(((k, v) for k, v in x.items() if v and not
                                                 (type(k) is str and k.startswith(SKIP_COUNTER_KEYS))),
                                                key=repr)))
            if isinstance(x, dict):
                if atoms.issuperset(map(type, x.values())):   # at C speed: the caches are big
                    return ("dict", tuple(x.items()))
                return ("dict", tuple((k if type(k) in atoms else walk(k, d), walk(v, d)) for k, v in x.items()))
            if isinstance(x, (list, tuple, deque)):
                if atoms.issuperset(map(type, x)):
                    return (t.__name__, tuple(x))
                return (t.__name__, tuple(walk(v, d) for v in x))
            if isinstance(x, (set, frozenset)):
                return ("set", tuple(sorted((walk(v, d) for v in x), key=repr)))
            if callable(x) and not hasattr(x, "__dict__"):
                return ("<callable>", t.__name__)
            fields = dict(vars(x)) if hasattr(x, "__dict__") else {}
            for cls in t.__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(x, name):
                        fields[name] = getattr(x, name)
            return (t.__name__, tuple((k, walk(v, d)) for k, v in sorted(fields.items())
                                      if k not in skip and not k.startswith("__")))
        finally:
            on_path.discard(id(x))

    return walk(obj)


def difference(a, b, path="core") -> str:
    """Where two snapshots first differ (for a finding's message)."""
    if type(a) is not type(b) or not isinstance(a, tuple):
        return f"{path}: {a!r:.120} -> {b!r:.120}"
    if len(a) != len(b):
        return f"{path}: length {len(a)} -> {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            label = x[0] if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) else i
            return difference(x[1] if label != i else x, y[1] if label != i else y, f"{path}.{label}")
    return f"{path}: equal"
