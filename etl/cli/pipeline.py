"""The pipeline's commands: stage, validate, transform, load, run, rebuild, reconcile."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from etl.cli.failures import failed
from etl.cli.options import (
    RunDir,
    ctx_settings,
    engine_options,
    json_option,
    load_options,
    looks_like_run,
    resolve_mode,
    rule_option,
    stage_options,
)
from etl.cli.render import (
    connect_hint,
    echo_json,
    err,
    handle_errors,
    print_drift,
    print_duplicate_keys,
    print_levels,
    print_load,
    print_phases,
    print_pipeline,
    print_quarantined,
    print_report,
    print_rules,
    progress_bar,
    staged_doc,
    validated_doc,
    validation_shown,
)
from etl.dataset import Dataset
from etl.datasets import dataset_of, resolve
from etl.metrics import Phase
from etl.run import Run, open_run


def default_sources(ds: Dataset) -> list[str]:
    """What to read when no SOURCE is given: the export a spec dataset was inferred from."""
    if ds.default_source is None:
        raise click.UsageError(f"give the export's files or folders: SOURCE... (dataset {ds.name})")
    if not ds.default_source.exists():
        raise click.UsageError(f"the export the spec of {ds.name} was inferred from "
                               f"({ds.default_source}) is not there; give SOURCE...")
    return [str(ds.default_source)]


def do_stage(ctx: click.Context, dataset: str, sources: tuple[str, ...], *, force: bool,
              max_record_bytes: int, strict: bool = False, as_json: bool = False,
              **flags: Any) -> tuple[Run, Phase, bool]:
    from etl.stage import stage

    settings = ctx_settings(ctx, **flags)
    ds = resolve(dataset, datasets_dir=settings.datasets_dir)
    with progress_bar() as progress:
        result = stage(ds, list(sources or default_sources(ds)), settings=settings, force=force,
                       max_record_bytes=max_record_bytes, progress=progress, strict=strict)
    print_quarantined(result.run.manifest.get("quarantined") or [])
    if not as_json:
        print_duplicate_keys(result.run.manifest)
        print_drift(result.run.manifest)
    on_ray = result.phase.extra.get("ray")
    if on_ray and not result.skipped:
        err.print(f"staged on Ray: {on_ray['nodes']} node(s), {on_ray['cpus']} CPUs; {on_ray['groups']} "
                  f"group tasks {on_ray['group_seconds']:.2f} s, {on_ray['chunks']} chunk tasks "
                  f"{on_ray['chunk_seconds']:.2f} s")
    if result.skipped:
        err.print(f"[yellow]already staged[/] (same content, dataset version "
                  f"{result.run.manifest['dataset_version']}): {escape(str(result.run.path))} "
                  "— use --force to redo")
    return result.run, result.phase, result.skipped


@click.command("stage")
@click.argument("dataset")
@click.argument("sources", nargs=-1)
@stage_options
@json_option
@click.pass_context
@handle_errors
def stage_cmd(ctx: click.Context, dataset: str, sources: tuple[str, ...], **opts: Any) -> None:
    """Stage an export: JSON files, directories or globs -> Parquet chunks.

    DATASET is a dataset name (`etl datasets`), a spec file written by `etl init` (FILE.toml), or
    the name of a spec in the datasets folder; a spec dataset with no SOURCE reads the export it
    was inferred from. Writes staging/DATASET/RUN/raw/<level>/part-*.parquet and manifest.json
    (a spec dataset's run also keeps the spec it was staged with, spec.toml). The run id comes
    from the content, so staging the same export again is skipped. The last line printed is the
    run directory.

    \b
    Examples:
      etl stage mids ../shared/data/mids
      etl stage mids 'exports/**/*.json' --memory-limit 512MB --chunk-rows 50000
      etl stage datasets/powers.toml ../shared/data/mids_full
      etl stage mids ../shared/data/mids_full --engine ray --ray-address ray://head:10001
    """
    run, phase, skipped = do_stage(ctx, dataset, sources, **opts)
    if opts.get("as_json"):
        echo_json(staged_doc(run, [] if skipped else [phase], skipped=skipped))
        return
    if not skipped:
        print_levels(run)
        print_phases([phase])
    click.echo(run.path)



@click.command("validate")
@click.argument("target")
@click.argument("sources", nargs=-1)
@click.option("--max-reject-ratio", type=float, default=0.0, show_default=True,
              help="Fraction of a level's rows that error rules may reject before the run fails.")
@rule_option
@click.option("--list-rules", is_flag=True, help="List the rules of the dataset (TARGET: a dataset "
              "name or a run) with the severity each would run with, and exit.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write report.json here (for CI).")
@stage_options
@json_option
@click.pass_context
@handle_errors
def validate_cmd(ctx: click.Context, target: str, sources: tuple[str, ...], max_reject_ratio: float,
                 rules: tuple[str, ...], list_rules: bool, report_file: Path | None,
                 **opts: Any) -> None:
    """Check a staged run (or stage the export first) against the dataset's rules.

    TARGET is a run directory, or a dataset (a name, or a spec file from `etl init`) followed
    by the export's SOURCES (a spec dataset's default: the export it was inferred from). Writes
    report.json and rejects/<level>.parquet in the run. Exit 0: passed; 1: error rules
    rejected more than --max-reject-ratio of some level; 2: the input cannot be read.

    Severities can be set per rule: --rule NAME=SEVERITY here, ETL_RULES="NAME=SEVERITY,...",
    or [tool.etl] rules = { "NAME" = "SEVERITY" } in pyproject.toml (flag > env > file).

    \b
    Examples:
      etl validate staging/mids/mids-1a2b3c4d5e6f
      etl validate mids ../shared/data/mids --report out/report.json
      etl validate mids ../shared/data/mids --rule powersets.full_name.unique=warning
      etl validate mids --list-rules
    """
    from etl.validate import validate

    settings = ctx_settings(ctx, rules=rules)
    as_json = bool(opts.get("as_json"))
    if list_rules:
        ds = dataset_of(open_run(target)) if looks_like_run(target) else resolve(
            target, datasets_dir=settings.datasets_dir)
        if as_json:
            from etl.validate.rules import resolve_rules

            echo_json({"dataset": ds.name, "rules": [res.to_dict(None, []) for res in
                                                     resolve_rules(ds, settings.rules)]})
        else:
            print_rules(ds, settings)
        return
    phases: list[Phase] = []
    if sources or not looks_like_run(target):
        run, phase, skipped = do_stage(ctx, target, sources, **opts)
        if not skipped:
            phases.append(phase)
    else:
        run = open_run(target)
    with progress_bar() as progress:
        result = validate(run, dataset_of(run), max_reject_ratio=max_reject_ratio,
                          rules=settings.rules, report_file=report_file, progress=progress)
    phases.append(result.phase)
    if as_json:
        echo_json(validated_doc(result, phases))
    else:
        print_report(result.report)
        print_phases(phases)
        click.echo(run.path)
    if not result.passed:
        err.print(f"[bold red]validation failed[/]: see {escape(str(run.path / 'report.json'))} and "
                  f"{escape(str(run.path / 'rejects'))}")
        sys.exit(1)


@click.command("transform")
@click.argument("run_dir", type=RunDir(exists=False))
@json_option
@engine_options
@click.pass_context
@handle_errors
def transform_cmd(ctx: click.Context, run_dir: Path | str, as_json: bool, engine: str | None,
                  ray_address: str | None) -> None:
    """Build the target tables of a validated run as Parquet under RUN_DIR/tables/.

    With --engine ray each table is built by a task on the Ray cluster (the same files and
    checksums as locally; the run must sit in a staging root every node sees).

    \b
    Examples:
      etl transform staging/mids/mids-1a2b3c4d5e6f
      etl transform staging/mids/mids-1a2b3c4d5e6f --engine ray --ray-address ray://head:10001
    """
    from etl.transform import transform

    settings = ctx_settings(ctx, engine=engine, ray_address=ray_address)
    run = open_run(run_dir)
    with progress_bar() as progress:
        result = transform(run, dataset_of(run), progress=progress, settings=settings)
    if as_json:
        echo_json({"run": str(run.path), "run_id": run.id, "dataset": run.dataset_name,
                   "tables": result.rows, "phases": [result.phase]})
        return
    table = Table(title=f"tables of {run.id}", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in result.rows.items():
        table.add_row(name, f"{rows:,}")
    err.print(table)
    on_ray = result.phase.extra.get("ray")
    if on_ray:
        err.print(f"transformed on Ray: {on_ray['nodes']} node(s), {on_ray['cpus']} CPUs; {on_ray['tasks']} "
                  f"table tasks {on_ray['task_seconds']:.2f} s")
    print_phases([result.phase])
    click.echo(run.path)


@click.command("load")
@click.argument("run_dir", type=RunDir())
@load_options
@click.option("--force", is_flag=True, help="Load again even if this run is already loaded.")
@engine_options
@click.pass_context
@handle_errors
def load_cmd(ctx: click.Context, run_dir: Path | str, database_url: str | None, unsafe_fast: bool, yes: bool,
             as_json: bool, force: bool, load_mode: str, tag: str | None,
             delete_missing: bool, warm: int, engine: str | None, ray_address: str | None) -> None:
    """Load a transformed run into PostgreSQL: a new schema, COPY, keys, indexes, views, checks,
    then one swap.

    The dataset's live schema is untouched until the final swap. An interrupted load (killed,
    connection lost) resumes when you run the same command again. A second load of the same
    dataset while one runs is refused.

    \b
    Examples:
      etl load staging/mids/mids-1a2b3c4d5e6f
      etl load staging/mids/mids-1a2b3c4d5e6f --database-url postgresql://me@db:5432/games
      etl load staging/licenses/licenses-1a2b3c4d5e6f --mode merge --tag baseline
      ETL_REDIS_URL=redis://localhost:6379/0 etl load staging/mids/mids-1a2b3c4d5e6f --warm 200
      etl load staging/mids/mids-1a2b3c4d5e6f --engine ray --ray-address ray://head:10001
    """
    from etl.load import load

    settings = ctx_settings(ctx, database_url=database_url, engine=engine, ray_address=ray_address)
    mode = resolve_mode(unsafe_fast, yes, load_mode)
    run = open_run(run_dir)
    with progress_bar() as progress:
        result = load(run, dataset_of(run), database_url=settings.database_url, mode=mode,
                      force=force, progress=progress, tag=tag, delete_missing=delete_missing, warm=warm,
                      settings=settings)
    if as_json:
        echo_json({
            "run": str(run.path), "run_id": run.id, "schema": result.schema,
            "ledger_id": result.ledger_id, "mode": result.mode, "skipped": result.skipped,
            "merged": result.merged, "changed": result.changed, "tag": result.tag,
            "rows": result.rows, "checksums": result.checksums, "phases": result.phases})
        return
    print_load(result)
    if result.phases:
        print_phases(result.phases)
    connect_hint(result.url, settings)
    click.echo(run.path)


@click.command("run")
@click.argument("dataset")
@click.argument("sources", nargs=-1)
@click.option("--max-reject-ratio", type=float, default=0.0, show_default=True,
              help="Allowed share of rejected rows per level before the run stops.")
@rule_option
@load_options
@stage_options
@click.pass_context
@handle_errors
def run_cmd(ctx: click.Context, dataset: str, sources: tuple[str, ...], max_reject_ratio: float,
            rules: tuple[str, ...], database_url: str | None, unsafe_fast: bool, yes: bool,
            as_json: bool, load_mode: str, tag: str | None, delete_missing: bool, warm: int,
            **opts: Any) -> None:
    """Stage, validate, transform and load an export in one go.

    DATASET is a dataset name (`etl datasets`), a spec file written by `etl init` (FILE.toml),
    or the name of a spec in the datasets folder ([tool.etl] datasets-dir, ETL_DATASETS_DIR;
    ./datasets by default). A spec dataset given no SOURCE reads the export it was inferred
    from.

    Validation errors stop the run before anything reaches the database, with the failing
    rules shown as `etl validate` shows them (--json: in the JSON error document on stdout).
    Ends with a per-phase summary (time, rows, rows/s, peak memory); --json prints it as JSON
    for scripts.

    \b
    Examples:
      etl run mids ../shared/data/mids
      etl run mids ./export --database-url postgresql://me@db:5432/games --json
      etl run mids ./export --rule powersets.full_name.unique=warning
      etl run mids ../shared/data/mids_full --engine ray
      etl init powers ../shared/data/mids_full && etl run powers
      etl run specs/items.toml ./items-2026-11.json --mode merge
    """
    from etl.pipeline import run_all

    settings = ctx_settings(ctx, database_url=database_url, memory_limit=opts.get("memory_limit"),
                         chunk_rows=opts.get("chunk_rows"), threads=opts.get("threads"),
                         engine=opts.get("engine"), ray_address=opts.get("ray_address"), rules=rules)
    mode = resolve_mode(unsafe_fast, yes, load_mode)
    with validation_shown(as_json=as_json), progress_bar() as progress:
        ds = resolve(dataset, datasets_dir=settings.datasets_dir)
        result = run_all(ds, list(sources or default_sources(ds)), settings=settings,
                         max_reject_ratio=max_reject_ratio, mode=mode, force=opts.get("force", False),
                         progress=progress, tag=tag, delete_missing=delete_missing,
                         strict=opts.get("strict", False), warm=warm,
                         max_record_bytes=opts["max_record_bytes"])
    print_quarantined(result.run.manifest.get("quarantined") or [])
    print_duplicate_keys(result.run.manifest)
    if not as_json:
        print_drift(result.run.manifest)
    print_pipeline(result, settings, as_json=as_json)


@click.command("rebuild")
@click.argument("run_dir", type=RunDir())
@click.option("--database-url", help="PostgreSQL URL (default: as for `etl load`).")
@json_option
@click.pass_context
@handle_errors
def rebuild_cmd(ctx: click.Context, run_dir: Path | str, database_url: str | None, as_json: bool) -> None:
    """Rebuild the dataset in the database from a staged run directory alone.

    Every chunk file is first checked against the sha256 in the manifest; a changed or missing
    file is refused and named. The tables then load as a full, verified, atomic load.

    \b
    Example:
      etl rebuild staging/mids/mids-1a2b3c4d5e6f
    """
    from etl.pipeline import rebuild

    settings = ctx_settings(ctx, database_url=database_url)
    with progress_bar() as progress:
        result = rebuild(run_dir, settings=settings, progress=progress)
    if as_json:
        echo_json(result.summary())
        return
    if result.load is not None:
        print_load(result.load)
    print_phases(result.phases)
    if result.load is not None:
        connect_hint(result.load.url, settings)
    click.echo(result.run.path)


@click.command("reconcile")
@click.argument("run_dir", type=RunDir())
@click.option("--database-url", help="Rebuild from the rows this database holds (the dataset's "
              "live schema, matched to the staged lineage by primary key) instead of the staged "
              "tables.")
@click.option("--schema", help="With --database-url: the schema to read (default: the live one).")
@json_option
@handle_errors
def reconcile_cmd(run_dir: Path | str, database_url: str | None, schema: str | None, as_json: bool) -> None:
    """Rebuild every source record from the rows it became and compare it with the export.

    Each record of a level with a home table is its row's typed columns plus its `extra` JSON
    (every key no column types); child records are rows of their own, found by their lineage.
    Exit 0 when every record matches (rejected records are counted apart), 1 otherwise.

    \b
    Examples:
      etl reconcile staging/mids/mids-1a2b3c4d5e6f --json
      etl reconcile staging/mids/mids-1a2b3c4d5e6f --database-url postgresql://me@db/games
    """
    from etl.load.reconcile import reconcile

    run = open_run(run_dir)
    with progress_bar() as progress:
        result = reconcile(run, dataset_of(run), database_url=database_url, schema=schema,
                           progress=progress)
    if as_json:
        doc = result.to_dict()
        if not result.ok:
            first = result.mismatches[0] if result.mismatches else {}
            doc = {"error": failed(
                "ReconcileMismatch", f"{result.mismatched:,} record(s) differ from the export and "
                f"{result.missing:,} are missing" + (f"; first: {first['difference']}" if first else ""),
                file=first.get("file"), record=first.get("record"),
                next_step="see `mismatches`: the transform or load lost or changed what the export "
                          "holds"), **doc}
        echo_json(doc)
    else:
        table = Table(title=f"reconciliation of {run.id}: {result.records:,} records, "
                            f"{result.keys_compared:,} keys compared", title_justify="left")
        for col in ("level", "records", "matched", "rejected", "mismatched", "missing"):
            table.add_column(col, justify="left" if col == "level" else "right")
        for level, c in result.levels.items():
            table.add_row(level, *(f"{c[k]:,}" for k in ("records", "matched", "rejected",
                                                          "mismatched", "missing")))
        err.print(table)
        if result.cleaned:
            err.print(f"{result.cleaned:,} of the matched records are equal once their NUL "
                      "characters are removed (the built-in strip_nul cleaning: PostgreSQL's "
                      "text and json cannot hold NUL)", highlight=False)
        for m in result.mismatches:
            err.print(escape(f"{m['file']} record {m['record']} {m['path'] or ''} "
                             f"{m['key'] or ''}: {m['difference']}"), highlight=False)
    if not result.ok:
        sys.exit(1)
