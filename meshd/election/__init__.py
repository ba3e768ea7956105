"""The election: CARP-style groups, their advert, and their trio shell.

* `core`: ElectionCore, every election rule (sans-I/O); `actions`: what it
  returns; `wire`: the 72-byte advert and `decode_advert`;
* `transport` and `shell`: the UDP sockets and the election's trio shell,
  on the shells' floor.

Callers import the module they use (`from meshd.election.core import
ElectionCore`); the package re-exports nothing.

Must not: import anything: the package is on the election core's floor, and
its shell a floor above (tests/test_layers.py).
"""
