"""Load: a transformed run → PostgreSQL through ADBC COPY into a build schema, then one atomic swap.

:func:`load` is the step (full or merge); :mod:`.reconcile` rebuilds source records from loaded rows.
"""

from etl.load.errors import VerificationFailed
from etl.load.loader import LoadResult, Mode, live_tables, load, table_checksums
from etl.load.plan import check_database

__all__ = ["LoadResult", "Mode", "VerificationFailed", "check_database", "live_tables", "load",
           "table_checksums"]
