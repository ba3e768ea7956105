"""The compiled part of meshd: meshd._fastct (meshd/_fastct.c), built by pip at install.

Everything else is in pyproject.toml. The extension is optional: without a
C compiler or Python.h the install goes on and meshd runs its pure-Python
code (docs/architecture.md, "The accelerator").
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExtReplacing(build_ext):
    """Replaces the built module in the tree (an editable install, --inplace)
    instead of writing into it: a running meshd has the file mapped, and a
    library rewritten under a process crashes it. The process keeps the old
    file; the next start loads the new one."""

    def copy_file(self, infile, outfile, *args, **kwargs):
        if outfile.endswith(".so") and os.path.isfile(outfile):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)


setup(ext_modules=[Extension("meshd._fastct", ["meshd/_fastct.c"], optional=True,
                             extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers"])],
      cmdclass={"build_ext": BuildExtReplacing})
