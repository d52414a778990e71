"""The shared read cache in Redis: stats, clear, warm."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from etl.cli.options import cache_options, json_option, resolve_database_url, resolve_redis_url
from etl.cli.render import echo_json, err, handle_errors, mb, when


@click.group("cache")
def cache_group() -> None:
    """The shared read cache in Redis: statistics, clearing, warming.

    Keys carry the dataset's generation, which every load bumps, so nothing ever needs clearing
    for correctness.

    \b
    Examples:
      etl cache stats
      etl cache warm mids --top 100
      etl cache clear
    """


@cache_group.command("stats")
@cache_options
@json_option
@click.pass_context
@handle_errors
def cache_stats_cmd(ctx: click.Context, database_url: str | None, redis_url: str | None,
                    as_json: bool) -> None:
    """Hits and misses per tier and per query (all processes), Redis memory and keys, LRU sizes.

    Counters are kept in Redis; without Redis only the generations are shown.

    \b
    Example:
      etl cache stats --json
    """
    from etl.infra import cache

    info = cache.stats(resolve_database_url(ctx, database_url, start=False),
                       resolve_redis_url(ctx, redis_url))
    if as_json:
        echo_json(info)
        return
    gens = Table(title=f"generations (namespace {info['namespace']})", title_justify="left")
    for col in ("dataset", "generation", "run", "swapped at"):
        gens.add_column(col)
    for name, g in info["generations"].items():
        gens.add_row(name, str(g["generation"]), escape(str(g["run_id"])), when(g["swapped_at"]))
    err.print(gens)
    r = info["redis"]
    if r is None:
        err.print("no Redis configured (--redis-url, ETL_REDIS_URL): counters live in each process only")
        return
    if "error" in r:
        err.print(f"[yellow]Redis unreachable[/] at {escape(r['url'])}: {escape(r['error'])}")
        return
    table = Table(title="reads per query and tier (all processes)", title_justify="left")
    for col in ("query", "lru hit", "lru miss", "redis hit", "redis miss", "db read"):
        table.add_column(col, justify="left" if col == "query" else "right")
    for q, c in r["queries"].items():
        table.add_row(q, *(f"{c.get(k, 0):,}" for k in ("lru_hit", "lru_miss", "redis_hit", "redis_miss",
                                                         "db_read")))
    err.print(table)
    ratio = r["hit_ratio"]
    err.print(f"Redis {escape(r['url'])}: {r['used_memory_human']} used, {r['keys']:,} keys of this database "
              f"({r['value_keys']:,} values); hit ratio lru {ratio['lru']}, redis {ratio['redis']}")
    for proc in r["processes"][:5]:
        err.print(f"  LRU of {escape(proc['process'])}: {proc['lru_entries']:,} entries, "
                  f"{mb(proc['lru_bytes'])}")


@cache_group.command("clear")
@cache_options
@click.option("--all", "everything", is_flag=True, help="Every database's keys (all of etl:*), not just "
                                                        "this one's.")
@json_option
@click.pass_context
@handle_errors
def cache_clear_cmd(ctx: click.Context, database_url: str | None, redis_url: str | None,
                    everything: bool, as_json: bool) -> None:
    """Delete this database's keys from Redis: values, generations, counters, hot keys.

    Never needed for correctness (a reload changes the keys readers use); useful to free memory
    or reset the counters. The in-process caches of running programs are not touched.

    \b
    Examples:
      etl cache clear
      etl cache clear --all --redis-url redis://127.0.0.1:6379/0
    """
    from etl.errors import ConfigError
    from etl.infra import cache

    url = resolve_redis_url(ctx, redis_url)
    if not url:
        raise ConfigError("no Redis configured: there is nothing shared to clear",
                          hint="give --redis-url or set ETL_REDIS_URL")
    db = None if everything else resolve_database_url(ctx, database_url, start=False)
    deleted = cache.clear(db, url, everything=everything)
    if as_json:
        echo_json({"deleted": deleted})
        return
    err.print(f"deleted {deleted:,} keys")
    click.echo(deleted)


@cache_group.command("warm")
@click.argument("dataset")
@click.option("--top", type=int, default=200, show_default=True, help="How many keys to preload.")
@cache_options
@json_option
@click.pass_context
@handle_errors
def cache_warm_cmd(ctx: click.Context, dataset: str, top: int, database_url: str | None,
                   redis_url: str | None, as_json: bool) -> None:
    """Preload the hottest keys of DATASET into Redis for the current generation (run it after a
    load). Hot keys are counted by every reader; with none yet, every archetype's build summary
    and every powerset are loaded.

    \b
    Examples:
      etl load staging/mids/<run> && etl cache warm mids
      etl cache warm mids --top 50 --json
    """
    from etl.errors import ConfigError
    from etl.infra.cache import Cache
    from etl.query import warm

    url = resolve_redis_url(ctx, redis_url)
    if not url:
        raise ConfigError("no Redis configured: warming an in-process cache that exits at once is useless",
                          hint="give --redis-url or set ETL_REDIS_URL")
    with Cache(resolve_database_url(ctx, database_url, start=False), redis_url=url) as c:
        result = warm(c, dataset, top=top)
    if as_json:
        echo_json(result)
        return
    err.print(f"warmed {result['keys']} keys of {dataset} (generation {result['generation']}, "
              f"{result['from_hot_list']} from the hot list) in {result['seconds']:.2f} s: {result['tiers']}")
