"""Build the one C extension (etl.stage._extra, etl/stage/_extra.c); the rest is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("etl.stage._extra", ["etl/stage/_extra.c"], optional=True,
                             extra_compile_args=["-O2"])])
