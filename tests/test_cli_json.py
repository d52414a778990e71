"""`--json` on every command (issue 15): exactly one JSON document on stdout, on success and on
failure (``{"error": {"type", "message", "file", "record", "next"}}``), with the exit code the
command has without ``--json``. The commands are found by walking the click tree, so a new
command without ``--json``, or without a case here, fails this test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner, Result

from etl.cli import main
from etl.datasets.mids.gen import generate_mids
from tests.conftest import PG_ADMIN_URL, REDIS_URL

BAD_DB = "postgresql://postgres@127.0.0.1:1/none"
ERROR_KEYS = {"type", "message", "file", "record", "next"}
#: The environment every command runs in: nothing from the machine's settings.
ENV: dict[str, str | None] = {"ETL_DATABASE_URL": None, "DATABASE_URL": None, "ETL_REDIS_URL": None,
                              "ETL_RULES": None, "ETL_DATASETS_DIR": None}


def commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command that runs: the leaves of the tree, and groups that run by themselves."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        path = (*prefix, name)
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command:
                yield path
            yield from commands(cmd, path)
        else:
            yield path


def command_of(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        found = cmd.get_command(click.Context(cmd), name)
        assert found is not None
        cmd = found
    return cmd


ALL = sorted(commands())


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) for p in ALL])
def test_every_command_has_the_shared_json_option(path: tuple[str, ...]) -> None:
    options = {p.name: p for p in command_of(path).params}
    assert "as_json" in options, f"`etl {' '.join(path)}` has no --json"
    assert options["as_json"].opts == ["--json"] and "also on failure" in (options["as_json"].help or "")


@dataclass
class World:
    """What the cases run against: an export, its run (loaded), a database, a scratch folder."""

    tmp: Path
    export: Path
    run: Path
    db: str
    power_id: int

    def invoke(self, args: list[str]) -> Result:
        return CliRunner().invoke(main, ["--staging-dir", str(self.tmp / "staging"), *args], env=ENV)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from etl.infra.pg import with_database

    tmp = tmp_path_factory.mktemp("cli-json")
    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db = with_database(PG_ADMIN_URL, name)
    try:
        export = tmp / "export"
        generate_mids(export, powersets=4, seed=5)
        res = CliRunner().invoke(main, ["--staging-dir", str(tmp / "staging"), "run", "mids", str(export),
                                        "--database-url", db, "--json"], env=ENV)
        assert res.exit_code == 0, res.output
        run = Path(json.loads(res.stdout)["run"])
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT min(power_id) FROM mids.powers").fetchone()
        assert row is not None
        yield World(tmp, export, run, db, int(row[0]))
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


Args = Callable[[World], list[str]]

#: Per command: arguments that succeed (None where a success is too slow to run here), and
#: arguments that fail. Every command of the tree needs an entry.
CASES: dict[str, tuple[Args | None, Args]] = {
    "bench": (None, lambda w: ["bench", "--dataset", "nope"]),
    "bench-reads": (None, lambda w: ["bench-reads", "--dataset", "nope"]),
    "cache clear": (lambda w: ["cache", "clear", "--database-url", w.db, "--redis-url", REDIS_URL],
                    lambda w: ["cache", "clear", "--database-url", w.db]),
    "cache stats": (lambda w: ["cache", "stats", "--database-url", w.db],
                    lambda w: ["cache", "stats", "--database-url", BAD_DB]),
    "cache warm": (lambda w: ["cache", "warm", "mids", "--top", "3", "--database-url", w.db,
                              "--redis-url", REDIS_URL],
                   lambda w: ["cache", "warm", "mids", "--database-url", w.db]),
    "datasets": (lambda w: ["datasets"], lambda w: ["datasets", "--bogus"]),
    "db optimize": (lambda w: ["db", "optimize", "--database-url", w.db],
                    lambda w: ["db", "optimize", "--database-url", BAD_DB]),
    "db start": (None, lambda w: ["db", "start", "--project-dir", str(w.run / "manifest.json")]),
    "db status": (lambda w: ["db", "status", "--project-dir", str(w.tmp / "no-project")],
                  lambda w: ["db", "status", "--project-dir", str(w.run / "manifest.json")]),
    "db stop": (lambda w: ["db", "stop", "--project-dir", str(w.tmp / "no-project")],
                lambda w: ["db", "stop", "--project-dir", str(w.run / "manifest.json")]),
    "db upgrade": (lambda w: ["db", "upgrade", "--database-url", w.db],
                   lambda w: ["db", "upgrade", "--database-url", BAD_DB]),
    "demo": (None, lambda w: ["demo", "--out", str(w.tmp / "demo"), "--powersets", "2",
                              "--database-url", BAD_DB]),
    "generate": (lambda w: ["generate", "mids", str(w.tmp / "gen"), "--powersets", "2"],
                 lambda w: ["generate", "nope", str(w.tmp / "gen")]),
    "health": (lambda w: ["health", "--database-url", w.db],
               lambda w: ["health", "--database-url", BAD_DB]),
    "init": (lambda w: ["init", "things", str(w.export), "--out", str(w.tmp / "things.toml"), "--force"],
             lambda w: ["init", "things", "--update", "--out", str(w.tmp / "none.toml")]),
    "load": (lambda w: ["load", str(w.run), "--database-url", w.db],
             lambda w: ["load", str(w.run), "--database-url", BAD_DB]),
    "query mids build-summary": (None, lambda w: ["query", "mids", "build-summary", "Nobody",
                                                  "--database-url", w.db]),
    "query mids power": (lambda w: ["query", "mids", "power", str(w.power_id), "--database-url", w.db],
                         lambda w: ["query", "mids", "power", "999999999", "--database-url", w.db]),
    "query mids powerset": (None, lambda w: ["query", "mids", "powerset", "No.Such_Set",
                                             "--database-url", w.db]),
    "rebuild": (lambda w: ["rebuild", str(w.run), "--database-url", w.db],
                lambda w: ["rebuild", str(w.run), "--database-url", BAD_DB]),
    "reconcile": (lambda w: ["reconcile", str(w.run)],
                  lambda w: ["reconcile", str(w.run), "--database-url", BAD_DB]),
    "report": (lambda w: ["report", str(w.run), "--out", str(w.tmp / "r.html"), "--database-url", w.db],
               lambda w: ["report", str(w.export)]),
    "run": (lambda w: ["run", "mids", str(w.export), "--database-url", w.db],
            lambda w: ["run", "mids", str(w.export), "--database-url", BAD_DB]),
    "runs": (lambda w: ["runs", "--database-url", w.db], lambda w: ["runs", "--database-url", BAD_DB]),
    "runs prune": (lambda w: ["runs", "prune", "--dry-run", "--database-url", w.db],
                   lambda w: ["runs", "prune", "--database-url", BAD_DB]),
    "runs show": (lambda w: ["runs", "show", "1", "--database-url", w.db],
                  lambda w: ["runs", "show", "999", "--database-url", w.db]),
    "stage": (lambda w: ["stage", "mids", str(w.export)], lambda w: ["stage", "nope", str(w.export)]),
    "stats": (lambda w: ["stats", "--database-url", w.db], lambda w: ["stats", "--database-url", BAD_DB]),
    "transform": (lambda w: ["transform", str(w.run)], lambda w: ["transform", str(w.export)]),
    "validate": (lambda w: ["validate", str(w.run)], lambda w: ["validate", str(w.export)]),
}


def _one_document(res: Result) -> object:
    """stdout holds exactly one JSON document (json.loads refuses anything after it)."""
    assert res.stdout.strip(), f"nothing on stdout; stderr: {res.stderr}"
    return json.loads(res.stdout)


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) for p in ALL])
def test_every_command_prints_one_json_document(world: World, path: tuple[str, ...]) -> None:
    key = " ".join(path)
    assert key in CASES, f"add a --json case for `etl {key}` to CASES"
    succeed, failing = CASES[key]
    if succeed is not None:
        res = world.invoke([*succeed(world), "--json"])
        assert res.exit_code == 0, res.output
        doc = _one_document(res)
        # A failure is told by "error" being an object (a ledger row's "error" is its text or null).
        assert not (isinstance(doc, dict) and isinstance(doc.get("error"), dict)), doc
    args = failing(world)
    res = world.invoke([*args, "--json"])
    assert res.exit_code != 0, res.output
    doc = _one_document(res)
    assert isinstance(doc, dict)
    # Every failure has its error object (a check that ran and failed, health: beside its report).
    assert isinstance(doc.get("error"), dict), doc
    assert set(doc["error"]) == ERROR_KEYS, doc
    assert doc["error"]["message"] and doc["error"]["type"] and doc["error"]["next"]
    # Without --json: the same exit code, and nothing but the human text (on stderr).
    plain = world.invoke(args)
    assert plain.exit_code == res.exit_code, (plain.output, res.output)
    assert "error" in plain.stderr.lower() or key == "health"


def test_phases_have_one_shape_everywhere(world: World) -> None:
    shapes = set()
    for args in (["run", "mids", str(world.export), "--database-url", world.db, "--force"],
                 ["stats", "--database-url", world.db], ["runs", "show", "1", "--database-url", world.db],
                 ["transform", str(world.run)]):
        res = world.invoke([*args, "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        found = doc["phases"] if "phases" in doc else [p for r in doc["runs"] for p in r["phases"]]
        assert found, args
        for p in found:
            assert isinstance(p["name"], str) and p["seconds"] >= 0 and p["rows"] >= 0, p
            assert p["peak_mb"] is None or p["peak_mb"] >= 0, p
            shapes.add(tuple(k for k in p if k != "extra"))
            if args[0] in ("run", "stats"):
                assert p["peak_mb"] > 0, (args, p)
    assert shapes == {("name", "seconds", "rows", "rows_per_s", "peak_mb")}


def test_a_load_has_one_shape_in_runs_and_stats(world: World) -> None:
    listed = json.loads(world.invoke(["runs", "--database-url", world.db, "--json"]).stdout)
    stats = json.loads(world.invoke(["stats", "--database-url", world.db, "--json"]).stdout)
    assert listed and stats["runs"]
    assert stats["runs"][0] == listed[0]


def test_a_usage_error_with_json_is_an_error_document(world: World) -> None:
    res = world.invoke(["load", "--json"])  # RUN_DIR missing
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["type"] == "UsageError"



def test_a_declined_confirmation_with_json_is_an_error_document(world: World) -> None:
    res = CliRunner().invoke(main, ["--staging-dir", str(world.tmp / "staging"), "load", str(world.run),
                                    "--database-url", world.db, "--unsafe-fast", "--json"],
                             env=ENV, input="n\n")
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout)["error"]["type"] == "Aborted"
    assert "Aborted!" not in res.stderr


def test_an_invalid_setting_with_json_is_an_error_document(world: World) -> None:
    res = CliRunner().invoke(main, ["datasets", "--json"], env={**ENV, "ETL_CHUNK_ROWS": "many"})
    assert res.exit_code == 2, res.output
    error = json.loads(res.stdout)["error"]
    assert error["type"] == "ConfigError" and "ETL_CHUNK_ROWS" in error["next"]
