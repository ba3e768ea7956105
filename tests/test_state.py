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
