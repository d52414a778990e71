"""What the toolkit knows and makes: datasets, generate, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from etl.cli.options import ctx_settings, json_option
from etl.cli.render import F, echo_json, err, handle_errors, print_pipeline, progress_bar
from etl.dataset import Generated, Generator, GenOption
from etl.datasets import available, get_dataset


@click.command("datasets")
@json_option
@click.pass_context
@handle_errors
def datasets_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the datasets this toolkit knows: built-in, from plugins, and the specs in the
    project's datasets folder ([tool.etl] datasets-dir, ETL_DATASETS_DIR; ./datasets).

    \b
    Example:
      etl datasets
    """
    from etl.datasets import resolve, spec_files

    found = dict(available())
    folder = ctx_settings(ctx).datasets_dir
    for name, path in spec_files(folder).items():
        if name not in found:
            found[name] = resolve(path, datasets_dir=folder)
    if as_json:
        echo_json({name: {
            "version": ds.version, "description": ds.description,
            "levels": list(ds.levels), "tables": [t.name for t in ds.tables],
        } for name, ds in found.items()})
        return
    table = Table(title="datasets", title_justify="left")
    for col in ("name", "version", "staged levels", "target tables", "description"):
        table.add_column(col)
    for name, ds in sorted(found.items()):
        table.add_row(name, ds.version, ", ".join(ds.levels), ", ".join(t.name for t in ds.tables),
                      ds.description)
    Console().print(table)


def _generators() -> dict[str, Generator]:
    return {name: ds.generator for name, ds in available().items() if ds.generator is not None}


def _option_help(owners: list[str], text: str) -> str:
    """``mids: number of powerset files.`` (a help starting with a flag: ``mids --copies: …``)."""
    sep = "" if text.startswith("--") else ":"
    also = f" (also {', '.join(owners[1:])})" if owners[1:] else ""
    return f"{owners[0]}{sep} {text}{also}"


def generator_options(fn: F) -> F:
    """One option per option the datasets' generators declare (``--powersets``, ``--items``…),
    then ``--seed`` and ``--template``."""
    gens = _generators()
    declared: dict[str, tuple[GenOption, list[str]]] = {}
    for name, gen in gens.items():
        for opt in gen.options:
            declared.setdefault(opt.name, (opt, []))[1].append(name)
    templates = "; ".join(f"{name}: {gen.template_help}" for name, gen in gens.items() if gen.template_help)
    options = [
        click.option(f"--{opt.name.replace('_', '-')}", opt.name, is_flag=opt.type is bool,
                     type=None if opt.type is bool else opt.type, default=opt.default,
                     show_default=opt.default is not None and opt.type is not bool,
                     help=_option_help(owners, opt.help))
        for opt, owners in declared.values()
    ] + [
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--template", type=click.Path(exists=True, path_type=Path),
                     help=f"A real export to amplify ({templates})."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("generate")
@click.argument("dataset", type=click.Choice(list(_generators())))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@generator_options
@json_option
@handle_errors
def generate_cmd(dataset: str, out: Path, seed: int, template: Path | None, as_json: bool,
                 **options: Any) -> None:
    """Write an export in the real format, of any size, deterministic by seed.

    Each dataset's generator takes its own options (named after the dataset in their help);
    the others are ignored.

    \b
    Examples:
      etl generate mids /tmp/mids-demo --powersets 50
      etl generate mids /tmp/mids-360k --entries 360000 --template ../shared/data/mids
      etl generate mids /tmp/mids-x5 --copies 5 --template ../shared/data/mids_full
      etl generate aodb /tmp/aodb-170k --items 170000 --template ../shared/data/aodb
      etl generate licenses /tmp/licenses-515 --results 515
    """
    from etl.datasets import generate

    made = generate(dataset, out, seed=seed, template=template, **options)
    if as_json:
        echo_json({"dataset": dataset, "out": str(out), "files": made.files, "bytes": made.bytes,
                   "counts": dict(made.counts)})
        return
    err.print(f"wrote {made.files:,} files, {made.bytes / 1e6:,.1f} MB: "
              + ", ".join(f"{n:,} {what}" for what, n in made.counts))
    click.echo(out)


def _demos() -> dict[str, Generator]:
    return {name: gen for name, gen in _generators().items() if gen.demo is not None}


def demo_options(fn: F) -> F:
    """``--dataset`` (the first with a demo by default) and one option per demo's size option
    (``--powersets``), its default the demo's."""
    demos = _demos()
    sizes: dict[str, tuple[Any, list[str]]] = {}
    for name, gen in demos.items():
        if gen.demo_size and gen.demo is not None:
            sizes.setdefault(gen.demo_size, (gen.demo.get(gen.demo_size), []))[1].append(name)
    options = [click.option("--dataset", type=click.Choice(list(demos)), default=next(iter(demos), None),
                            show_default=True, help="Which dataset's generated export to run.")]
    options += [click.option(f"--{size.replace('_', '-')}", size, type=int, default=default,
                             show_default=True, help=f"The demo export's size ({', '.join(owners)}).")
                for size, (default, owners) in sizes.items()]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path(".etl/demo-export"),
              show_default=True, help="Where to write the generated export.")
@demo_options
@click.option("--database-url", help="Where to load (env ETL_DATABASE_URL or DATABASE_URL; default: "
              "the project's embedded PostgreSQL, started if needed).")
@click.option("--no-load", is_flag=True, help="Stop after transform (no database needed).")
@json_option
@click.pass_context
@handle_errors
def demo_cmd(ctx: click.Context, out: Path, dataset: str, database_url: str | None, no_load: bool,
             as_json: bool, **sizes: int | None) -> None:
    """Generate a small export (the real format) and run the whole pipeline on it.

    Needs nothing but this repository: the export comes from the project's own generator, and
    with no database URL the tables load into a PostgreSQL of the project's own (`etl db`).

    \b
    Examples:
      etl demo
      etl demo --database-url postgresql://postgres@127.0.0.1:5432/postgres
      etl demo --no-load
    """
    from etl.pipeline import demo

    settings = ctx_settings(ctx, database_url=database_url)
    ds = get_dataset(dataset)
    size_option = ds.generator.demo_size if ds.generator else None

    def generated(made: Generated) -> None:
        err.print(f"generated a {dataset} export: {made.files:,} files, {made.bytes / 1e6:,.1f} MB in {out}")

    with progress_bar() as progress:
        _, result = demo(ds, out, settings=settings, size=sizes.get(size_option) if size_option else None,
                         load=not no_load, progress=progress, generated=generated)
    print_pipeline(result, settings, as_json=as_json)
