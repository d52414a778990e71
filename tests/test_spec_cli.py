"""``etl init`` through the CLI: the spec file written where the project keeps specs, read back
equal, an edited spec never overwritten by accident, broken files listed with their byte offset."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from etl.cli import main
from etl.spec import Spec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_init_writes_the_spec_into_the_datasets_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ETL_DATASETS_DIR", str(tmp_path / "specs"))
    result = CliRunner().invoke(main, ["init", "powers", str(DATA / "mids"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    path = tmp_path / "specs" / "powers.toml"
    assert summary["spec"] == str(path)
    spec = Spec.from_toml(path.read_text())
    assert spec.name == "powers"
    # The header and the enhancement database are sources of their own, beside the powerset files.
    sources = {s.name: s for s in spec.sources}
    powersets = next(s for s in spec.sources if s.files == 32)
    assert {"i12", "enh_db", "salvage"} <= set(sources)
    paths = [lv.path for lv in powersets.levels]
    assert "Powers[]" in paths and "Powers[].Effects[]" in paths
    assert [s["files"] for s in summary["sources"]] == [s.files for s in spec.sources]

    # An existing (maybe edited) spec is kept unless --force.
    path.write_text(path.read_text() + "# my edit\n")
    again = CliRunner().invoke(main, ["init", "powers", str(DATA / "mids")])
    assert again.exit_code != 0
    assert "exists already" in again.output and "--force" in again.output
    assert path.read_text().endswith("# my edit\n")
    forced = CliRunner().invoke(main, ["init", "powers", str(DATA / "mids"), "--force"])
    assert forced.exit_code == 0, forced.output
    assert not path.read_text().endswith("# my edit\n")


def test_init_lists_a_broken_file_or_stops_with_strict(tmp_path: Path) -> None:
    out = tmp_path / "aodb.toml"
    result = CliRunner().invoke(main, ["init", "items", str(DATA / "aodb"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    skipped = json.loads(result.stdout)["skipped"]
    assert [s["file"] for s in skipped] == ["items_truncated_invalid.json"]
    assert skipped[0]["offset"] > 0
    assert Spec.from_toml(out.read_text()).skipped[0].file == "items_truncated_invalid.json"

    strict = CliRunner().invoke(main, ["init", "items2", str(DATA / "aodb"), "--out",
                                       str(tmp_path / "x.toml"), "--strict"])
    assert strict.exit_code != 0
    assert "items_truncated_invalid.json" in strict.output
    assert not (tmp_path / "x.toml").exists()


def test_init_refuses_a_name_postgresql_would_not_take(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", "My Export", str(DATA / "mids"),
                                       "--out", str(tmp_path / "a.toml")])
    assert result.exit_code != 0
    assert "lower-case identifier" in result.output


def test_init_skips_a_record_over_max_record_bytes_or_stops_with_strict(tmp_path: Path) -> None:
    """A one-object file, a gzip of one, or an NDJSON line over --max-record-bytes is read whole
    by neither init nor stage: init lists its file as skipped with the limit and how to raise it
    (with --strict it stops), and still reads the rest; a higher limit takes it."""
    import gzip

    export = tmp_path / "export"
    export.mkdir()
    for i in range(3):
        (export / f"rec_{i}.json").write_text(json.dumps({"id": i, "name": f"n{i}"}))
    big = json.dumps({"id": 9, "name": "x" * 5000})
    (export / "big.json").write_text(big)
    (export / "big_gz.json.gz").write_bytes(gzip.compress(big.encode()))
    (export / "lines.ndjson").write_text(json.dumps({"id": 7, "name": "s"}) + "\n" + big + "\n")
    env = {"ETL_DATASETS_DIR": str(tmp_path / "specs")}

    def init(*extra: str):
        return CliRunner().invoke(main, ["init", "things", str(export), "--json", "--force", *extra],
                                  env=env)

    out = init("--max-record-bytes", "1000")
    assert out.exit_code == 0, out.output
    skipped = {s["file"]: s["error"] for s in json.loads(out.stdout)["skipped"]}
    assert set(skipped) == {"big.json", "big_gz.json.gz", "lines.ndjson"}
    assert all("over the limit of 1,000 bytes" in e and "--max-record-bytes" in e for e in skipped.values())
    assert sum(s["files"] for s in json.loads(out.stdout)["sources"]) == 3
    strict = init("--max-record-bytes", "1000", "--strict")
    assert strict.exit_code != 0 and "--max-record-bytes" in strict.output
    assert json.loads(init().stdout)["skipped"] == []  # the default limit (64 MB) takes them all
