"""The simulated cluster: N whole nodes in one process, on a simulated clock.

Each node is a real NodeCore (meshd/node/core.py: the election, the state
mesh and the health checker with every rule between them) built from a real
Config (configs.py: TOML text through parse_config), driven exactly as the
daemon drives it, with a simulated shell (shell.py) that carries its actions
out against a simulated network (network.py) and a simulated kernel per node
(kernel.py).  The cores are sans-I/O, so nothing else is needed: no sockets,
no threads, no trio, and a run is deterministic for its seed.

What is modelled, and why:

* Time: one event queue; `now` is the time of the event being handled.
  Each node's `handle_timer` runs at its `next_deadline()`, re-queried after
  every input, as the daemon's timer task does; a stale timer event (the
  deadline moved) is ignored through a per-node token.  Whatever the real
  shells do in their own trio tasks (a group's executor, the continuous
  applier, a table dump, a health check) is an event of its own here, after
  the input that started it, with the duration the scenario gives it.
* Network: adverts go to a group's segment (every other node with a group
  of that id) or its unicast peers; state-mesh frames to one peer or every
  peer.  Every copy is lost, delayed (base + jitter, so copies reorder) and
  duplicated independently, from one seeded random.Random; partitions cut
  links and are checked when a copy arrives.  The attacker sees every
  datagram (`captured`, `taps`) and can hand any bytes to any node
  (`inject`, `inject_frame`, `replay`).
* Kernel: each node's conntrack table (key -> attrs, real ctnetlink entries)
  and its addresses.  Flows created, updated and destroyed by a test reach
  the node as the CtEvents the ctnetlink reader delivers; the peers' flows get
  in through CommitFlows and the continuous applier (`kernel_changes`);
  DumpKernel is answered with the table (`kernel_table`).  Every address
  change is recorded, and with `audit=True` what the table held at that
  moment.  A flow may belong to a group's clients (`create(..., group=)`):
  they reach the node that announced the group's addresses last (on their
  side of a partition, and the next holder when it lets them go); when they
  move, the flow continues on the new node if its table has an entry for it
  (no event: an established flow's packets change nothing the kernel
  reports) and is reset otherwise (`broken`).
* Health: checks are answered from each node's `up` / `errors` maps after
  `check_latency` (an address in `hung` never answers); SetBackends is
  recorded.
* Lifecycle: kill = SIGKILL or power loss (no bow-out; its addresses count
  as gone at once, its kernel table stays); stop = graceful (node.shutdown,
  the bow-out carried out first); restart = a new NodeCore with the
  persisted epoch + 1 and the replay marks it had persisted (the daemon
  saves them every 10 s; the simulation assumes the last ones reached the
  disk), `reboot=True` empties its kernel first; reload = Daemon.reload's
  steps (meshd/reload.py decides, NodeCore.reconfigure applies).

Not modelled: bandwidth, CPU time of the cores (an input takes no simulated
time), address lifetimes, hooks, the ReadFirst ordering of the election's
timer (there is no socket buffer to read first).
"""

from .configs import (
                      ELECTION_KEYS,
                      HTTP,
                      HTTP_SPEC,
                      OTHER_ELECTION_KEYS,
                      OTHER_SYNC_KEYS,
                      SECRET,
                      SECRETS,
                      SYNC_KEYS,
                      TCP,
                      TCP_SPEC,
                      WEB,
                      address,
                      group,
                      health,
                      health_config,
                      health_node,
                      mesh,
                      node,
                      parse,
                      quiet_group,
                      redirect,
                      sync,
                      table,
)
from .forgery import expected_flip_reason, flip_bit, reencode
from .kernel import FlowFactory, SimKernel
from .network import ADVERT, FRAME, Datagram, Network
from .shell import SimNode
from .simulation import AddressAudit, BrokenFlow, Cluster, Transition

__all__ = [
    "ADVERT", "ELECTION_KEYS", "FRAME", "HTTP", "HTTP_SPEC", "OTHER_ELECTION_KEYS", "OTHER_SYNC_KEYS",
    "SECRET", "SECRETS", "SYNC_KEYS", "TCP", "TCP_SPEC", "WEB", "AddressAudit", "BrokenFlow", "Cluster",
    "Datagram", "FlowFactory", "Network", "SimKernel", "SimNode", "Transition", "address",
    "expected_flip_reason", "flip_bit", "group", "health", "health_config", "health_node", "mesh", "node",
    "parse", "quiet_group", "redirect", "reencode", "sync", "table",
]
