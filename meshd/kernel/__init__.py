"""meshd's adapters to the Linux kernel: addresses, announcements, links,
conntrack, nftables, NFLOG.

Each module is a room of its own.  The bigger parts are packages whose
`__init__` re-exports every public name (`conntrack`, `ctnetlink`, `nft`):
callers import the package, not its rooms.  For the rest, callers import the
module (`from meshd.kernel import addresses as kaddr`).

Must not: import anything, or hold a rule of the cores: the adapters sit on
the engines' floor and import nothing of the election, the state mesh or the
health checks (tests/test_layers.py).
"""
