"""Rules: the built-ins' defaults on the real exports, per-rule severity overrides (flag,
environment, ``[tool.etl] rules``), the built-in ``strip_nul`` and ``storable`` pieces."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset
from etl.cli import main
from etl.config import load_settings, parse_rule_overrides, rule_override
from etl.dataset import STRIP_NUL, effective_cleaning, strip_json_nul_text
from etl.datasets import dataset_of
from etl.errors import ConfigError
from etl.run import Run, open_run
from etl.stage import stage
from etl.storable import json_refusal, storable_rules
from etl.validate import validate
from etl.validate.rules import resolve_rules
from tests.conftest import SHARED, require_shared

MIDS = get_dataset("mids")


@pytest.fixture(scope="module")
def sample_run(mids_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The real 32-file sample, staged once for the module."""
    return stage(MIDS, [mids_sample], settings=Settings(staging_dir=tmp_path_factory.mktemp("st"))).run


def by_name(report: dict, name: str) -> dict:
    return next(r for r in report["rules"] if r["name"] == name)


# ------------------------------------------------------------------------------ real exports


def test_the_full_real_export_passes_with_the_defaults(tmp_path: Path) -> None:
    """Every record of the complete MidsReborn export is legitimate: no rule rejects one."""
    full = require_shared(SHARED / "mids_full")
    run = stage(MIDS, [full], settings=Settings(staging_dir=tmp_path)).run
    checked = validate(run, MIDS)
    run, report = checked.run, checked.report
    assert report["status"] == "passed"
    assert {name: v["rejected"] for name, v in report["levels"].items() if v["rejected"]} == {}
    rows = {name: v["rows"] for name, v in report["levels"].items()}
    assert (rows["powersets"], rows["powers"], rows["power_effects"]) == (3_568, 9_649, 65_293)
    assert (rows["archetypes"], rows["enhancements"], rows["enhancement_sets"], rows["salvage"]) == (
        61, 1_288, 221, 108)
    # The 17 pet powersets with an empty SetName are accepted, their "" kept as it is.
    sets = run.accepted("powersets", dataset_of(run)).filter(pl.col("set_name") == "").collect()
    assert sets.height == 17
    # The one NUL of the export (a power description) is removed by the built-in step, counted.
    nul = [c for c in report["cleaning"] if c["name"] == STRIP_NUL and c["changed"]]
    assert [(c["level"], c["column"], c["changed"]) for c in nul] == [("powers", "desc_long", 1)]
    assert "PostgreSQL text cannot hold it" in nul[0]["description"]
    powers = run.accepted("powers", dataset_of(run))
    assert not powers.filter(pl.col("desc_long").str.contains("\x00")).collect().height
    # What still deserves a word, as warnings: an archetype without a display name, a class
    # name used twice, two effects naming powers of the file the export lacks.
    warned = {r["name"]: r["failed"] for r in report["rules"] if r["failed"]}
    assert warned == {"archetypes.display_name.required": 1, "archetypes.class_name.unique": 1,
                      "power_effects.named_power.known": 2}
    assert all(by_name(report, n)["severity"] == "warning" for n in warned)


@pytest.mark.parametrize("dataset, source", [
    ("aodb", "aodb/items_100.json"),
    ("licenses", "licenses"),
    ("mids", "mids"),
])
def test_the_real_samples_pass_with_the_defaults(dataset: str, source: str, tmp_path: Path) -> None:
    src = require_shared(SHARED / source)
    run = stage(get_dataset(dataset), [src], settings=Settings(staging_dir=tmp_path)).run
    report = validate(run, dataset_of(run)).report
    assert report["status"] == "passed"
    assert sum(v["rejected"] for v in report["levels"].values()) == 0
    assert not [r["name"] for r in report["rules"] if r["failed"] and r["severity"] == "error"]


# ------------------------------------------------------------------------------ overrides


def test_overrides_resolve_flag_over_env_over_pyproject(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.etl.rules]\n'
        '"powersets.full_name.unique" = "warning"\n'
        '"items.name.required" = "error"\n'
        '[tool.etl.rules.mids]\n'
        '"archetypes.class_name.unique" = "off"\n'
        '[tool.etl.rules.aodb]\n'
        '"items.aoid.unique" = "warning"\n')
    monkeypatch.setenv("ETL_RULES", "powers.*.range=warning, powersets.full_name.unique=error")
    settings = load_settings(start=tmp_path, rules=("powersets.full_name.unique=off",))
    assert [(r.name, r.severity, r.source) for r in settings.rules] == [
        ("powersets.full_name.unique", "warning", "pyproject.toml [tool.etl] rules"),
        ("items.name.required", "error", "pyproject.toml [tool.etl] rules"),
        ("archetypes.class_name.unique", "off", "pyproject.toml [tool.etl.rules.mids]"),
        ("items.aoid.unique", "warning", "pyproject.toml [tool.etl.rules.aodb]"),
        ("powers.*.range", "warning", "ETL_RULES"),
        ("powersets.full_name.unique", "error", "ETL_RULES"),
        ("powersets.full_name.unique", "off", "--rule"),
    ]
    resolved = {r.rule.name: r for r in resolve_rules(MIDS, settings.rules)}
    assert resolved["powersets.full_name.unique"].severity == "off"          # the flag wins
    assert resolved["powersets.full_name.unique"].override.source == "--rule"  # type: ignore[union-attr]
    assert resolved["powers.level.range"].severity == "warning"               # a glob, from the env
    assert resolved["powers.level.range"].rule.severity == "warning"
    assert resolved["powers.level.range"].default == "error"
    assert resolved["archetypes.class_name.unique"].off                       # scoped to mids
    assert resolved["powers.full_name.unique"].override is None
    # items.name.required is aodb's: left to it, not an error for mids.
    # (The flag is for the dataset being run: strict. The rest is checked against every dataset.)
    aodb = {r.rule.name: r for r in resolve_rules(get_dataset("aodb"),
                                                  [r for r in settings.rules if r.source != "--rule"])}
    assert aodb["items.name.required"].severity == "error"
    assert aodb["items.aoid.unique"].severity == "warning"


def test_an_unknown_rule_is_an_error_naming_close_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_rules(MIDS, parse_rule_overrides(["powersets.fullname.unique=warning"], source="--rule"))
    assert "powersets.full_name.unique" in str(err.value) and "--list-rules" in str(err.value)
    # From pyproject.toml too, unless another dataset has the rule.
    (tmp_path / "pyproject.toml").write_text('[tool.etl]\nrules = { "powers.levle.range" = "off" }\n')
    with pytest.raises(ConfigError, match=r"powers\.level\.range"):
        resolve_rules(MIDS, load_settings(start=tmp_path).rules)
    with pytest.raises(ConfigError, match="matches no rule"):
        resolve_rules(MIDS, parse_rule_overrides(["nothing.*=off"], source="--rule"))


@pytest.mark.parametrize("item", ["powers.level.range=maybe", "powers.level.range", "=error"])
def test_a_malformed_override_is_an_error(item: str) -> None:
    with pytest.raises(ConfigError, match="NAME=SEVERITY"):
        parse_rule_overrides([item], source="--rule")


def test_pyproject_rules_must_be_a_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.etl]\nrules = "powers.level.range=off"\n')
    with pytest.raises(ConfigError, match="must be a table"):
        load_settings(start=tmp_path)


def test_an_override_changes_what_is_rejected_and_the_report_says_so(sample_run: Run) -> None:
    stricter = parse_rule_overrides(["archetypes.class_name.unique=error"], source="--rule")
    result = validate(sample_run, dataset_of(sample_run), rules=stricter)
    assert not result.passed and result.report["failed_levels"] == ["archetypes"]
    entry = by_name(result.report, "archetypes.class_name.unique")
    assert (entry["severity"], entry["default_severity"], entry["failed"]) == ("error", "warning", 1)
    assert entry["override"] == {"name": "archetypes.class_name.unique", "severity": "error",
                                 "source": "--rule"}
    assert result.report["overrides"] == [entry["override"]]
    rejects = sample_run.rejects("archetypes")
    assert rejects is not None
    rejected = rejects.collect()
    assert rejected.get_column("_rules").to_list() == [["archetypes.class_name.unique"]]
    # The rejected row is kept whole (read again from the staged level: validate holds only the
    # rules' flags), and the report's example is that row.
    staged = sample_run.raw("archetypes").drop("_extra").collect()
    row = rejected.drop("_rules", "_reasons").row(0, named=True)
    assert set(row) == set(staged.columns)
    assert staged.filter(pl.col("_file") == row["_file"], pl.col("_record") == row["_record"],
                         pl.col("_path") == row["_path"]).row(0, named=True) == row
    dup = staged.filter(pl.col("class_name") == row["class_name"]).with_row_index()
    assert dup.height == 2 and dup.row(1, named=True)["_path"] == row["_path"]
    assert [(e["file"], e["record"], e["path"], e["values"]) for e in entry["examples"]] == [
        (row["_file"], row["_record"], row["_path"] or None, {"class_name": row["class_name"]})]

    off = [rule_override("power_effects.*", "off", source="ETL_RULES")]
    report = validate(sample_run, dataset_of(sample_run), rules=off).report
    assert report["status"] == "passed"
    skipped = [r for r in report["rules"] if r["level"] == "power_effects"]
    assert skipped and all(r["failed"] is None and r["severity"] == "off" for r in skipped)
    # Back to the defaults: nothing rejected, no override recorded.
    report = validate(sample_run, dataset_of(sample_run)).report
    assert report["status"] == "passed" and report["overrides"] == []
    assert sample_run.rejects("archetypes") is None


def test_cli_rule_flag_list_rules_and_run_shows_the_failing_rules(sample_run: Run, mids_sample: Path,
                                                                  tmp_path: Path, pg_url: str) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["validate", str(sample_run.path),
                               "--rule", "archetypes.class_name.unique=error"])
    assert res.exit_code == 1, res.output
    assert "archetypes.class_name.unique" in res.stderr and "was warning; --rule" in res.stderr
    # --json: one document, the same exit code, the failure's "error" as `etl run --json` has it.
    res = runner.invoke(main, ["validate", str(sample_run.path), "--json",
                               "--rule", "archetypes.class_name.unique=error"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["passed"] is False and doc["error"]["type"] == "ValidationFailed"
    assert "archetypes.class_name.unique" in [r["name"] for r in doc["failed_rules"]]

    res = runner.invoke(main, ["validate", "mids", "--list-rules", "--rule", "powers.*.range=off"])
    assert res.exit_code == 0, res.output
    assert "powersets.set_name.storable" in res.stderr and "off (was error; --rule)" in res.stderr
    res = runner.invoke(main, ["validate", "mids", "--list-rules", "--json", "--rule", "powers.*.range=off"])
    rules = {r["name"]: r for r in json.loads(res.stdout)["rules"]}
    ranged = [r for name, r in rules.items() if name.startswith("powers.") and name.endswith(".range")]
    assert ranged and all(r["severity"] == "off" for r in ranged)
    assert rules["powersets.set_name.storable"]["severity"] == "error"

    res = runner.invoke(main, ["validate", str(sample_run.path), "--rule", "no.such.rule=off"])
    assert res.exit_code == 2 and "is not a rule of dataset mids" in res.stderr

    # `etl run` stopped by validation shows the same table, before anything reaches the database
    # (which must answer: a run checks it before staging).
    args = ["--staging-dir", str(tmp_path), "run", "mids", str(mids_sample),
            "--database-url", pg_url,
            "--rule", "archetypes.class_name.unique=error"]
    res = runner.invoke(main, args)
    assert res.exit_code == 1, res.output
    assert "validation of" in res.stderr and "archetypes.class_name.unique" in res.stderr
    assert "rows per level" in res.stderr and "validation failed" in res.stderr
    res = runner.invoke(main, [*args, "--json"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "failed" and doc["phase"] == "validate"
    assert doc["error"]["type"] == "ValidationFailed" and doc["error"]["next"]
    failed = [r for r in doc["failed_rules"] if r["severity"] == "error"]
    assert [r["name"] for r in failed] == ["archetypes.class_name.unique"]
    assert failed[0]["examples"][0]["path"] == "Archetypes[42]"


# ------------------------------------------------------------------------------ built-in pieces


def test_strip_nul_covers_every_text_column_of_every_level() -> None:
    for dataset in ("mids", "aodb", "licenses"):
        ds = get_dataset(dataset)
        steps = {(c.level, c.column) for c in effective_cleaning(ds) if c.name == STRIP_NUL}
        for name, level in ds.levels.items():
            for f in level.fields:
                if f.type.replace("[]", "") in ("VARCHAR", "JSON"):
                    assert (name, f.name) in steps
    df = pl.DataFrame({"t": ["a\x00b", None, "ok"], "l": [["\x00x"], None, []],
                       "j": ['{"k\\u0000":"v\\u0000","e":"\\\\u0000"}', None, "{}"]},
                      schema={"t": pl.String, "l": pl.List(pl.String), "j": pl.String})
    by_col = {c.column: c for c in effective_cleaning(get_dataset("mids")) if c.name == STRIP_NUL}
    text, lists = by_col["desc_long"].fn, by_col["boosts_allowed"].fn
    json_step = next(c for c in effective_cleaning(get_dataset("aodb"))
                     if c.name == STRIP_NUL and c.column == "params").fn
    out = df.select(text(pl.col("t")), lists(pl.col("l")), json_step(pl.col("j")))
    assert out.to_dict(as_series=False) == {"t": ["ab", None, "ok"], "l": [["x"], None, []],
                                            "j": ['{"k":"v","e":"\\\\u0000"}', None, "{}"]}
    assert strip_json_nul_text(r'"\\\u0000"') == r'"\\"'


@pytest.mark.parametrize("text, jsonb, refused", [
    ('{"a": 1e400}', True, False),           # numeric holds it
    ('{"a": 1e131072}', True, True),         # beyond numeric
    ('{"a": 1e-20000}', True, True),
    ('{"a": 1e131072}', False, False),       # json keeps the text
    ('"a\\u0000b"', True, True),
    ('"a\\u0000b"', False, False),
    ('"\\ud800"', False, True),
    ('NaN', False, True),
    ('{"a": -Infinity}', False, True),        # DuckDB's reader takes these; PostgreSQL does not
    ('{"a": [inf]}', True, True),
    ('{"a": [1, {"b": -0.0}]}', True, False),
    ("not json", False, True),
])
def test_json_refusal_matches_postgresql(text: str, jsonb: bool, refused: bool) -> None:
    assert (json_refusal(text, jsonb=jsonb) is not None) is refused


def test_storable_rules_follow_the_home_tables() -> None:
    names = {r.name: r for r in storable_rules(MIDS)}
    assert "powersets.set_name.storable" in names            # NOT NULL text
    assert "powers.desc_long.storable" not in names          # nullable text: nothing to check
    aodb = {r.name: r.describe() for r in storable_rules(get_dataset("aodb"))}
    assert "jsonb" in aodb["spells.params.storable"]
    licenses = {r.name: r.describe() for r in storable_rules(get_dataset("licenses"))}
    assert "4714-11-24 BC" in licenses["licenses.issue_date.storable"]


def test_nul_in_extra_is_counted_as_staged_or_read_again(tmp_path: Path) -> None:
    """A NUL in a key no column types: the stage counts the row (the manifest's
    ``extra_nul_rows``) and validate reports that count; a run staged without it (the ray
    engine, an older run) gets the same count by reading ``_extra``."""
    import orjson

    from etl.datasets.mids.gen import generate_mids

    export = tmp_path / "export"
    generate_mids(export, powersets=2, seed=5)
    first = sorted((export / "db").rglob("*.json"))[0]
    ps = orjson.loads(first.read_bytes())
    ps["Powers"][0]["NotDeclared"] = {"note": "a\x00b"}
    first.write_bytes(orjson.dumps(ps))
    ds = get_dataset("mids")
    run = stage(ds, [export], settings=Settings(staging_dir=tmp_path / "staging")).run
    assert run.manifest["levels"]["powers"]["extra_nul_rows"] == 1
    assert run.manifest["levels"]["powersets"]["extra_nul_rows"] == 0

    def counted(run: Run) -> int:
        report = validate(run, ds).report
        return sum(c["changed"] for c in report["cleaning"]
                   if (c["level"], c["column"], c["name"]) == ("powers", "_extra", STRIP_NUL))

    assert counted(run) == 1
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["levels"]["powers"]["extra_nul_rows"] = 7  # the count validate takes, unread
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    assert counted(open_run(run.path)) == 7
    for entry in manifest["levels"].values():
        entry.pop("extra_nul_rows", None)
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    assert counted(open_run(run.path)) == 1
