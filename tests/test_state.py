from pathlib import Path

import pytest

from meshd.state import StateError, StateStore


def test_epoch_rises_at_every_start_even_with_the_clock_behind(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure()
    first = store.next_epoch(wall_clock=1000)
    assert first == 1000
    assert store.next_epoch(wall_clock=10) == 1001      # clock stepped back: stored wins
    assert store.next_epoch(wall_clock=5000) == 5000    # clock is a floor after a lost file
    assert Path(tmp_path, "epoch").read_text().strip() == "5000"


def test_lost_epoch_file_restarts_from_the_clock(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure()
    store.next_epoch(wall_clock=1000)
    Path(tmp_path, "epoch").unlink()
    assert store.next_epoch(wall_clock=2000) == 2000


def test_corrupt_epoch_file_is_a_clear_error(tmp_path):
    Path(tmp_path, "epoch").write_text("garbage")
    with pytest.raises(StateError, match="unreadable epoch"):
        StateStore(str(tmp_path)).next_epoch()


def test_replay_marks_round_trip(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure()
    assert store.load_replay_marks() == {}
    marks = {(2, 1): (1000, 77), (3, 9): (1001, 5)}
    store.save_replay_marks(marks)
    assert store.load_replay_marks() == marks


def test_corrupt_replay_marks_are_a_clear_error(tmp_path):
    Path(tmp_path, "replay.json").write_text("{not json")
    with pytest.raises(StateError, match="unreadable replay marks"):
        StateStore(str(tmp_path)).load_replay_marks()


def test_unwritable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot create state directory"):
        StateStore(str(blocker / "sub")).ensure()


def test_sync_marks_keyed_by_node_id_round_trip(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure()
    store.save_replay_marks({2: (1000, 77), 3: (1001, 5)}, "sync-replay.json")
    assert store.load_replay_marks("sync-replay.json") == {2: (1000, 77), 3: (1001, 5)}
    assert store.load_replay_marks() == {}   # the election's file is separate


class FakeClock:
    """time.time and time.sleep of a simulated wall clock."""

    def __init__(self, t: float):
        self.t = t
        self.slept = 0.0

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.t += seconds


def test_a_crash_loop_then_a_lost_state_dir_never_reuses_an_epoch(tmp_path, monkeypatch):
    """Issue 11: epochs of a crash loop ran ahead of the clock (stored + 1 at
    each start, several starts a second), so the clock floor after a lost
    state_dir gave an epoch already used; the election's adverts of the new
    start were refused, old ones of the earlier start accepted.  An epoch is
    now used only once the clock has passed it, so the floor is above every
    epoch used before."""
    import meshd.state

    clock = FakeClock(1_700_000_000.25)
    monkeypatch.setattr(meshd.state.time, "time", clock.time)
    monkeypatch.setattr(meshd.state.time, "sleep", clock.sleep)
    store = StateStore(str(tmp_path / "state"))
    store.ensure()
    used = []
    for _ in range(20):                  # restarted 0.05 s after each start
        used.append(store.next_epoch())
        clock.t += 0.05
    assert used == sorted(set(used))
    for d in (tmp_path / "state").iterdir():
        d.unlink()                       # the state_dir is lost
    for _ in range(5):
        epoch = store.next_epoch()
        assert epoch not in used, f"epoch {epoch} used again"
        used.append(epoch)
        clock.t += 0.05
    assert clock.slept < 20 * 1.05 + 5   # at most one second per start


def test_a_clock_far_behind_the_stored_epoch_is_not_waited_for(tmp_path, monkeypatch):
    """A clock stepped back (no RTC) is not a crash loop: no wait of years."""
    import meshd.state

    clock = FakeClock(1_000.0)
    monkeypatch.setattr(meshd.state.time, "time", clock.time)
    monkeypatch.setattr(meshd.state.time, "sleep", clock.sleep)
    Path(tmp_path, "epoch").write_text("1700000000\n")
    assert StateStore(str(tmp_path)).next_epoch() == 1_700_000_001
    assert clock.slept == 0
