"""Stage: JSON export files → Parquet chunks per level, through DuckDB's streaming JSON reader.

:func:`stage` is the step; :mod:`.sql` writes the level queries, :mod:`.extra` keeps every key
the typed columns do not hold (the ``_extra`` column, a C walker with a Python fallback);
:mod:`.on_ray` runs the same work as Ray tasks (``engine = "ray"``).
"""

from etl.stage.stager import stage

__all__ = ["stage"]
