-- Build planning: one row per power with its powerset and archetype, and what its effects add up
-- to. The unique index on power_id is what REFRESH MATERIALIZED VIEW CONCURRENTLY needs.
CREATE MATERIALIZED VIEW power_build_summary AS
SELECT p.power_id,
       p.full_name              AS power_full_name,
       p.display_name           AS power_name,
       p.level                  AS available_level,
       p.power_type,
       p.end_cost,
       p.recharge_time,
       p.cast_time,
       p.accuracy,
       p.max_boosts,
       ps.powerset_id,
       ps.full_name             AS powerset_full_name,
       ps.display_name          AS powerset_name,
       ps.set_type              AS powerset_type,
       a.archetype_id,
       a.class_name             AS archetype_class,
       a.display_name           AS archetype_name,
       coalesce(e.effects, 0)   AS effect_count,
       coalesce(e.effect_types, 0) AS distinct_effect_types,
       e.total_mag
FROM powers p
JOIN powersets ps ON ps.powerset_id = p.powerset_id
LEFT JOIN archetypes a ON a.archetype_id = ps.archetype_id
LEFT JOIN (
    SELECT power_id,
           count(*)                     AS effects,
           count(DISTINCT effect_type)  AS effect_types,
           sum(mag)                     AS total_mag
    FROM power_effects
    GROUP BY power_id
) e ON e.power_id = p.power_id
WITH DATA;

CREATE UNIQUE INDEX power_build_summary_power_id_key ON power_build_summary (power_id);
CREATE INDEX power_build_summary_archetype_idx ON power_build_summary (archetype_class, available_level);
