"""Build the C extensions (etl.stage._extra from etl/stage/_extra.c, etl._jsonb from etl/_jsonb.c,
etl.transform._reorder from etl/transform/_reorder.c)
and put the repository's top-level ``sql/`` and ``migrations/`` into the wheel as package data
(``etl/_shipped/``, found by etl/shipped.py); the rest is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

SHIPPED = ("sql", "migrations")


class BuildWithShipped(build_py):
    """build_py, then copy the shipped folders beside the built package (no caches)."""

    def run(self) -> None:
        super().run()
        here = Path(__file__).resolve().parent
        for name in SHIPPED:
            target = Path(self.build_lib) / "etl" / "_shipped" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(here / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithShipped},
      ext_modules=[Extension("etl.stage._extra", ["etl/stage/_extra.c"], optional=True,
                             depends=["etl/_jsonesc.h", "etl/_owned.h"], extra_compile_args=["-O2"]),
                   Extension("etl.transform._reorder", ["etl/transform/_reorder.c"], optional=True,
                             depends=["etl/_owned.h"], extra_compile_args=["-O2"]),
                   Extension("etl._jsonb", ["etl/_jsonb.c"], optional=True,
                             depends=["etl/_jsonesc.h"], extra_compile_args=["-O2"])])
