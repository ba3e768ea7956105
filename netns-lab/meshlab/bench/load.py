"""The load of the benchmark's runs, and the kinds of run.

Owns: the sizes, rates and time limits of every run (issue 4's numbers), and the run
kinds: their order, which run once per system and which once per repetition, which
are meshd's only.  The rows, the runs, the plan and the report all read them here, so
a row, the run that feeds it and the report's settings cannot disagree about a size.

Must not: import anything of the harness or the lab, or compute anything.  Constants
only; what the session itself needs (nf_conntrack_max, its defaults) is in `session`.
"""

FLOWS = 100                          # live TCP flows of the gap rows
GAP_SIZES = (0, 100_000, 200_000)    # preloaded entries of the gap rows
REPLICATION_ENTRIES = 100_000
REPLICATION_RATE = 23_000            # entries/s, as the anchor measured conntrackd
MEMORY_BIG = 500_000
LOSS_ENTRIES = 50_000
LOSS_RATE = 25_000
LOSS_PERCENTS = (20, 50)
GIVE_UP_S = 120.0                    # loss rows: the time before a system is called stuck
REPLICATION_TIMEOUT_S = 60.0         # other rows: both systems normally need well under 5 s
FLOWS_REPLICATED_S = 15.0            # the live flows' entries on fw2 before the kill
TAKEOVER_TIMEOUT_S = 20.0            # a takeover normally takes well under 5 s, even at 200k
# Rows 3-5 and 7 run meshd with commit = "takeover": a backup then only caches the peers'
# entries, as conntrackd does, and row 4's commit really creates every entry.  (The gap
# rows use the default, "continuous".)
CACHE_ONLY_COMMIT = "takeover"

# Row 8 (issue 14): a sustained churn of short flows on the master, NEW then DESTROY 2 s
# later, for 15 s; every 100th flow stays, so the peer's copy must end with exactly those.
CHURN_RATES = {"churn5k": 5_000, "churn10k": 10_000, "churn20k": 20_000}
CHURN_SECONDS = 15.0
CHURN_LIFETIME_S = 2.0
CHURN_KEEP_EVERY = 100
CHURN_PER_GENERATOR = 7_500          # new flows/s per generator process (two requests each)
CHURN_SETTLE_S = 3.0                 # after the last deletion, before the copy is compared

# Row 9 (issue 15): an HTTP relay on fw1 (meshd's relay engine, or HAProxy with one thread)
# under wrk from the client namespace; every point of load lasts RELAY_POINT_S seconds.
RELAY_CLIENTS = (1, 50, 200)         # concurrent clients (wrk connections)
RELAY_POINT_S = 3.0
RELAY_WARMUP_S = 1.0                 # per listener, before the first point
RELAY_PROFILE_S = 5.0                # py-spy on meshd's relay engine under keep-alive load

# Runs of each kind: run once per system (even in a full run) or once per repetition.
ONCE_KINDS = ("mem500k", "loss20", "loss50", *CHURN_RATES, "relay")
REPEATED_KINDS = ("gap0", "gap100k", "gap200k", "repl", "three")
KIND_ORDER = ("gap0", "gap100k", "gap200k", "repl", "mem500k", "loss20", "loss50", *CHURN_RATES, "relay",
              "three")
MESHD_ONLY_KINDS = ("three",)
