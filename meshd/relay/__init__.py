"""The relay engine (issue 15): layer-7 relays (TCP, HTTP/HTTPS, DNS) on the
health tables that the layer-3 redirects use. See docs/relays.md.

* sans-I/O: `interface` (what a protocol handler gets), `balance` (which
  backend), `proto` (the engine's messages), `sockopts`, `report` (meshctl's text);
* the daemon's side: `listeners` (bound as root, IP_FREEBIND), `remote`
  (`RelayEngine`: supervision, table health, drains, queries);
* the engine child: `engine`, `upstream` (the `Upstream`), `tcp` (splice),
  `tls` (contexts); the protocol handlers `http` and `dns`/`dnsrelay`.
"""
