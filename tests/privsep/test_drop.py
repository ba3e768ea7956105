"""What counts as a process that dropped its privileges (/proc/PID/status)."""

from meshd.privsep.drop import check_status, parse_status

DROPPED = """Name:\tpython3
Uid:\t65534\t65534\t65534\t65534
Gid:\t65534\t65534\t65534\t65534
Groups:\t
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000003000
CapAmb:\t0000000000000000
NoNewPrivs:\t1
"""


def test_a_dropped_process_passes():
    assert check_status(parse_status(DROPPED), 65534, 65534) == []


def test_every_leftover_is_named():
    status = parse_status(DROPPED.replace("Uid:\t65534\t65534\t65534\t65534", "Uid:\t65534\t0\t65534\t65534")
                          .replace("CapEff:\t0000000000000000", "CapEff:\t0000000000001000")
                          .replace("Groups:\t", "Groups:\t0")
                          .replace("NoNewPrivs:\t1", "NoNewPrivs:\t0"))
    problems = check_status(status, 65534, 65534)
    assert len(problems) == 4
    assert any(p.startswith("Uid is") for p in problems)
    assert any(p.startswith("CapEff is '0000000000001000'") for p in problems)
    assert any(p.startswith("Groups is") for p in problems)
    assert any(p.startswith("NoNewPrivs is '0'") for p in problems)


def test_missing_fields_fail():
    assert len(check_status({}, 1, 1)) == 6
