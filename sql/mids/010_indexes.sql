-- Secondary indexes for the mids tables. Run after the bulk COPY and the keys, in the schema
-- being built (search_path points at it), so names are unqualified.
-- Each foreign key's referencing columns get their index from the loader (etl.infra.schema.
-- uncovered_foreign_keys), named <table>_<columns>_fkey_idx; only the other indexes are here.
CREATE INDEX powers_level_idx ON powers (level);
CREATE INDEX power_effects_effect_type_idx ON power_effects (effect_type);
CREATE INDEX power_requirements_required_power_id_idx ON power_requirements (required_power_id);
