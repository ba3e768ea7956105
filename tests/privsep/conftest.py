"""Make `meshd` importable however pytest is started."""

import sys
from pathlib import Path

here = Path(__file__).resolve()
if str(here.parents[2]) not in sys.path:
    sys.path.insert(0, str(here.parents[2]))
