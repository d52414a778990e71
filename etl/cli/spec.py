"""``etl init``: a dataset spec inferred from any JSON export."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from etl.cli.options import ctx_settings, json_option
from etl.cli.render import echo_json, err, handle_errors
from etl.spec import init


@click.command("init")
@click.argument("name")
@click.argument("sources", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the spec here (default: NAME.toml in the datasets folder, "
                   "[tool.etl] datasets-dir or ETL_DATASETS_DIR, ./datasets if unset).")
@click.option("--force", is_flag=True, help="Replace an existing spec file.")
@click.option("--update", is_flag=True,
              help="Bring an existing spec along with the export (a later one that drifted): keep "
                   "what it declares as edited, widen types the data outgrew, add new sources, "
                   "levels and columns. Without SOURCE, reads the spec's root.")
@click.option("--strict", is_flag=True,
              help="Stop at a file that is not valid JSON (default: list it as skipped).")
@click.option("--max-record-bytes", type=int, default=64 << 20, show_default=True,
              help="Skip (with --strict: stop at) a file holding a record larger than this: a "
                   "one-object file or an NDJSON line is read whole (as `etl stage` refuses it).")
@json_option
@click.pass_context
@handle_errors
def init_cmd(ctx: click.Context, name: str, sources: tuple[Path, ...], out: Path | None, force: bool,
             update: bool, strict: bool, max_record_bytes: int, as_json: bool) -> None:
    """Read every record of a JSON export and write a dataset spec (TOML) to edit and commit.

    Files of different shapes become separate sources; nested lists of objects become child
    levels keyed to their parent; types are widened over all records; keys and rules are
    proposed and marked as inferred.

    \b
    Then `etl run NAME` (or `etl run FILE.toml SOURCE...`) loads the export with it.

    \b
    Examples:
      etl init powers ../shared/data/mids_full
      etl init items export.json --out specs/items.toml
      etl init powers ../exports/2026-12 --update
      etl init dumps ./dumps --max-record-bytes 268435456
    """
    settings = ctx_settings(ctx)
    if not sources and not update:
        raise click.UsageError("give the export's files or folders: etl init NAME SOURCE...")
    written = init(name, list(sources), out=out, datasets_dir=settings.datasets_dir, force=force,
                   strict=strict, update=update, max_record_bytes=max_record_bytes)
    spec = written.spec
    if as_json:
        echo_json({
            "spec": str(written.path), "name": spec.name, "root": spec.root,
            "sources": [{"name": s.name, "kind": s.kind, "files": s.files, "patterns": s.patterns,
                         "levels": [{"path": lv.path, "table": lv.table, "rows": lv.rows,
                                     "columns": len(lv.columns)} for lv in s.levels]}
                        for s in spec.sources],
            "warnings": spec.warnings, "changes": list(written.changes),
            "skipped": [{"file": f.file, "offset": f.offset, "error": f.error} for f in spec.skipped],
        })
        return
    table = Table(title=escape(f"spec {spec.name} → {written.path}"), title_justify="left")
    for col in ("source", "kind", "files", "level", "table", "rows", "columns", "key"):
        table.add_column(col)
    for src in spec.sources:
        for lv in src.levels:
            key = "surrogate" if lv.key.surrogate else ", ".join(lv.key.columns)
            table.add_row(escape(src.name), src.kind, f"{src.files:,}", escape(lv.path or "(record)"),
                          escape(lv.table), f"{lv.rows:,}", str(len(lv.columns)), escape(key))
    Console().print(table)
    for warning in spec.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for bad in spec.skipped:
        err.print(f"[yellow]skipped:[/] {escape(bad.file)} at byte {bad.offset}: {escape(bad.error)}",
                  highlight=False)
    if update:
        for change in written.changes:
            err.print(f"[green]updated:[/] {escape(change)}", highlight=False)
        if not written.changes:
            err.print("the spec declares everything the export holds: nothing to update")
    how = spec.name if out is None else f"{written.path}"
    err.print(escape(f"edit {written.path}, then commit it; load with `etl run {how}`"))
