"""The node core: one node's engines and the rules between them.

* `core`: NodeCore, the one object the daemon and the shells talk to;
* `takeover`: the failover ordering and the adoption after it;
* `flows`: the kernel side of the state mesh (filter, merge, dumps diffed);
* `actions`: what the node asks of its shells beyond the engines' actions.

Callers import `from meshd.node.core import NodeCore`; the package
re-exports nothing.

Must not: import anything.  No module here imports trio or a shell: the
simulator (tests/sim/) runs node cores whole.
"""
