"""Transform: validated levels → target tables (keys, lookups, ``extra``), written as Parquet.

:func:`transform` is the step; :mod:`.extra_fetch` fetches each row's kept keys by reference;
:mod:`.on_ray` builds the tables as Ray tasks (``engine = "ray"``).
"""

from etl.transform.transformer import transform

__all__ = ["transform"]
