"""kernel/leases.py against the real kernel: addresses that expire unless renewed.

The code under test runs in a python subprocess inside a throw-away namespace;
the test reads the namespace's addresses from outside with `ip`.
"""

import json
import os
import time

import pytest

from netns import Netns

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

V4, V6 = "192.0.2.1/24", "2001:db8:1::1/64"

# Holds V4 and V6 with a 1 s lifetime while the main thread keeps the GIL busy
# with pure Python (as the daemon's commit and dump loops do), then stops
# feeding (a wedged loop), then exits without removing anything (a crash).
LEASE_SCRIPT = r"""
import json, sys, time
from meshd.kernel.addresses import add_addresses_detail
from meshd.kernel.leases import AddressLeases, LOOP_STALL_LIMIT
events = []
log = lambda event, **kw: events.append(event)
leases = AddressLeases(1, log)
leases.start()
V = tuple(sys.argv[1:3])
assert add_addresses_detail("va", V, 1) == {}
leases.hold("va", V)
print("held", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:          # busy: the GIL is wanted all the time
    leases.feed()
    sum(i * i for i in range(20000))
print("stalled", flush=True)
time.sleep(LOOP_STALL_LIMIT + 2.5)      # no feed: renewals pause, the kernel drops them
print(json.dumps({"events": events, "renewals": leases.renewals, "errors": leases.errors}), flush=True)
sys.stdin.readline()                    # then wait to be killed
"""


@pytest.fixture
def ns():
    n = Netns()
    try:
        n.ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
        n.ip("link", "set", "va", "up")
        n.ip("link", "set", "vb", "up")
        yield n
    finally:
        n.close()


def present(ns: Netns) -> set[str]:
    info = json.loads(ns.ip("-j", "addr", "show", "dev", "va").stdout)[0]["addr_info"]
    return {f"{a['local']}/{a['prefixlen']}" for a in info}


def test_renewed_while_fed_expire_when_not(ns):
    busy_s = 6.0
    p = ns.start_py(LEASE_SCRIPT, V4, V6, busy_s)
    assert p.stdout.readline().strip() == "held"
    start = time.monotonic()
    missing = []
    while time.monotonic() - start < busy_s - 0.5:   # several lifetimes under a busy GIL
        have = present(ns)
        if not {V4, V6} <= have:
            missing.append((round(time.monotonic() - start, 2), sorted(have)))
        time.sleep(0.05)
    assert not missing, f"a held address lapsed while the loop was fed: {missing}"
    assert p.stdout.readline().strip() == "stalled"
    stalled_at = time.monotonic()
    gone_at = None
    while time.monotonic() - stalled_at < 3.0 + 1.5 + 8:
        if not {V4, V6} & present(ns):
            gone_at = time.monotonic()
            break
        time.sleep(0.05)
    assert gone_at is not None, "the addresses of a wedged loop did not expire"
    # LOOP_STALL_LIMIT (3 s) + the 1 s lifetime + the kernel's rounding, and
    # its lifetime check is deferrable work that an idle CPU runs late
    # (architecture.md, "Addresses that expire")
    assert gone_at - stalled_at < 3.0 + 1.5 + 6, gone_at - stalled_at
    report = json.loads(p.stdout.readline())
    assert report["events"] == ["address_renewal_paused"], report
    assert report["renewals"] >= 2 * 5 * (busy_s - 1), report       # 2 addresses, 5 per second
    assert report["errors"] == 0


RELEASE_SCRIPT = r"""
import sys, time
from meshd.kernel.addresses import add_addresses_detail, remove_addresses
from meshd.kernel.leases import AddressLeases
leases = AddressLeases(1, lambda *a, **k: None)
leases.start()
V = (sys.argv[1],)
add_addresses_detail("va", V, 1)
leases.hold("va", V)
for _ in range(200):                   # release + remove races the renewals
    leases.feed()
    leases.release("va", V)
    assert remove_addresses("va", V) == []
    add_addresses_detail("va", V, 1)
    leases.hold("va", V)
    time.sleep(0.003)
leases.release("va", V)
remove_addresses("va", V)
time.sleep(0.6)                         # three renewal periods
print("done", flush=True)
sys.stdin.readline()
"""


def test_released_addresses_are_never_recreated(ns):
    p = ns.start_py(RELEASE_SCRIPT, V4)
    assert p.stdout.readline().strip() == "done"
    assert V4 not in present(ns)
