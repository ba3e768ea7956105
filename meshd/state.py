"""Persisted node state: the boot epoch and the replay high-water marks.

The epoch must be on disk before the first advert of a boot is sent: a sender
that restarts with an old epoch would have its adverts refused as replays.
And it is handed out only once the wall clock has passed it, so that epochs
never run ahead of the clock (a crash loop): then a lost file's clock floor
is above every epoch used before, and no epoch recurs.
Writes are atomic (temporary file, fsync, rename) so a crash mid-write leaves
the previous value, never a torn file.

Must not: decide what is saved or when (the daemon saves the replay marks every
REPLAY_SAVE_INTERVAL and at stop, and raises the epoch once per start), or
leave a torn file behind: every write is the temporary file and the rename.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# A start waits at most this long for the clock to pass its epoch (a crash
# loop of more than one start a second); a longer wait means a clock stepped back.
MAX_EPOCH_WAIT = 2.0


class StateError(Exception):
    pass


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


class StateStore:
    def __init__(self, directory: str):
        self.dir = Path(directory)
        self.epoch_file = self.dir / "epoch"
        self.replay_file = self.dir / "replay.json"

    def ensure(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"cannot create state directory {self.dir}: {e.strerror}") from None

    def next_epoch(self, wall_clock: float | None = None) -> int:
        """Raise and persist the boot epoch.

        The wall clock is only a floor, for when the file was lost: the epoch is
        never below the stored one plus one, so a clock stepped backwards cannot
        reuse epochs (a clock ahead of it makes the epoch jump to the clock).

        With the real clock (wall_clock None), it returns only once the clock
        has passed the epoch's second (epoch + 1), sleeping up to about a
        second: a start then never uses an epoch ahead of the clock, so after
        a lost file the floor, the clock's second at a later start, is above
        every epoch used (proto/election.md, section 3).  A clock more than
        MAX_EPOCH_WAIT behind the epoch is a clock stepped back, not a crash
        loop, and is not waited for.
        """
        stored = 0
        try:
            stored = int(self.epoch_file.read_text().strip())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            raise StateError(f"{self.epoch_file}: unreadable epoch ({e}); "
                             "remove it to restart epochs from the clock") from None
        floor = int(time.time() if wall_clock is None else wall_clock)
        epoch = max(stored + 1, floor)
        if epoch >= 2**32:
            raise StateError(f"{self.epoch_file}: epoch {epoch} exceeds 32 bits")
        try:
            _atomic_write(self.epoch_file, f"{epoch}\n")
        except OSError as e:
            raise StateError(f"cannot persist epoch to {self.epoch_file}: {e.strerror}") from None
        if wall_clock is None:
            wait = epoch + 1 - time.time()
            if 0 < wait <= MAX_EPOCH_WAIT:
                time.sleep(wait)
        return epoch

    def load_replay_marks(self, name: str = "replay.json") -> dict:
        """Marks keyed (node, group) for the election, or node id for the state mesh."""
        path = self.dir / name
        try:
            raw = json.loads(path.read_text())
            return {(tuple(int(x) for x in k) if len(k) > 1 else int(k[0])): (int(e), int(c))
                    for k, e, c in raw}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as e:
            raise StateError(f"{path}: unreadable replay marks ({e}); "
                             "remove it only if you accept replays from before the restart") from None

    def save_replay_marks(self, marks: dict, name: str = "replay.json") -> None:
        rows = [[list(k) if isinstance(k, tuple) else [k], e, c]
                for k, (e, c) in sorted(marks.items(), key=lambda kv: str(kv[0]))]
        _atomic_write(self.dir / name, json.dumps(rows))
