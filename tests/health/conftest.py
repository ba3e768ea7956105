"""Make `meshd` and the simulated cluster (`cluster`, tests/sim/) importable however pytest is started."""

import sys
from pathlib import Path

here = Path(__file__).resolve()
for path in (here.parents[2], here.parent, here.parents[1] / "sim"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
