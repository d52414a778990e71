"""Remove old staged runs (``etl runs prune``): keep the newest few of each dataset, and every run
the database still needs.

Each restage of a changed export adds a run directory (megabytes to tens of megabytes), and
nothing removed them. :func:`prune` keeps, per dataset, the ``keep`` runs staged last, and also,
whatever their age, the runs the run ledger says are needed:

* ``live``: the run of the dataset's latest successful load (and of its latest successful full
  load, which a merge since then built on): the live schema came from it, and ``etl rebuild``
  needs it;
* ``in use``: a load of it is running (it holds the dataset's load lock);
* ``resumable``: its latest load was interrupted or abandoned (its loader is gone); running the
  same ``etl load`` again resumes it, which needs its files.

``force`` drops those protections (only ``keep`` counts). Without a database the ledger cannot be
read, so pruning needs ``force``. A run is removed by renaming it to a ``.stage.tmp-*`` folder
first (holding the dataset's staging lock, so no stage, validation or transform writes there
meanwhile), then deleting that: a prune killed midway leaves no half run behind, and the next
stage of the dataset removes the leftover. On a remote staging root (a URI: no rename of a folder
there) a run's manifest is deleted first, so what a killed prune leaves is no run, then the rest.

>>> report = prune(Path("staging"), database_url="postgresql://me@db/games", keep=2,
...                dry_run=True)   # doctest: +SKIP
>>> [(r["run_id"], r["action"], r["reason"]) for r in report["runs"]]   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from etl.errors import ConfigError
from etl.infra import ledger, pg
from etl.infra.errors import NoDatabase
from etl.run import MANIFEST, open_run, staging_lock
from etl.staging_fs import RemotePath, StagePath, remove_tree, resolve

log = logging.getLogger(__name__)

#: How many runs of each dataset ``etl runs prune`` keeps by default.
DEFAULT_KEEP = 3
#: The ledger statuses of a load that resumes when its command runs again.
RESUMABLE = ("interrupted", "abandoned")


def dir_bytes(path: StagePath) -> int:
    """The bytes of the files under ``path`` (links not followed)."""
    if isinstance(path, RemotePath):
        infos = path.fs.get_file_info(pafs.FileSelector(path.path, recursive=True, allow_not_found=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def _staged_runs(staging_dir: StagePath, dataset: str | None) -> dict[str, list[dict[str, Any]]]:
    """Each dataset's complete run directories, newest first (by the manifest's ``created_at``,
    then its modification time)."""
    out: dict[str, list[dict[str, Any]]] = {}
    if not staging_dir.is_dir():
        return out
    children: list[StagePath] = list(staging_dir.iterdir()) if not dataset else []
    folders = [staging_dir / dataset] if dataset else sorted((p for p in children if p.is_dir()),
                                                             key=lambda p: p.name)
    for folder in folders:
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue
        found: list[dict[str, Any]] = []
        for path in folder.iterdir():
            if path.name.startswith((".", "_")) or not (path / MANIFEST).is_file():
                continue
            try:
                run = open_run(path)
                created = str(run.manifest.get("created_at") or "")
            except Exception as exc:  # an unreadable manifest: still a run folder, dated by its file
                log.info("%s: %s", path, exc)
                created = ""
            mtime = (path / MANIFEST).stat().st_mtime
            staged_at = created or datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")
            entry: dict[str, Any] = {"dataset": folder.name, "run_id": path.name, "path": str(path),
                                     "staged_at": staged_at, "_order": (created, mtime, path.name)}
            found.append(entry)
        found.sort(key=lambda r: r["_order"], reverse=True)
        if found:
            out[folder.name] = found
    return out


def _needed(database_url: str) -> dict[tuple[str, str], str]:
    """(dataset, run id) → why the ledger needs that run's files (see the module docstring)."""
    needed: dict[tuple[str, str], str] = {}
    with pg.connect(database_url) as conn:
        for r in ledger.latest_per_run(conn):
            key = (r["dataset"], r["run_id"])
            if r["status"] == "running":
                needed[key] = f"in use: load #{r['id']} is running"
            elif r["status"] in RESUMABLE:
                needed[key] = f"resumable: load #{r['id']} was {r['status']} (`etl load` resumes it)"
        for r in ledger.live_sources(conn):
            needed.setdefault((r["dataset"], r["run_id"]),
                              f"live: the live schema came from load #{r['id']} ({r['mode']})")
    return needed


def prune(
    staging_dir: StagePath,
    *,
    database_url: str | None,
    keep: int = DEFAULT_KEEP,
    dataset: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete all but the ``keep`` newest staged runs of each dataset under ``staging_dir`` (or of
    ``dataset`` only), except the runs the ledger at ``database_url`` needs (see the module
    docstring) unless ``force``. ``dry_run`` deletes nothing and reports what would go.

    Returns ``runs`` (each with ``dataset``, ``run_id``, ``path``, ``bytes``, ``staged_at``,
    ``action``: ``delete`` or ``keep``, and ``reason``), ``freed_bytes`` (deleted, or would be),
    ``kept_bytes`` and the options.

    Raises:
        ConfigError: ``keep`` is negative.
        NoDatabase: no ``database_url`` and not ``force`` (the ledger cannot be asked).
    """
    if keep < 0:
        raise ConfigError(f"--keep {keep} is negative", hint="keep 0 or more runs per dataset")
    if database_url is None and not force:
        raise NoDatabase("no database: pruning asks the run ledger which runs are live, in use or "
                         "resumable", hint="pass --database-url or set ETL_DATABASE_URL, run `etl db "
                                           "start`, or give --force to prune by age alone")
    needed = _needed(database_url) if database_url is not None and not force else {}
    report: dict[str, Any] = {"staging_dir": str(staging_dir), "keep": keep, "force": force,
                              "dry_run": dry_run, "ledger": database_url is not None and not force,
                              "runs": [], "freed_bytes": 0, "kept_bytes": 0}
    for name, runs in _staged_runs(staging_dir, dataset).items():
        for rank, r in enumerate(runs):
            del r["_order"]
            r["bytes"] = dir_bytes(resolve(r["path"]))
            why = needed.get((name, r["run_id"]))
            if rank < keep:
                r["action"], r["reason"] = "keep", f"among the {keep} newest"
            elif why is not None:
                r["action"], r["reason"] = "keep", why
            else:
                r["action"], r["reason"] = "delete", f"older than the {keep} newest"
            report["runs"].append(r)
        doomed = [r for r in runs if r["action"] == "delete"]
        if doomed and not dry_run:
            with staging_lock(staging_dir / name):
                for r in doomed:
                    _remove(resolve(r["path"]))
    report["freed_bytes"] = sum(r["bytes"] for r in report["runs"] if r["action"] == "delete")
    report["kept_bytes"] = sum(r["bytes"] for r in report["runs"] if r["action"] == "keep")
    return report


def _remove(path: StagePath) -> None:
    """Rename the run away (atomic: it is a run or gone), then delete it; on a remote root,
    delete its manifest (it is no run from then on), then the rest."""
    if isinstance(path, RemotePath):
        (path / MANIFEST).unlink(missing_ok=True)
        remove_tree(path)
        log.info("pruned %s", path)
        return
    if not path.exists():
        return
    doomed = path.with_name(f".stage.tmp-prune-{path.name}")
    path.rename(doomed)
    shutil.rmtree(doomed)
    log.info("pruned %s", path)


__all__ = ["DEFAULT_KEEP", "dir_bytes", "prune"]
