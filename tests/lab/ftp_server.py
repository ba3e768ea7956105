"""The FTP server of tests/lab/test_expect_lab.py, run inside the lab's server namespace.

    python3 ftp_server.py ADDRESS ROOT

pyftpdlib on ADDRESS:21, anonymous read-only access to ROOT; passive data
ports from the kernel's range; it prints "ready" once it listens. It checks
that a data connection comes from the control connection's address
(pyftpdlib's default), so a data connection NATed to another address than
the control connection would be refused: the test sees the SNAT work.
"""

from __future__ import annotations

import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main() -> None:
    address, root = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(root)
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "timeout": 60})
    server = FTPServer((address, 21), handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
