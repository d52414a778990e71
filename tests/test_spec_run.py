"""A spec is a dataset, through the CLI: ``etl run FILE.toml SOURCE...`` and ``etl run NAME`` load an
export with an inferred spec into the real PostgreSQL; the run keeps its spec, so ``etl reconcile``,
``etl load`` and ``etl rebuild`` of the run need nothing else; merge mode; drift is found while
staging and each source's policy (keep, evolve, freeze) is applied, reported and recorded in the
ledger; ``etl init --update`` brings a spec along with a drifted export."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from etl.cli import main
from etl.spec import Spec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(records):
        (folder / f"rec_{i:03d}.json").write_text(json.dumps(rec))
    return folder


def _v1(n: int = 6) -> list[dict]:
    return [{"id": i, "count": i * 2, "Name": f"thing {i}", "Size": {"w": i},
             "parts": [{"slot": j, "label": f"p{j}"} for j in range(i % 3)]} for i in range(n)]


def _v2() -> list[dict]:
    """v1 drifted: a new key in one record, an int key holding an object in another, a new key in
    every nested part."""
    recs = _v1()
    recs[2]["Fresh Key"] = 1.5
    recs[3]["count"] = {"low": 1, "high": 9}
    recs[4]["Size"]["h"] = 7  # inside an object the spec flattens into columns
    for rec in recs:
        for part in rec["parts"]:
            part["weight"] = "heavy"
    return recs


def _invoke(args: list[str], env: dict[str, str]) -> dict:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _env(tmp_path: Path) -> dict[str, str]:
    return {"ETL_STAGING_DIR": str(tmp_path / "staging"), "ETL_DATASETS_DIR": str(tmp_path / "specs")}


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def test_run_by_name_and_by_file_reconcile_rebuild_and_merge(tmp_path: Path, pg_url: str) -> None:
    env = _env(tmp_path)
    export = _write(tmp_path / "export", _v1())
    _invoke(["init", "things", str(export), "--json"], env)
    # `etl run NAME`: the spec in the datasets folder, the export it was inferred from.
    summary = _invoke(["run", "things", "--database-url", pg_url, "--json"], env)
    assert summary["dataset"] == "things"
    assert summary["tables"] == {"records": 6, "parts": 6}
    run = Path(summary["run"])
    assert (run / "spec.toml").read_text() == (tmp_path / "specs" / "things.toml").read_text()
    assert _count(pg_url, "SELECT count(*) FROM things.parts") == 6

    # The run keeps its spec: reconcile, load and rebuild need nothing else, even once the user's
    # spec file is gone.
    (tmp_path / "specs" / "things.toml").unlink()
    rec = _invoke(["reconcile", str(run), "--database-url", pg_url, "--json"], env)
    assert rec["ok"] and rec["records"] == 12
    rebuilt = _invoke(["rebuild", str(run), "--database-url", pg_url, "--json"], env)
    assert rebuilt["load"]["mode"] == "rebuild"

    # `etl run FILE.toml SOURCE...`, merge mode: one more record is inserted, the rest unchanged.
    spec_file = tmp_path / "things.toml"
    spec_file.write_text((run / "spec.toml").read_text())
    more = _write(tmp_path / "export2", [*_v1(), {"id": 6, "count": 12, "Name": "thing 6", "parts": []}])
    merged = _invoke(["run", str(spec_file), str(more), "--database-url", pg_url, "--mode", "merge",
                      "--json"], env)
    assert merged["load"]["merged"]["records"]["inserted"] == 1
    assert _count(pg_url, "SELECT count(*) FROM things.records") == 7


def test_unknown_dataset_names_the_specs_and_etl_init(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "nosuch", str(tmp_path)], env=_env(tmp_path))
    assert result.exit_code == 2
    assert "unknown dataset 'nosuch'" in result.output and "etl init nosuch" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[sources]]\nname = "s"\nbogus = 1\n')
    result = CliRunner().invoke(main, ["stage", str(bad), str(tmp_path)], env=_env(tmp_path))
    assert result.exit_code == 2
    assert "unknown entry bogus" in result.output and str(bad) in result.output


def _spec_with(tmp_path: Path, drift: str) -> Path:
    env = _env(tmp_path)
    export = _write(tmp_path / "v1", _v1())
    out = tmp_path / f"things_{drift}.toml"
    _invoke(["init", "things", str(export), "--out", str(out), "--json"], env)
    text = out.read_text().replace('drift = "keep"', f'drift = "{drift}"')
    out.write_text(text)
    return out


def test_drift_keep_reports_and_loads_every_value(tmp_path: Path, pg_url: str) -> None:
    spec = _spec_with(tmp_path, "keep")
    v2 = _write(tmp_path / "v2", _v2())
    summary = _invoke(["run", str(spec), str(v2), "--database-url", pg_url, "--json"], _env(tmp_path))
    found = {(d["level"], d["kind"], d["key"]): d for d in summary["drift"]}
    assert set(found) == {("records", "new_key", "Fresh Key"), ("records", "type", "count"),
                          ("parts", "new_key", "weight"), ("records", "new_key", "Size.h")}
    assert found[("records", "new_key", "Size.h")]["seen"] == ["BIGINT"]
    fresh = found[("records", "new_key", "Fresh Key")]
    assert (fresh["file"], fresh["record"], fresh["seen"], fresh["rows"]) == \
        ("rec_002.json", 0, ["DOUBLE"], 1)
    typed = found[("records", "type", "count")]
    assert (typed["declared"], typed["seen"], typed["file"]) == ("bigint", ["OBJECT"], "rec_003.json")
    assert found[("parts", "new_key", "weight")]["rows"] == 6
    # Kept whole in the row's extra: nothing rejected, every record reconciles.
    assert summary["tables"] == {"records": 6, "parts": 6}
    assert _count(pg_url, "SELECT count(*) FROM things.records WHERE extra::jsonb ? 'Fresh Key'") == 1
    assert _count(pg_url, "SELECT count(*) FROM things.records WHERE count IS NULL "
                          "AND (extra::jsonb -> 'count' ->> 'high') = '9'") == 1
    rec = _invoke(["reconcile", summary["run"], "--database-url", pg_url, "--json"], _env(tmp_path))
    assert rec["ok"]
    # The ledger records what drifted and what was done.
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT detail FROM etl.load_steps WHERE step = 'drift'").fetchone()
    assert row is not None
    assert {d["key"] for d in row[0]["findings"]} == {"Fresh Key", "count", "weight", "Size.h"}
    assert row[0]["evolved_spec_sha256"] is None


def test_drift_evolve_adds_columns_and_widens(tmp_path: Path, pg_url: str) -> None:
    spec = _spec_with(tmp_path, "evolve")
    before = spec.read_text()
    v2 = _write(tmp_path / "v2", _v2())
    summary = _invoke(["run", str(spec), str(v2), "--database-url", pg_url, "--json"], _env(tmp_path))
    assert {d["policy"] for d in summary["drift"]} == {"evolve"}
    evolved = Spec.from_toml((Path(summary["run"]) / "spec.toml").read_text())
    cols = {c.name: c for src in evolved.sources for lv in src.levels for c in lv.columns}
    assert cols["fresh_key"].type == "double precision" and cols["fresh_key"].json == ["Fresh Key"]
    assert cols["count"].type == "jsonb"
    assert cols["weight"].type == "text"
    assert cols["size_h"].type == "bigint" and cols["size_h"].json == ["Size", "h"]
    assert spec.read_text() == before  # the user's file is theirs; the run keeps the evolved copy
    assert _count(pg_url, "SELECT count(*) FROM things.records WHERE fresh_key = 1.5") == 1
    assert _count(pg_url, "SELECT count(*) FROM things.records WHERE count->>'high' = '9'") == 1
    assert _count(pg_url, "SELECT count(*) FROM things.parts WHERE weight = 'heavy'") == 6
    assert _count(pg_url, "SELECT count(*) FROM things.records WHERE size_h = 7") == 1
    rec = _invoke(["reconcile", summary["run"], "--database-url", pg_url, "--json"], _env(tmp_path))
    assert rec["ok"]
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT detail FROM etl.load_steps WHERE step = 'drift'").fetchone()
    assert row is not None and row[0]["evolved_spec_sha256"]


def test_drift_freeze_stops_with_the_difference(tmp_path: Path) -> None:
    spec = _spec_with(tmp_path, "freeze")
    v2 = _write(tmp_path / "v2", _v2())
    result = CliRunner().invoke(main, ["stage", str(spec), str(v2)], env=_env(tmp_path))
    assert result.exit_code == 2
    assert "drift" in result.output and "Fresh Key" in result.output and "rec_002.json" in result.output
    assert "etl init --update" in result.output
    staged = tmp_path / "staging" / "things"
    assert not any(p.name.startswith("things-") for p in staged.iterdir()) if staged.exists() else True
    # The same export without drift stages.
    ok = CliRunner().invoke(main, ["stage", str(spec), str(tmp_path / "v1")], env=_env(tmp_path))
    assert ok.exit_code == 0, ok.output


def test_init_update_keeps_edits_and_adds_what_drifted(tmp_path: Path) -> None:
    spec = _spec_with(tmp_path, "freeze")
    # The user's edits: a renamed column, a rule's severity.
    text = spec.read_text().replace('name = "name"', 'name = "title"')
    spec.write_text(text)
    v2 = _write(tmp_path / "v2", _v2())
    out = _invoke(["init", "things", str(v2), "--out", str(spec), "--update", "--json"], _env(tmp_path))
    assert any("fresh_key" in c for c in out["changes"])
    assert any("count: bigint -> jsonb" in c for c in out["changes"])
    updated = Spec.from_toml(spec.read_text())
    cols = {c.name for src in updated.sources for lv in src.levels for c in lv.columns}
    assert {"title", "fresh_key", "weight"} <= cols and "name" not in cols
    assert updated.sources[0].drift == "freeze"
    # The drifted export now stages under freeze.
    ok = CliRunner().invoke(main, ["stage", str(spec), str(v2)], env=_env(tmp_path))
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("severity", ["warning", "off"])
def test_rule_severity_in_the_spec(tmp_path: Path, severity: str) -> None:
    export = _write(tmp_path / "v1", _v1())
    out = tmp_path / "things.toml"
    _invoke(["init", "things", str(export), "--out", str(out), "--json"], _env(tmp_path))
    spec = Spec.from_toml(out.read_text())
    records = spec.sources[0].levels[0]
    from etl.spec.model import RuleSpec

    records.rules.append(RuleSpec("one_of", "name", ["thing 0"], severity=severity))
    out.write_text(spec.to_toml())
    listed = CliRunner().invoke(main, ["validate", str(out), "--list-rules"], env=_env(tmp_path))
    assert listed.exit_code == 0, listed.output
    if severity == "off":
        assert "records.name.one_of" not in listed.output
    else:
        assert "records.name.one_of" in listed.output
    result = CliRunner().invoke(main, ["validate", str(out), str(export)], env=_env(tmp_path))
    assert result.exit_code == 0, result.output


def test_a_staging_folder_inside_the_export_is_never_input(tmp_path: Path) -> None:
    """`etl run` in the export's own folder stages into ./staging beside the data: the toolkit's
    manifests and reports there are JSON files a folder or a glob would otherwise take as
    records. Run twice (the second restaged with --force), by folder and by glob: the same rows."""
    export = _write(tmp_path / "export", _v1())
    env = {"ETL_STAGING_DIR": str(export / "staging"), "ETL_DATASETS_DIR": str(tmp_path / "specs")}
    _invoke(["init", "things", str(export), "--json"], env)
    spec = tmp_path / "specs" / "things.toml"
    for source in (str(export), str(export / "**" / "*.json"), str(export)):
        result = CliRunner().invoke(main, ["stage", str(spec), source, "--force"], env=env)
        assert result.exit_code == 0, result.output
        assert "match no source" not in result.output
        run = Path(result.stdout.strip().splitlines()[-1])  # the run directory, last
        manifest = json.loads((run / "manifest.json").read_text())
        files = [f["relpath"] for f in manifest["sources"]]
        assert sorted(files) == [f"rec_{i:03d}.json" for i in range(6)], files
    assert (export / "staging" / "things" / ".etl-staging.lock").exists()
    # A spec inferred again from the folder does not see the staged runs either.
    again = _invoke(["init", "things2", str(export), "--json"], env)
    assert sum(s["files"] for s in again["sources"]) == 6


def test_a_run_moved_out_of_its_staging_folder_does_not_mark_its_new_parent(tmp_path: Path) -> None:
    """A run directory copied elsewhere (``/tmp/myrun``) and validated or transformed there locks
    itself, not the folder it now sits in: a lock file there would make every export under that
    folder (all of /tmp) invisible as input."""
    import shutil

    export = _write(tmp_path / "export", _v1())
    env = {"ETL_STAGING_DIR": str(tmp_path / "staging"), "ETL_DATASETS_DIR": str(tmp_path / "specs")}
    _invoke(["init", "things", str(export), "--json"], env)
    staged = CliRunner().invoke(main, ["stage", str(tmp_path / "specs" / "things.toml"), str(export)],
                                env=env)
    assert staged.exit_code == 0, staged.output
    moved = tmp_path / "elsewhere" / "myrun"
    shutil.copytree(Path(staged.stdout.strip().splitlines()[-1]), moved)
    for command in (["validate", str(moved)], ["transform", str(moved)]):
        result = CliRunner().invoke(main, command, env=env)
        assert result.exit_code == 0, result.output
    assert not (tmp_path / "elsewhere" / ".etl-staging.lock").exists()
    # an export beside the moved run is still input
    _write(tmp_path / "elsewhere" / "export2", _v1())
    again = CliRunner().invoke(main, ["stage", str(tmp_path / "specs" / "things.toml"),
                                      str(tmp_path / "elsewhere" / "export2")], env=env)
    assert again.exit_code == 0, again.output
