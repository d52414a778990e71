"""The licenses dataset: many small files, quarantine, screenshots, cleaning, dedup, merge loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset
from etl.cli import main
from etl.datasets import dataset_of
from etl.errors import ConfigError, InputError
from etl.load import load
from etl.run import Run
from etl.stage import stage
from etl.transform import transform
from etl.validate import require_passed, validate
from tests.conftest import SHARED, require_shared

SAMPLE = SHARED / "licenses"
DATASET = get_dataset("licenses")
FL = "states_baseline/FL"


@pytest.fixture
def sample() -> Path:
    return require_shared(SAMPLE / FL / "Belmar_01_parse.json").parents[2]


@pytest.fixture
def tree(sample: Path, tmp_path: Path) -> Path:
    """A writable copy of the real sample."""
    out = tmp_path / "export"
    shutil.copytree(sample, out)
    for p in out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


def _built(src: Path, staging: Path, **kw: Any) -> Run:
    staged = stage(DATASET, [src], settings=Settings(staging_dir=staging), **kw)
    require_passed(validate(staged.run, dataset_of(staged.run)))
    return transform(staged.run, dataset_of(staged.run)).run


def _report(run: Run) -> dict[str, Any]:
    report = run.report()
    assert report is not None
    return report


def _rule(report: dict[str, Any], name: str) -> int:
    return int(next(r for r in report["rules"] if r["name"] == name)["failed"])


def _edit(path: Path, fn: Any) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


# ------------------------------------------------------------------------------ staging


def test_stages_real_sample_with_lineage_and_images(sample: Path, tmp_path: Path) -> None:
    run = _built(sample, tmp_path / "staging")
    searches = run.raw("searches").collect()
    assert searches.height == 10
    assert set(searches["_file"]) == {f"{FL}/{p.name}" for p in (sample / FL).glob("*_parse.json")}
    assert (searches["_record"] == 0).all()
    assert run.manifest["quarantined"] == []
    images = run.raw("images").collect()
    assert images.height == 10 and images["sha256"].null_count() == 0
    # source_image_file ("data/states_baseline/...") does not resolve under the root: by name.
    assert set(images["found_by"]) == {"name"}
    assert (images["width"] > 0).all() and (images["height"] > 0).all()
    first = images.row(0, named=True)
    stored = tmp_path / "staging" / first["stored_path"]
    assert stored.is_file() and stored.name == f"{first['sha256']}.png"
    assert stored.parent.name == first["sha256"][:2]
    results = run.table("search_results").collect()
    assert results.height == 10
    assert results["license_status"].to_list().count("Clear") == 9
    assert results.schema["issue_date"] == pl.Date
    assert run.table("images").collect().height == 10
    assert run.table("datasets").collect()["tag"].to_list() == ["default"]


def test_cleaning_counts_in_report(sample: Path, tmp_path: Path) -> None:
    run = _built(sample, tmp_path / "staging")
    cleaning = {(c["level"], c["column"], c["name"]): c["changed"] for c in _report(run)["cleaning"]}
    assert cleaning[("licenses", "license_status", "status")] == 10   # "Clear/" → "Clear"
    assert cleaning[("licenses", "issue_date", "date")] == 10          # 09/14/2016 → ISO
    assert cleaning[("licenses", "expiration_date", "date")] == 10     # 2/28/2027, "" → NULL
    assert cleaning[("licenses", "suite", "blank")] == 10              # "" → NULL
    results = run.table("search_results").collect()
    assert results["expiration_date"].null_count() == 1
    assert results["suite"].null_count() == 10


def test_placeholders_no_result_and_dates(tree: Path, tmp_path: Path) -> None:
    folder = tree / FL

    def dirty(d: dict[str, Any]) -> None:
        lic = d["search_result"]["licenses"][0]
        lic.update(license_type="Not On File", issue_date="2019-12-12", license_status=" Active. ")
        lic["address"].update(street="N/A", city="---", zip_code="Unknown")

    _edit(folder / "Beaker_01_parse.json", dirty)

    def none_found(d: dict[str, Any]) -> None:
        d["metadata"]["pharmacy_name"] = "Nobody"
        d["search_result"].update(licenses=[], result_status="not_found")

    _edit(folder / "Belmar_09_parse.json", none_found)
    results = _built(tree, tmp_path / "staging").table("search_results").collect()
    beaker = results.filter(pl.col("search_name") == "Beaker").row(0, named=True)
    assert beaker["license_type"] is None and beaker["street"] is None
    assert beaker["city"] is None and beaker["zip_code"] is None
    assert beaker["license_status"] == "Active"
    assert str(beaker["issue_date"]) == "2019-12-12"
    nobody = results.filter(pl.col("search_name") == "Nobody")
    assert nobody.height == 1
    assert nobody["license_number"].to_list() == [None] and nobody["license_key"].to_list() == [""]


def test_duplicates_newest_search_wins_and_are_counted(tree: Path, tmp_path: Path) -> None:
    folder = tree / FL
    other = tree / "states_rescrape" / "FL"
    other.mkdir(parents=True)
    shutil.copy(folder / "Belmar_01_parse.json", other / "Belmar_01_parse.json")
    shutil.copy(folder / "Belmar_01.png", other / "Belmar_01.png")

    def newer(d: dict[str, Any]) -> None:
        d["metadata"]["search_timestamp"] = "2025-09-01T10:00:00"
        d["search_result"]["licenses"][0]["license_status"] = "Closed/"

    _edit(other / "Belmar_01_parse.json", newer)
    run = _built(tree, tmp_path / "staging")
    assert _rule(_report(run), "licenses.superseded") == 1
    results = run.table("search_results").collect()
    assert results.height == 10
    row = results.filter(pl.col("license_number") == "PH15522").row(0, named=True)
    assert row["license_status"] == "Closed" and row["source_file"].startswith("states_rescrape/")


# ------------------------------------------------------------------------------ quarantine


def test_broken_file_is_quarantined_and_strict_is_fatal(tree: Path, tmp_path: Path) -> None:
    (tree / FL / "Broken_01_parse.json").write_text('{"metadata": {"state": "FL", ')
    (tree / FL / "Bad_02_parse.json").write_text('{"metadata": {"state": "FL"}, "x": nope}')
    run = _built(tree, tmp_path / "staging")
    bad = {q["relpath"]: q["reason"] for q in run.manifest["quarantined"]}
    assert set(bad) == {f"{FL}/Broken_01_parse.json", f"{FL}/Bad_02_parse.json"}
    assert "truncated" in bad[f"{FL}/Broken_01_parse.json"]
    assert "malformed JSON" in bad[f"{FL}/Bad_02_parse.json"]
    assert {q["relpath"] for q in _report(run)["quarantined"]} == set(bad)
    assert run.raw("searches").collect().height == 10
    with pytest.raises(InputError, match="not valid JSON"):
        stage(DATASET, [tree], settings=Settings(staging_dir=tmp_path / "s2"), strict=True)
    # The same through the CLI: reported, and fatal with --strict.
    cli = CliRunner().invoke(main, ["--staging-dir", str(tmp_path / "s3"), "stage", "licenses",
                                    str(tree)])
    assert cli.exit_code == 0, cli.output
    assert "quarantined 2 file(s)" in cli.output
    cli = CliRunner().invoke(main, ["--staging-dir", str(tmp_path / "s3"), "stage", "licenses",
                                    str(tree), "--strict"])
    assert cli.exit_code == 2 and "Broken_01_parse.json" in cli.output


def test_mids_still_fails_on_a_broken_file(tmp_path: Path) -> None:
    """Quarantine is a source option: other datasets keep failing fast."""
    assert all(s.on_bad_file == "fail" for s in get_dataset("mids").sources)
    (tmp_path / "I12.json").write_text('{"Archetypes": [')
    with pytest.raises(InputError):
        stage(get_dataset("mids"), [tmp_path], settings=Settings(staging_dir=tmp_path / "st"))


# ------------------------------------------------------------------------------ images


def test_images_dedup_store_once_and_outside_paths_refused(tree: Path, tmp_path: Path) -> None:
    folder = tree / FL
    # Two results share one screenshot (same bytes): one image row, one stored copy.
    shutil.copy(folder / "Belmar_01.png", folder / "Belmar_02.png")
    secret = tmp_path / "secret.png"
    shutil.copy(folder / "Belmar_03.png", secret)
    _edit(folder / "Belmar_03_parse.json",
          lambda d: d["metadata"].update(source_image_file="../../../etc/passwd"))
    _edit(folder / "Belmar_04_parse.json",
          lambda d: d["metadata"].update(source_image_file=str(secret)))
    _edit(folder / "Belmar_05_parse.json",
          lambda d: d["metadata"].update(source_image_file="states_baseline/FL/Belmar_10.png"))
    (folder / "Belmar_06.png").unlink()
    (folder / "Belmar_06.png").symlink_to(secret)   # a symlink out of the root
    staging = tmp_path / "staging"
    run = _built(tree, staging)
    images = run.raw("images").collect()
    by_file = {r["_file"].rsplit("/", 1)[1]: r for r in images.iter_rows(named=True)}
    assert "outside the input root" in by_file["Belmar_03_parse.json"]["refused"]
    assert "outside the input root" in by_file["Belmar_04_parse.json"]["refused"]
    # Refused paths fall back to the file beside the result; never to the path given.
    assert by_file["Belmar_04_parse.json"]["image_file"] == f"{FL}/Belmar_04.png"
    assert by_file["Belmar_05_parse.json"]["found_by"] == "metadata"
    assert by_file["Belmar_05_parse.json"]["image_file"] == f"{FL}/Belmar_10.png"
    assert by_file["Belmar_06_parse.json"]["sha256"] is None   # the symlink out is not followed
    assert _rule(_report(run), "images.outside_root") == 2
    assert by_file["Belmar_01_parse.json"]["sha256"] == by_file["Belmar_02_parse.json"]["sha256"]
    table = run.table("images").collect()
    assert table.height == images["sha256"].n_unique() - 1   # distinct, NULL left out
    store = sorted((staging / "licenses" / "_store").rglob("*.png"))
    assert len(store) == table.height
    mtimes = {p: p.stat().st_mtime_ns for p in store}
    stage(DATASET, [tree], settings=Settings(staging_dir=staging), force=True)
    assert {p: p.stat().st_mtime_ns for p in sorted((staging / "licenses" / "_store").rglob("*.png"))} \
        == mtimes   # copied once: a second stage writes nothing


# ------------------------------------------------------------------------------ loads


def _count(url: str, sql: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


def test_full_load_and_merge(pg_url: str, tree: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    first = _built(tree, staging)
    full = load(first, dataset_of(first), database_url=pg_url)
    assert full.rows == {"datasets": 1, "images": 10, "search_results": 10,
                         "search_files": 10}
    assert _count(pg_url, "SELECT count(*) FROM licenses.search_results WHERE dataset = 'default'") == 10
    gen = _count(pg_url, "SELECT generation FROM etl.generations WHERE dataset = 'licenses'")

    # Re-import of the same directory: nothing changes, and it says so.
    again = load(_built(tree, staging), DATASET, database_url=pg_url, mode="merge")
    assert not again.changed
    assert again.merged["search_results"] == {"staged": 10, "inserted": 0, "updated": 0,
                                              "unchanged": 10}
    assert _count(pg_url, "SELECT generation FROM etl.generations WHERE dataset = 'licenses'") == gen
    assert _count(pg_url, "SELECT mode FROM etl.runs ORDER BY id DESC LIMIT 1") == "merge"

    # Editing one file updates exactly that row.
    _edit(tree / FL / "Belmar_03_parse.json",
          lambda d: d["search_result"]["licenses"][0].update(license_status="Suspended/"))
    edited = load(_built(tree, staging), DATASET, database_url=pg_url, mode="merge")
    assert edited.merged["search_results"]["updated"] == 1
    assert edited.merged["search_results"]["inserted"] == 0
    assert edited.merged["search_results"]["unchanged"] == 9
    assert _count(pg_url, "SELECT license_status FROM licenses.search_results "
                          "WHERE license_number = 'PH23408'") == "Suspended"
    assert _count(pg_url, "SELECT generation FROM etl.generations WHERE dataset = 'licenses'") == gen + 1

    # --delete-missing removes what the import no longer has (and its unreferenced image).
    (tree / FL / "Belmar_03_parse.json").unlink()
    (tree / FL / "Belmar_03.png").unlink()
    pruned = load(_built(tree, staging), DATASET, database_url=pg_url, mode="merge", delete_missing=True)
    assert pruned.merged["search_results"]["deleted"] == 1
    assert pruned.merged["images"]["deleted"] == 1
    assert _count(pg_url, "SELECT count(*) FROM licenses.search_results") == 9
    assert _count(pg_url, "SELECT count(*) FROM licenses.images") == 9


def test_tag_names_the_import_and_scopes_deletes(pg_url: str, tree: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    run = _built(tree, staging)
    base = load(run, dataset_of(run), database_url=pg_url, mode="merge", tag="baseline")
    assert base.merged["search_results"]["inserted"] == 10
    assert base.merged["datasets"]["inserted"] == 1
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(tree / FL, other / "FL")
    for p in sorted((other / "FL").glob("Belmar_0[2-9]*")):
        p.unlink()
    small = _built(other, staging)
    load(small, dataset_of(small), database_url=pg_url, mode="merge", tag="2025-08-10", delete_missing=True)
    counts = dict(psycopg.connect(pg_url).execute(
        "SELECT dataset, count(*) FROM licenses.search_results GROUP BY 1").fetchall())
    assert counts == {"baseline": 10, "2025-08-10": 2}
    assert _count(pg_url, "SELECT count(*) FROM licenses.datasets") == 2
    # A tag is a name: empty, blank or holding control characters is refused before any work.
    for bad in ("", "   ", "a\x00b", "line\nbreak"):
        with pytest.raises(ConfigError, match="is not a name"):
            load(small, dataset_of(small), database_url=pg_url, mode="merge", tag=bad)
    assert _count(pg_url, "SELECT count(*) FROM licenses.datasets") == 2


def test_cli_run_merge_says_nothing_changed(pg_url: str, tree: Path, tmp_path: Path) -> None:
    args = ["--staging-dir", str(tmp_path / "staging"), "run", "licenses", str(tree),
            "--database-url", pg_url, "--mode", "merge", "--tag", "baseline"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "nothing changed" in second.output
    run_dir = second.output.strip().splitlines()[-1]
    out = CliRunner().invoke(main, ["load", run_dir, "--database-url", pg_url, "--mode", "merge",
                                    "--tag", "baseline", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output[out.output.index("{"):])
    assert data["changed"] is False and data["merged"]["search_results"]["unchanged"] == 10


def test_merge_creates_the_live_schema_when_missing(pg_url: str, sample: Path, tmp_path: Path) -> None:
    run = _built(sample, tmp_path / "staging")
    load(run, dataset_of(run), database_url=pg_url, mode="merge")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA licenses CASCADE")
    result = load(run, dataset_of(run), database_url=pg_url, mode="merge")
    assert result.merged["search_results"]["inserted"] == 10
    assert _count(pg_url, "SELECT count(*) FROM licenses.search_results") == 10
