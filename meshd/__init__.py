"""meshd: a high-availability daemon for Linux firewalls.

An authenticated CARP-style election, a conntrack state mesh and health
checks, each a sans-I/O core with a thin trio shell (docs/architecture.md
maps the modules).  This module holds only `__version__`; the entry points
are meshd/cli.py (`meshd`) and meshd/control/meshctl.py (`meshctl`).

Must not: import anything: every module, on every floor, may import this one
(tests/test_layers.py places it on the lowest).
"""

__version__ = "0.1.0"
