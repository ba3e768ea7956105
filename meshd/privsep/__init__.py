"""Privilege separation: the pieces a process split needs (issue 11).

* `imsg`: length-prefixed msgpack messages between a parent and a child,
  each message type checked against its schema at the receiving end;
* `drop`: a child giving up root, its groups and every capability for an
  unprivileged user, and tying its life to its parent's;
* `backoff`: when a supervised child that died is started again (sans-I/O);
* `supervisor`: the parent's trio side: fork+exec of a child module, its
  socketpair, exit status logged, restarts with the back-off.

Must not: know what a child does (the check engine is meshd/health/engine.py,
its parent side meshd/health/remote.py).
"""
