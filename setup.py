"""The compiled parts of meshd, built by pip at install (everything else is in
pyproject.toml):

* meshd._fastct (meshd/_fastct.c): the master's hot path, the conntrack
  events read with recvmmsg and decoded, and the frames sent with sendmmsg;
* meshd._fastcache (meshd/_fastcache.c): the caches' per-record loops.

Both are optional: without a C compiler, Python.h (or zlib.h for the second)
the install goes on and meshd runs its pure-Python code
(docs/architecture.md, "The accelerators").
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WARNINGS = ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]


class BuildExtReplacing(build_ext):
    """Replaces the built module in the tree (an editable install, --inplace)
    instead of writing into it: a running meshd has the file mapped, and a
    library rewritten under a process crashes it. The process keeps the old
    file; the next start loads the new one."""

    def copy_file(self, infile, outfile, *args, **kwargs):
        if outfile.endswith(".so") and os.path.isfile(outfile):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)


setup(ext_modules=[Extension("meshd._fastct", ["meshd/_fastct.c"], optional=True, extra_compile_args=WARNINGS),
                   Extension("meshd._fastcache", ["meshd/_fastcache.c"], libraries=["z"], optional=True,
                             extra_compile_args=WARNINGS)],
      cmdclass={"build_ext": BuildExtReplacing})
