"""``licenses``: state board pharmacy license search results, one small file per search.

Input (see ``../shared/data/README.md``): a directory tree ``<state>/<Pharmacy>_<NN>_parse.json``
(states as subfolders, any depth), each beside its PNG screenshot ``<Pharmacy>_<NN>.png``. A
result file: ``metadata{pharmacy_name, state, search_timestamp, source_image_file,
search_result_type}, search_result{licenses[{license_number, license_status, license_type,
issue_date, expiration_date, pharmacy_name, address{street, suite, city, state, zip_code}}],
result_status, search_query}``.

What this dataset exercises that ``mids`` and ``aodb`` do not:

* **Many small files, some broken.** The source quarantines a file that is not valid JSON
  (``on_bad_file="quarantine"``): it is listed, with the reason, in the manifest and the
  validation report, and the rest loads (``etl stage --strict`` makes it fatal).
* **Side files.** Each result's screenshot is found (``metadata.source_image_file`` when it
  resolves under the input root, else by the result file's name), hashed in parallel, and
  copied once into a content-addressed store under the staging directory
  (``<staging>/licenses/_store/images/<sha[:2]>/<sha>.png``). A path pointing outside the input
  root (``../``, an absolute path elsewhere, a symlink out) is refused and never opened.
* **Dirty values.** Cleaning steps (each counted in ``report.json``): placeholder strings
  (``"Not On File"``, ``"N/A"``, ``"---"``, ``"Unknown"``, ``""``) become NULL, statuses lose
  stray punctuation (``Clear/`` → ``Clear``), dates in their varied formats become ISO text (and
  DATE columns), a missing state is taken from the result's folder.
* **Duplicates, resolved by a stated rule.** Rows sharing the key (state, search name, license
  number) inside one import: **the newest search wins** (latest ``search_timestamp``; ties go to
  the later file path, then the later position). The losers are counted by the warning rules
  ``licenses.superseded`` and ``searches.superseded`` and dropped by the transform.
* **Tags and merges.** Every row belongs to a ``datasets`` row (an import tag, ``default``
  unless ``etl load --tag`` names one). ``etl load --mode merge`` upserts into the live tables.

The key of ``search_results`` is (dataset, state, search_name, license_key): ``license_key`` is
the license number, or ``''`` for a search that found no license (whose row has a NULL
``license_number``), so the key holds for those rows too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from etl.dataset import (
    PATCH,
    XREF,
    Clean,
    Column,
    Dataset,
    ForeignKey,
    SideFiles,
    SideInput,
    Table,
    carried,
    check,
    required,
)
from etl.datasets.licenses.gen import BENCH, GENERATOR
from etl.spec.dataset import read_dataset
from etl.staging_fs import relative, replace_file
from etl.storable import TIMESTAMP_MIN_US

log = logging.getLogger(__name__)

VERSION = "2"
#: The tag of an import when ``etl load --tag`` names none.
DEFAULT_TAG = "default"
#: What ``datasets.kind`` says of an import of per-state search results.
KIND = "states"
#: Values that mean "nothing here" (compared trimmed and lower-cased); runs of dashes too.
PLACEHOLDERS = ("", "n/a", "na", "none", "null", "not on file", "unknown", "not available")
DATE_FORMATS = ("%m/%d/%Y", "%Y-%m-%d", "%m-%d-%Y", "%Y/%m/%d", "%m/%d/%y", "%b %d, %Y",
                "%B %d, %Y", "%d-%b-%Y", "%d %B %Y", "%Y%m%d")
TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S",
                     "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ------------------------------------------------------------------------------ staged levels
# The sources and the levels staged from them (which JSON keys become which typed fields) are
# declared in licenses.toml beside this module, a dataset spec like those `etl init` writes; this
# module is its hook (`extend`): what a spec does not declare.

# ------------------------------------------------------------------------------ screenshots


def png_size(head: bytes) -> tuple[int | None, int | None]:
    """Width and height from a PNG's IHDR chunk (the first 24 bytes); None for other files."""
    if len(head) >= 24 and head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    return None, None


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def find_image(root: Path, relpath: str, hint: str | None) -> tuple[Path | None, str | None, str | None]:
    """Where the screenshot of result file ``relpath`` (under ``root``) is: (path, found by,
    refusal). ``hint`` (``metadata.source_image_file``) is used when it resolves under the
    root; one that points outside (``../``, an absolute path elsewhere, a symlink out) is
    refused without being opened. Otherwise the file beside the result with its name less
    ``_parse`` (``Belmar_01_parse.json`` → ``Belmar_01.png``)."""
    real_root = Path(os.path.realpath(root))
    refused = None
    if hint and hint.strip():
        given = Path(hint.strip())
        candidate = Path(os.path.realpath(given if given.is_absolute() else root / given))
        if not _inside(candidate, real_root):
            refused = f"{hint.strip()!r} points outside the input root"
        elif candidate.is_file():
            return candidate, "metadata", None
    json_path = root / relpath
    stem = json_path.name
    for suffix in ("_parse.json", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for ext in (".png", ".PNG"):
        candidate = Path(os.path.realpath(json_path.with_name(stem + ext)))
        if _inside(candidate, real_root) and candidate.is_file():
            return candidate, "name", refused
    return None, None, refused


def stage_images(inp: SideInput) -> pl.DataFrame:
    """The screenshot of every staged result: found, hashed (in parallel), measured (IHDR) and
    copied into ``inp.store`` once per content hash."""
    rows = inp.records.select("_file", "_record", "source_image_file").unique(
        "_file", keep="first", maintain_order=True)
    found: list[tuple[str, Path | None, str | None, str | None]] = []
    for rel, _, hint in rows.iter_rows():
        root = inp.roots.get(rel, Path("."))
        path, how, refused = find_image(root, rel, hint)
        if refused:
            log.warning("%s: screenshot path %s; refused", rel, refused)
        found.append((rel, path, how, refused))
    folder = inp.store / "images"
    claimed: set[str] = set()
    lock = threading.Lock()
    copied = [0]

    def digest(path: Path | None) -> dict[str, Any]:
        if path is None:
            return {}
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        width, height = png_size(data[:24])
        dest = folder / sha[:2] / f"{sha}.png"
        with lock:
            first = sha not in claimed
            claimed.add(sha)
        if first and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{sha}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            replace_file(tmp, dest)
            with lock:
                copied[0] += 1
        return {"sha256": sha, "size": len(data), "width": width, "height": height,
                "stored_path": relative(dest, inp.store_base)}

    with ThreadPoolExecutor(max_workers=max(1, inp.threads), thread_name_prefix="etl-img") as pool:
        infos = list(pool.map(digest, [path for _, path, _, _ in found]))
    log.info("screenshots: %d found, %d distinct, %d copied into %s",
             sum(1 for f in found if f[1] is not None), len(claimed), copied[0], folder)
    out = []
    for (rel, path, how, refused), info in zip(found, infos, strict=True):
        root = inp.roots.get(rel, Path("."))
        image_file = None
        if path is not None:
            real_root = Path(os.path.realpath(root))
            image_file = path.relative_to(real_root).as_posix() if _inside(path, real_root) \
                else path.name
        out.append({"_file": rel, "_record": 0, "_path": "", "_index": 0, **info,
                    "image_file": image_file, "found_by": how, "refused": refused})
    schema = {"_file": pl.String, "_record": pl.Int64, "_path": pl.String, "_index": pl.Int64,
              "sha256": pl.String, "size": pl.Int64, "width": pl.Int32, "height": pl.Int32,
              "stored_path": pl.String, "image_file": pl.String, "found_by": pl.String,
              "refused": pl.String}
    return pl.DataFrame(out, schema=schema)


SIDE_FILES = (SideFiles("images", "searches", stage_images),)

# ------------------------------------------------------------------------------ cleaning


def blank_to_null(col: pl.Expr) -> pl.Expr:
    """Trimmed; empty and placeholder strings ("Not On File", "N/A", "---", "Unknown") → NULL."""
    c = col.str.strip_chars()
    return (pl.when(c.str.to_lowercase().is_in(list(PLACEHOLDERS)) | c.str.contains("^[-\u2013\u2014_.?]+$"))
            .then(None).otherwise(c))


def clean_status(col: pl.Expr) -> pl.Expr:
    """Stray punctuation and spaces around a status removed (``Clear/`` → ``Clear``)."""
    return blank_to_null(blank_to_null(col).str.strip_chars(" /\\-.,;:*|"))


def iso_date(col: pl.Expr) -> pl.Expr:
    """A date in any known format as ISO text (``2/28/2027`` → ``2027-02-28``); placeholders
    → NULL; text in no known format is kept as it was (and flagged by a rule)."""
    c = blank_to_null(col)
    parsed = pl.coalesce([c.str.to_date(f, strict=False) for f in DATE_FORMATS])
    return pl.when(parsed.is_not_null()).then(parsed.dt.to_string("%Y-%m-%d")).otherwise(c)


def state_code(col: pl.Expr) -> pl.Expr:
    """Upper-case state code; a missing one from the result's folder (``FL/x_parse.json``)."""
    folder = pl.col("_file").str.extract(r"(?:^|/)([A-Za-z]{2})/[^/]+$")
    return pl.coalesce([blank_to_null(col), folder]).str.to_uppercase()


def parse_timestamp(col: pl.Expr) -> pl.Expr:
    """The search timestamp (naive times are taken as UTC)."""
    return pl.coalesce([col.str.strptime(pl.Datetime("us"), f, strict=False)
                        for f in TIMESTAMP_FORMATS]).dt.replace_time_zone("UTC")


_BLANKABLE = ("license_number", "license_type", "licensee", "street", "suite", "city",
              "address_state", "zip_code")

CLEANING = (
    Clean("state", "searches", "state", state_code,
          "state trimmed, upper-cased; a missing one from the result's folder"),
    Clean("blank", "searches", "search_name", blank_to_null, blank_to_null.__doc__ or ""),
    Clean("blank", "searches", "search_timestamp", blank_to_null, blank_to_null.__doc__ or ""),
    Clean("blank", "searches", "result_status", blank_to_null, blank_to_null.__doc__ or ""),
    Clean("blank", "searches", "source_image_file", blank_to_null, blank_to_null.__doc__ or ""),
    *(Clean("blank", "licenses", c, blank_to_null, blank_to_null.__doc__ or "")
      for c in _BLANKABLE),
    Clean("status", "licenses", "license_status", clean_status, clean_status.__doc__ or ""),
    Clean("date", "licenses", "issue_date", iso_date, iso_date.__doc__ or ""),
    Clean("date", "licenses", "expiration_date", iso_date, iso_date.__doc__ or ""),
)

# ------------------------------------------------------------------------------ checks


def _winner(key: list[str]) -> pl.Expr:
    """True for the row that wins among rows sharing ``key``: the newest search (latest
    timestamp), ties to the later file path, then the later position in the file."""
    order = pl.concat_str([parse_timestamp(pl.col("search_timestamp")).dt.to_string(
        "%Y-%m-%dT%H:%M:%S%.6f").fill_null(""), pl.col("_file"),
        pl.col("_index").cast(pl.String).str.zfill(9)], separator="\x00")
    return order == order.max().over(key)


def _is_iso_date(column: str) -> Callable[[], pl.Expr]:
    return lambda: pl.col(column).is_null() | pl.col(column).str.to_date(
        "%Y-%m-%d", strict=False).is_not_null()


def _no_result() -> pl.Expr:
    return pl.col("result_status").str.to_lowercase().ne("found").fill_null(True)


RULES = (
    required("searches", "search_name"),
    required("searches", "state"),
    required("licenses", "search_name", "state"),
    check("timestamp", "searches",
          lambda: pl.col("search_timestamp").is_null()
          | parse_timestamp(pl.col("search_timestamp")).is_not_null(),
          "search_timestamp should be a date and time (kept NULL otherwise)",
          columns=("search_timestamp",), severity="warning"),
    # search_results.search_timestamp and datasets.created (timestamptz) come from it.
    check("timestamp_storable", "searches",
          lambda: parse_timestamp(pl.col("search_timestamp")).cast(pl.Int64) >= TIMESTAMP_MIN_US,
          "search_timestamp must be a time PostgreSQL can hold (from 4714-11-24 BC)",
          columns=("search_timestamp",)),
    *(check(f"{c}_format", "licenses", _is_iso_date(c),
            f"{c} should be a date in a known format (loaded as NULL otherwise)", columns=(c,),
            severity="warning")
      for c in ("issue_date", "expiration_date")),
    check("superseded", "licenses", lambda: _winner(["state", "search_name", "license_number"]),
          "duplicate (state, search name, license number) in this import: the newest search "
          "wins, this row is dropped", columns=("search_name", "license_number", "search_timestamp"),
          severity="warning"),
    check("superseded", "searches",
          lambda: ~_no_result() | _winner(["state", "search_name", "result_status"]),
          "duplicate no-result search (state, search name) in this import: the newest search "
          "wins, this row is dropped", columns=("search_name", "search_timestamp"),
          severity="warning"),
    check("outside_root", "images", lambda: pl.col("refused").is_null(),
          "the screenshot path in the JSON points outside the input root: refused, never read",
          columns=("refused",), severity="warning"),
    required("images", "sha256", severity="warning"),
)

# ------------------------------------------------------------------------------ target tables


def _cols(*spec: str) -> tuple[Column, ...]:
    out = []
    for s in spec:
        name, _, type_ = s.partition(":")
        out.append(Column(name, type_.rstrip("!"), not type_.endswith("!")))
    return tuple(out)


TABLES = (
    Table("datasets", _cols("tag:text!", "kind:text!", "created:timestamptz"), ("tag",)),
    Table("images", _cols("sha256:text!", "size:bigint!", "width:integer", "height:integer",
                          "path:text!"), ("sha256",)),
    Table("search_results", _cols(
        "dataset:text!", "state:text!", "search_name:text!", "license_key:text!",
        "license_number:text", "search_timestamp:timestamptz", "license_status:text",
        "license_type:text", "issue_date:date", "expiration_date:date", "licensee:text",
        "street:text", "suite:text", "city:text", "address_state:text", "zip_code:text",
        "result_status:text", "result_type:text", "image_sha256:text", "source_file:text!",
        "raw:jsonb!", "extra:json!"),
        ("dataset", "state", "search_name", "license_key"),
        foreign_keys=(ForeignKey(("dataset",), "datasets", ("tag",)),
                      ForeignKey(("image_sha256",), "images", ("sha256",)))),
    # Every result file as it was (less its licenses, which are rows of search_results).
    Table("search_files", _cols("dataset:text!", "source_file:text!", "raw:jsonb!", "extra:json!"),
          ("dataset", "source_file"), foreign_keys=(ForeignKey(("dataset",), "datasets", ("tag",)),)),
)

# ------------------------------------------------------------------------------ transform

_LICENSE_COLS = ("license_number", "license_status", "license_type", "issue_date",
                 "expiration_date", "licensee", "street", "suite", "city", "address_state",
                 "zip_code")


def transform(levels: Mapping[str, pl.LazyFrame]) -> dict[str, pl.LazyFrame]:
    """Accepted staged levels → datasets, images, search_results."""
    searches = levels["searches"]
    licenses = levels["licenses"].select("_file", "_record", *_LICENSE_COLS,
                                         _license_index=pl.col("_index"),
                                         _license_path=pl.col("_path"),
                                         _license_xref=pl.col(XREF), _license_patch=pl.col(PATCH))
    images = levels["images"]
    # One row per license; a search with none gives one row without a license.
    rows = searches.join(licenses, on=["_file", "_record"], how="left").with_columns(
        license_key=pl.col("license_number").fill_null(""),
        _index=pl.col("_license_index").fill_null(-1))
    rows = rows.filter(_winner(["state", "search_name", "license_key"]))
    rows = rows.join(images.select("_file", image_sha256="sha256"), on="_file", how="left")
    search_results = rows.with_columns(
        dataset=pl.lit(DEFAULT_TAG),
        search_timestamp=parse_timestamp(pl.col("search_timestamp")),
        issue_date=pl.col("issue_date").str.to_date("%Y-%m-%d", strict=False),
        expiration_date=pl.col("expiration_date").str.to_date("%Y-%m-%d", strict=False),
        source_file=pl.col("_file"),
        # the license record's lineage and extra (none for a search without a license)
        _path=pl.col("_license_path"),
        **{XREF: pl.col("_license_xref"), PATCH: pl.col("_license_patch")},
    )
    search_files = searches.select(carried(), "raw", dataset=pl.lit(DEFAULT_TAG),
                                   source_file=pl.col("_file"))
    image_rows = (images.filter(pl.col("sha256").is_not_null())
                  .group_by("sha256").agg(pl.col("size").first(), pl.col("width").first(),
                                          pl.col("height").first(),
                                          pl.col("stored_path").first().alias("path")))
    datasets = searches.select(
        tag=pl.lit(DEFAULT_TAG), kind=pl.lit(KIND),
        created=parse_timestamp(pl.col("search_timestamp")).min())
    return {"datasets": datasets, "images": image_rows, "search_results": search_results,
            "search_files": search_files}


def extend(base: Dataset) -> Dataset:
    """The dataset licenses.toml declares, with what a spec does not: rules, cleaning, tables,
    transform and the rest."""
    return replace(
        base,
        transform=transform,
        tables=TABLES,
        rules=RULES,
        cleaning=CLEANING,
        side_files=SIDE_FILES,
        tag_columns={"datasets": "tag", "search_results": "dataset", "search_files": "dataset"},
        notes={
            "datasets": "one row per import tag (default, or etl load --tag)",
            "images": "distinct screenshots by sha256 (stored once under staging/licenses/_store)",
            "search_results": "search_result.licenses[] entries, plus one row per search without a "
                              "license; the newest search wins per (state, search name, license)",
        },
        generator=GENERATOR,
        bench=BENCH,
    )


DATASET = read_dataset(Path(__file__).with_name("licenses.toml"), extend=extend)
