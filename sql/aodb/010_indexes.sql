-- Secondary indexes for the aodb tables. Run after the bulk COPY and the keys, in the schema
-- being built (search_path points at it), so names are unqualified.
-- Each foreign key's referencing columns get their index from the loader (etl.infra.schema.
-- uncovered_foreign_keys), named <table>_<columns>_fkey_idx; only the other indexes are here.
CREATE INDEX items_name_idx ON items (name);
CREATE INDEX items_ql_idx ON items (ql);
CREATE INDEX items_item_class_idx ON items (item_class);
-- "Which items have stat S = V": the junction by its lookup side.
CREATE INDEX actions_aoid_idx ON actions (aoid);
CREATE INDEX spell_data_aoid_idx ON spell_data (aoid);
CREATE INDEX spells_spell_id_idx ON spells (spell_id);
CREATE INDEX spells_stat_idx ON spells (stat) WHERE stat IS NOT NULL;
