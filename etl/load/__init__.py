"""Load: a transformed run → PostgreSQL through ADBC COPY into a build schema, then one atomic swap.

:func:`load` is the step (full or merge); :mod:`.reconcile` rebuilds source records from loaded rows.
"""

from etl.load.errors import VerificationFailed
from etl.load.loader import LoadResult, Mode, live_tables, load, table_checksums

__all__ = ["LoadResult", "Mode", "VerificationFailed", "live_tables", "load", "table_checksums"]
