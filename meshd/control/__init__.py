"""The control socket: the server the daemon runs, its wire format, and meshctl.

* `server`: `serve_control(path, handler)`, the trio JSON Lines server;
* `protocol`: what both ends agree on (line limit, framing, answer envelopes);
* `meshctl`: the operator's client, an entry point of its own.

Callers import the module they use (`from meshd.control.server import
serve_control`); the package re-exports nothing.

Must not: import anything: every meshctl run loads this file, and meshctl is
a small blocking client that must not load trio or the daemon.
"""
