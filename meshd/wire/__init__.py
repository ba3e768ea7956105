"""The wire engine: the datagrams from the network, authenticated in a
process of their own before the daemon reads them (docs/architecture.md,
"Processes").

screen.py (sans-I/O: what passes, what is refused and counted), proto.py
(the messages), engine.py (the child), remote.py (the daemon's side).
"""
