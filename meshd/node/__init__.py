"""The node core: one node's engines and the rules between them (see core.py)."""
