-- Secondary indexes for the mids tables. Run after the bulk COPY and the keys, in the schema
-- being built (search_path points at it), so names are unqualified.
CREATE INDEX powers_powerset_id_idx ON powers (powerset_id);
CREATE INDEX powers_level_idx ON powers (level);
CREATE INDEX power_effects_effect_type_idx ON power_effects (effect_type);
CREATE INDEX power_requirements_required_power_id_idx ON power_requirements (required_power_id);
CREATE INDEX powersets_archetype_id_idx ON powersets (archetype_id);
CREATE INDEX enhancements_set_id_idx ON enhancements (set_id);
