"""Build the one C extension (etl._extra, see etl/_extra.c); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("etl._extra", ["etl/_extra.c"], optional=True,
                             extra_compile_args=["-O2"])])
