"""The part of a meshd.toml that every relay test needs and none is about: a
node, a key, a group. Each test appends its `[health]` tables and relays."""

NODE_TOML = """
[node]
id = 1
[[cluster.keys]]
id = 1
secret_file = "k1.key"
[[group]]
id = 1
name = "lan"
interface = "eth0"
addresses = ["192.0.2.1/24"]
"""
