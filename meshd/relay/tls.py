"""TLS contexts of a relay: the listening side (certificate, key, ciphers,
minimum version, session cache) and towards its backends (verify, CA, SNI).

The engine holds the PEM texts the daemon read for it (it may not read the
operator's key file itself).  Python's ssl loads a certificate chain only
from a file, so the PEM goes to a file in a fresh directory of mode 0700
(in /dev/shm: memory, not disk), is loaded, and the directory is removed at
once; /proc/self/fd of a memfd is not an option, as a process that changed
its uid is not dumpable and cannot open its own /proc/self/fd.

`session_cache = false` turns off session tickets (OP_NO_TICKET), which is
how TLS 1.3 resumes here; OpenSSL's stateful server cache has no switch in
Python's ssl.

Must not: accept, connect or read from a peer.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _scratch_dir() -> str | None:
    return "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None


def server_context(cert_pem: bytes, key_pem: bytes, ciphers: str | None, min_version: str,
                   session_cache: bool) -> ssl.SSLContext:
    """Raises ssl.SSLError or ValueError for a certificate, key or cipher list that does not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[min_version]
    if ciphers:
        ctx.set_ciphers(ciphers)
    if not session_cache:
        ctx.options |= ssl.OP_NO_TICKET
    directory = tempfile.mkdtemp(prefix="meshd-relay-", dir=_scratch_dir())
    try:
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, data in ((cert, cert_pem), (key, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert, key)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return ctx


def backend_context(verify: bool, ca_pem: bytes | None) -> ssl.SSLContext:
    """Towards the backends: verified against `ca_pem` (or the system's CAs), or not at all."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if ca_pem:
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
