"""Health checks of backend hosts and the load-balancing state they drive (relayd / l4ip style).

* `core`: HealthCore, every scheduling and redirect rule (sans-I/O), with
  `model` (one host's counting), `schedule` (when checks run) and `actions`;
* `checkspec`: what a check is and what it found, shared with the
  configuration;
* `checks`, `icmp`, `scriptpool`: the check runners (trio);
* `engine`: the check engine, the unprivileged child process that runs the
  network checks; `engineproto`: its messages; `remote`: `EngineRunner`, the
  daemon's side of it;
* `shell`: the health shell; `report`: what `meshctl show` prints.

Callers import the module they use (`from meshd.health.core import
HealthCore`); the package re-exports nothing.

Must not: import anything: its modules sit on four floors (checkspec on the
lowest, the core and the runners on the engines', the shell and `remote` on
the shells', `engine` with the entry points),
and the configuration loads this file when it imports checkspec.
"""
