"""`python3 -m meshd`: the same as the `meshd` command (meshd/cli.py).

Must not: hold anything but the call to cli.main: the start-up is cli.py's
and daemon.py's.
"""

import sys

from .cli import main

sys.exit(main())
