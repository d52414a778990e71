"""Broken input: `etl stage` exits 2, names the file and where in it, and leaves no run behind.

Every test builds a small valid mids export with the generator and breaks one thing in it, so a
failure can only come from the broken file. The real truncated sample is read from
``../shared/data`` and copied into ``tmp_path`` only.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from etl import InputError, Settings, get_dataset
from etl.cli import main
from etl.datasets.mids.gen import generate_mids
from etl.stage import stage
from tests.conftest import SHARED, require_shared

TRUNCATED_SAMPLE = SHARED / "aodb" / "items_truncated_invalid.json"

#: "error: <file>, record N, byte M: message" — record and byte are each optional.
WHERE = re.compile(r"error: (?P<file>\S+?)(?:, record (?P<record>\d+))?(?:, byte (?P<byte>\d+))?: ")


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def truncated_sample() -> Path:
    """The real file cut off by its exporter."""
    return require_shared(TRUNCATED_SAMPLE)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A minimal valid mids export: header, enhancements, salvage and three powersets."""
    root = tmp_path / "export"
    generate_mids(root, powersets=3, seed=0)
    return root


def add_powerset_file(export: Path, content: bytes, name: str = "Broken.json") -> Path:
    path = export / "db" / "Player" / name
    path.write_bytes(content)
    return path


def stage_cli(staging: Path, export: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["--staging-dir", str(staging), "stage", "mids", str(export), *extra])


def assert_refused(result: Result, staging: Path, broken: Path | None = None) -> re.Match[str]:
    """Exit 2, an error naming a file and a record or byte offset, and no (partial) run left."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.stdout == "", "nothing for scripts on stdout when staging fails"
    m = WHERE.search(result.stderr)
    assert m, f"no 'error: FILE, record N / byte N:' in {result.stderr!r}"
    assert m["record"] is not None or m["byte"] is not None, result.stderr
    if broken is not None:
        assert m["file"] == str(broken), result.stderr
    assert_no_run(staging)
    return m


def assert_no_run(staging: Path) -> None:
    if not staging.exists():
        return
    assert list(staging.rglob("manifest.json")) == []
    assert list(staging.rglob(".*.tmp-*")) == []
    assert [p for p in staging.rglob("*") if ".tmp" in p.name] == []


# ------------------------------------------------------------------------------ the cases


def test_real_truncated_file(tmp_path: Path, export: Path, truncated_sample: Path) -> None:
    # Cut off mid-array by its exporter: the last record ends with a trailing comma.
    broken = export / "db" / "Player" / "items_truncated_invalid.json"
    shutil.copyfile(truncated_sample, broken)
    st = tmp_path / "staging"
    result = stage_cli(st, export)
    m = assert_refused(result, st, broken)
    assert m["byte"] is not None
    # The offset points at the trailing comma itself.
    assert truncated_sample.read_bytes()[int(m["byte"]):int(m["byte"]) + 1] == b","
    assert "trailing comma" in result.stderr


def test_truncated_array(tmp_path: Path, export: Path) -> None:
    content = b'[{"a":1},\n{"a":2},\n'
    broken = add_powerset_file(export, content)
    st = tmp_path / "staging"
    result = stage_cli(st, export)
    m = assert_refused(result, st, broken)
    assert m["byte"] == str(len(content))
    assert "truncated" in result.stderr


def test_truncated_array_via_library(tmp_path: Path, export: Path) -> None:
    content = b'[{"a":1},\n{"a":2},\n'
    broken = add_powerset_file(export, content)
    st = tmp_path / "staging"
    with pytest.raises(InputError) as info:
        stage(get_dataset("mids"), [export], settings=Settings(staging_dir=st))
    err = info.value
    assert err.file == str(broken)
    assert err.record is not None or err.offset is not None
    assert err.offset == len(content)
    assert err.exit_code == 2
    assert_no_run(st)


@pytest.mark.parametrize("shape", ["object", "array"])
def test_invalid_utf8_in_string(tmp_path: Path, export: Path, shape: str) -> None:
    # Single-object files and arrays go through different DuckDB readers; both must say where.
    good = next((export / "db" / "Player").glob("*.json")).read_bytes()
    key = b'"FullName": "'
    at = good.index(key) + len(key)
    content = good[:at] + b"\xff\xfe" + good[at:]
    if shape == "array":
        content = b"[" + content + b"]"
        at += 1
    broken = add_powerset_file(export, content)
    st = tmp_path / "staging"
    result = stage_cli(st, export)
    m = assert_refused(result, st, broken)
    assert m["byte"] == str(at)
    assert "UTF-8" in result.stderr


def test_record_of_wrong_type(tmp_path: Path, export: Path) -> None:
    broken = add_powerset_file(export, b'[{"FullName": "X"}, 5]')
    st = tmp_path / "staging"
    result = stage_cli(st, export)
    m = assert_refused(result, st, broken)
    assert m["record"] == "1"
    assert "not a JSON object" in result.stderr


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n  "], ids=["empty", "whitespace"])
def test_empty_file(tmp_path: Path, export: Path, content: bytes) -> None:
    broken = add_powerset_file(export, content)
    st = tmp_path / "staging"
    result = stage_cli(st, export)
    assert_refused(result, st, broken)
    assert "empty" in result.stderr


def test_non_json_file_with_json_extension(tmp_path: Path, export: Path) -> None:
    broken = add_powerset_file(export, b"hello world\n", name="README.json")
    st = tmp_path / "staging"
    result = stage_cli(st, export)
    m = assert_refused(result, st, broken)
    assert m["byte"] == "0"
    assert "not JSON" in result.stderr


def test_record_over_size_limit(tmp_path: Path, export: Path) -> None:
    st = tmp_path / "staging"
    result = stage_cli(st, export, "--max-record-bytes", "1000")
    m = assert_refused(result, st)
    # Sources are staged in the dataset's order: the archetype header is the first big record.
    assert m["file"] == str(export / "I12.json")
    assert m["record"] == "0"
    assert "limit of 1000 bytes" in result.stderr
    assert "--max-record-bytes" in result.stderr


def test_non_json_extension_is_ignored(tmp_path: Path, export: Path) -> None:
    (export / "db" / "Player" / "notes.txt").write_text("hello world, not JSON at all\n")
    (export / "NOTES.txt").write_text("{ broken")
    st = tmp_path / "staging"
    result = stage_cli(st, export)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (run_dir / "manifest.json").is_file()
    assert run_dir.parent.parent == st
    assert list(st.rglob(".*.tmp-*")) == []


def test_file_name_with_brackets_is_named_verbatim(tmp_path: Path, export: Path) -> None:
    # The CLI prints errors with rich: a name like "[old]" must not be taken for markup.
    broken = add_powerset_file(export, b"", name="Powers [old].json")
    st = tmp_path / "staging"
    result = stage_cli(st, export)
    assert result.exit_code == 2, result.output
    assert f"error: {broken}, byte 0: file is empty" in result.stderr
    assert_no_run(st)


def test_run_honours_max_record_bytes(tmp_path: Path, export: Path, pg_url: str) -> None:
    """`etl run` stages with the limit it is given (it used to stage with the default)."""
    st = tmp_path / "staging"
    result = CliRunner().invoke(main, ["run", "mids", str(export), "--max-record-bytes", "1000",
                                       "--database-url", pg_url],
                                env={"ETL_STAGING_DIR": str(st)})
    m = assert_refused(result, st)
    assert m["file"] == str(export / "I12.json")
    assert "limit of 1000 bytes" in result.stderr


def test_a_folder_whose_name_looks_like_a_glob_is_that_folder(tmp_path: Path, export: Path) -> None:
    """`export [v2]` names a folder that exists: it is read as it is, not as a glob ("[v2]" would
    match one character)."""
    named = tmp_path / "export [v2]"
    shutil.copytree(export, named)
    st = tmp_path / "staging"
    result = stage_cli(st, named)
    assert result.exit_code == 0, result.output
    assert (Path(result.stdout.strip().splitlines()[-1]) / "manifest.json").is_file()


def test_an_array_or_object_in_a_text_field_is_a_type_error(tmp_path: Path, export: Path) -> None:
    """Not its JSON text in the text column (a 10,000-deep [[[... became a 20 KB powerset name):
    a type error the types rule rejects with the file and record, the value kept whole in the
    row's _extra (issue 17)."""
    import json

    from etl import get_dataset
    from etl.datasets import dataset_of
    from etl.validate import validate

    src = next((export / "db").rglob("*.json"))
    rec = json.loads(src.read_text())
    rec["DisplayName"] = "@DEEP@"
    rec["GroupName"] = {"not": "text"}
    src.write_text(json.dumps(rec).replace('"@DEEP@"', "[" * 10_000 + "1" + "]" * 10_000))
    staged = stage(get_dataset("mids"), [export], settings=Settings(staging_dir=tmp_path / "st"))
    rows = staged.run.raw("powersets").filter(pl.col("_file").str.ends_with(src.name)).collect()
    row = rows.row(0, named=True)
    assert row["display_name"] is None and row["group_name"] is None
    assert sorted(row["_type_errors"]) == ["display_name", "group_name"]
    assert '"GroupName":{"not":"text"}' in row["_extra"] and "[" * 10_000 + "1" in row["_extra"]
    checked = validate(staged.run, dataset_of(staged.run), max_reject_ratio=1.0)
    (types,) = [r for r in checked.report["rules"] if r["name"] == "powersets.types"]
    assert types["failed"] == 1
    assert types["examples"][0]["file"].endswith(src.name)
