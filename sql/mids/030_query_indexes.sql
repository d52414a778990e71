-- What the cached reads (etl.query) look up: a powerset's rows of the build summary.
CREATE INDEX power_build_summary_powerset_idx ON power_build_summary (powerset_id, available_level);
CREATE INDEX powersets_at_class_idx ON powersets (at_class);
