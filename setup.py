"""The compiled parts of meshd, built by pip at install (everything else is in
pyproject.toml): meshd._fastcache (meshd/_fastcache.c), the caches' per-record
loops. Optional: without a C compiler, Python.h or zlib.h the install goes on
and meshd runs its pure-Python code (docs/architecture.md, "The accelerators").
"""

from setuptools import Extension, setup

WARNINGS = ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(ext_modules=[Extension("meshd._fastcache", ["meshd/_fastcache.c"], libraries=["z"], optional=True,
                             extra_compile_args=WARNINGS)])
