"""The posix driver's C extension: everything else about the package is in pyproject.toml.

Here rather than in pyproject.toml, whose table for extensions setuptools still calls
experimental (and says so at every install). Optional: where no C compiler is found, the
install goes on without it and the driver does the same steps in Python.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("reconciler_drivers._compiled_spawn", ["drivers/_compiled_spawn.c"], optional=True)])
