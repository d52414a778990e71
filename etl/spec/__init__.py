"""Dataset specs: infer one from a JSON export (:func:`infer`), read or write it as TOML
(:class:`Spec`); ``etl init`` writes one (:func:`init`). Imports only :mod:`etl.errors` and
:mod:`etl.jsontext` from the toolkit."""

from etl.spec.infer import SpecError, infer
from etl.spec.init import Written, init
from etl.spec.model import ColumnSpec, KeySpec, LevelSpec, RuleSpec, SkippedFile, SourceSpec, Spec

__all__ = ["ColumnSpec", "KeySpec", "LevelSpec", "RuleSpec", "SkippedFile", "SourceSpec", "Spec", "SpecError",
           "Written", "infer", "init"]
