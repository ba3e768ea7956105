"""The compiled part of meshd: meshd._fastct (meshd/_fastct.c), built by pip at install.

Everything else is in pyproject.toml. The extension is optional: without a
C compiler or Python.h the install goes on and meshd runs its pure-Python
code (docs/architecture.md, "The accelerator").
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("meshd._fastct", ["meshd/_fastct.c"], optional=True,
                             extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers"])])
