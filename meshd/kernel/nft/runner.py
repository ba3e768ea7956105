"""Nft: one nftables transaction per call, through libnftables or the nft command.

Owns: the libnftables binding (ctypes, `libnftables.so.1`, Debian package
libnftables1: one context, JSON output, buffered output and errors), the
`nft` command fallback (one process per transaction, the commands in a
memfd), the choice between them, the JSON output merged into one document,
and NftError.

Must not: know meshd's table or any statement (render.py writes them, the
load balancer sends them), keep state beyond its context, or import the
other rooms of this package. Every call blocks for a netlink round trip;
calls from several threads are serialised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import threading
from typing import Self

_NFT_CTX_DEFAULT = 0
_NFT_CTX_OUTPUT_HANDLE = 1 << 3
_NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(Exception):
    """nftables refused a transaction: nothing of it was applied.

    .message is nft's error text, .commands what was sent (script or JSON).
    """

    def __init__(self, message: str, commands: str):
        self.message = message.strip() or "nft failed without a message"
        self.commands = commands
        first = self.message.splitlines()[0]
        super().__init__(f"nftables: {first}\n--- nft said:\n{self.message}\n--- while running:\n{commands.strip()}")


# --- the runner ------------------------------------------------------------------------

class _Library:
    """libnftables through ctypes: one context, JSON output, buffered output and errors."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        self.lib = lib
        self.ctx = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
        if not self.ctx:
            raise OSError(f"nft_ctx_new failed in {path}")
        lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE)
        if lib.nft_ctx_buffer_output(self.ctx) or lib.nft_ctx_buffer_error(self.ctx):
            lib.nft_ctx_free(self.ctx)
            raise OSError(f"nft_ctx_buffer_output/error failed in {path}")

    def execute(self, text: str, as_json: bool = True) -> tuple[bool, str, str]:
        if not as_json:
            self.lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_HANDLE)
        try:
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
        finally:
            if not as_json:
                self.lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE)
        out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
        return rc == 0, out.decode(errors="replace"), err.decode(errors="replace")

    def close(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


class _Command:
    """The nft command, one process per transaction, reading the commands from a memfd.

    Not from a pipe: with -j, nft 1.0.6 first tries the input as JSON, and on
    a pipe that attempt eats the start of a native script ("syntax error,
    unexpected th"); /dev/fd/N of a memfd is reopened, hence seekable.
    """

    def __init__(self, path: str):
        self.path = path

    def execute(self, text: str, as_json: bool = True) -> tuple[bool, str, str]:
        fd = os.memfd_create("meshd-nft", os.MFD_CLOEXEC)
        try:
            os.write(fd, text.encode())
            flags = ["-j", "-a"] if as_json else ["-a"]
            p = subprocess.run([self.path, *flags, "-f", f"/dev/fd/{fd}"], pass_fds=(fd,),
                               capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            return False, "", f"{self.path} did not finish within 60 s"
        finally:
            os.close(fd)
        ok = p.returncode == 0
        if p.returncode < 0:
            ok = False
            p.stderr += f"\n{self.path} killed by signal {-p.returncode}"
        return ok, p.stdout, p.stderr

    def close(self) -> None:
        pass


def _find_library() -> str | None:
    for name in ("libnftables.so.1", ctypes.util.find_library("nftables")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None


class Nft:
    """One nftables transaction per call; JSON out.

    Args:
      backend: "auto" (libnftables when it loads, else the nft command),
        "library" or "command" (forced; OSError when unavailable).
      command: the nft executable for the command backend.

    The library context opens its netlink socket in the network namespace of
    the thread that creates the Nft: create it in the namespace it serves.
    """

    def __init__(self, backend: str = "auto", command: str = "nft"):
        if backend not in ("auto", "library", "command"):
            raise ValueError(f"nft backend must be auto, library or command, not {backend!r}")
        self._lock = threading.Lock()
        self._impl: _Library | _Command
        lib = _find_library() if backend in ("auto", "library") else None
        if lib is not None:
            self._impl = _Library(lib)
            self.backend = "library"
        elif backend == "library":
            raise OSError("libnftables.so.1 not found (Debian: apt install libnftables1)")
        else:
            path = shutil.which(command)
            if path is None:
                raise OSError(f"neither libnftables.so.1 nor the `{command}` command is available "
                              "(Debian: apt install libnftables1 or nftables)")
            self._impl = _Command(path)
            self.backend = "command"

    def run(self, commands: list[dict]) -> dict:
        """Run JSON commands (libnftables-json(5) CMD_OBJECTs) as one transaction."""
        return self._execute(json.dumps({"nftables": commands}))

    def run_script(self, script: str) -> dict:
        """Run native nft commands, one per line, as one transaction.

        Returns {"nftables": [...]}: the JSON objects `list` commands print
        (empty for pure changes). Raises NftError when nft refuses any of it.
        """
        return self._execute(script)

    def list_text(self, script: str) -> str:
        """Run list commands with nft's text output (with handles).

        For listings that hold statements nftables 1.0.6 cannot print as JSON
        (a dynamic map update): its JSON printer drops them and writes a
        warning straight to the process's stderr, which is the daemon's log.
        """
        return self._execute(script, as_json=False)

    def _execute(self, text: str, as_json: bool = True):
        with self._lock:
            ok, out, err = self._impl.execute(text, as_json)
        if not ok:
            raise NftError(err, text)
        return _merge_json(out, text) if as_json else out

    def close(self) -> None:
        with self._lock:
            self._impl.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _merge_json(out: str, commands: str) -> dict:
    """nft prints one JSON document per list command; merge their "nftables" arrays."""
    items: list = []
    decoder = json.JSONDecoder()
    pos, n = 0, len(out)
    while True:
        while pos < n and out[pos].isspace():
            pos += 1
        if pos >= n:
            return {"nftables": items}
        try:
            doc, pos = decoder.raw_decode(out, pos)
        except json.JSONDecodeError as e:
            raise NftError(f"undecodable JSON output from nft: {e}: {out[:200]!r}", commands) from None
        items.extend(doc.get("nftables", ()) if isinstance(doc, dict) else ())
