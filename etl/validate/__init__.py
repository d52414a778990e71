"""Validate: the dataset's rules over a staged run, in Polars; rejected rows kept with the reason.

:func:`validate` is the step; :mod:`.rules` resolves rule severities (flags, ``ETL_RULES``,
``[tool.etl.rules]``).
"""

from etl.validate.errors import ValidationFailed
from etl.validate.validator import failing_rules, require_passed, validate

__all__ = ["ValidationFailed", "failing_rules", "require_passed", "validate"]
