"""Generate Anarchy Online item exports of any size by amplifying a real sample, deterministically.

The real sample (``../shared/data/aodb/items_100.json``) is the template: every generated item is
a copy of a real one with a new AOID, and with variation drawn from the sample's own pools, so
key names, value types, the optional-key mix and the heterogeneous spell parameters are exactly
those of the real program:

* quality level: each item gets a new QL (stat 54, drawn from 1-300) and, as the game's QL
  variants of one item do, about half of its small numbers (stat values, criteria thresholds,
  spell amounts below 10,000; not flags or ids) scale with it, so the export has many distinct
  (Stat, RawValue) pairs and criteria, as the full export does, not just the sample's;
* stat values: about a third of the other ``RawValue``s are replaced by a value seen for the
  same stat elsewhere in the sample, so pairs stay shared across items and deduplication
  matters;
* criteria: about a quarter get the ``Value2`` of another criterion on the same ``Value1``;
* spells: about a fifth get another spell's ``Amount`` for the same stat, and one spell in ten is
  swapped for a real spell from another item (so parameter sets mix);
* about one item in six becomes a nano program (``DBType`` 1040005), as in the full export.

Files are written as the real exporter writes them: one JSON array per file, ``json.dumps``
spacing, one line. ``files`` splits the items over several files; ``ndjson`` writes one item a
line instead.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from etl.config import SHARED_DATA_ENV, shared_data
from etl.dataset import BenchSpec, Generated, Generator, GenOption
from etl.errors import ConfigError, InputError

log = logging.getLogger(__name__)

DBTYPE_ITEM = 1000020
DBTYPE_NANO = 1040005
NANO_SHARE = 1 / 6
#: First AOID of generated items (above the real ones' range in the sample).
FIRST_AOID = 1_000_000


@dataclass(frozen=True, slots=True)
class GeneratedItems:
    """What a generator call wrote."""

    root: Path
    files: int
    bytes: int
    items: int
    stat_values: int
    spells: int


def load_template(template: Path) -> list[dict[str, Any]]:
    """The real items of ``template``: a JSON array file, or every valid array file in a folder
    (files that are not valid JSON, such as the sample's truncated one, are skipped)."""
    paths = [template] if template.is_file() else sorted(template.glob("*.json"))
    items: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            log.info("template file %s is not valid JSON; skipped", path)
            continue
        if isinstance(data, list):
            items.extend(d for d in data if isinstance(d, dict) and "AOID" in d)
    if not items:
        raise InputError("no template items found", file=template,
                         hint="point --template at a real aodb export or an items JSON array")
    return items


class _Pools:
    """Values seen in the template, to draw realistic variation from."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.stat_values: dict[int, list[int]] = defaultdict(list)
        self.value2: dict[tuple[int, int], list[int]] = defaultdict(list)
        self.amounts: dict[Any, list[Any]] = defaultdict(list)
        self.spells: list[dict[str, Any]] = []
        for it in items:
            for sv in it.get("StatValues") or []:
                self.stat_values[sv["Stat"]].append(sv["RawValue"])
            for c in self._criteria(it):
                self.value2[(c["Value1"], c["Operator"])].append(c["Value2"])
            for sd in it.get("SpellData") or []:
                for s in sd.get("Items") or []:
                    self.spells.append(s)
                    if "Amount" in s:
                        self.amounts[s.get("Stat")].append(s["Amount"])

    @staticmethod
    def _criteria(item: dict[str, Any]) -> list[dict[str, Any]]:
        out = [c for a in ((item.get("ActionData") or {}).get("Actions") or [])
               for c in a.get("Criteria") or []]
        out += [c for sd in item.get("SpellData") or [] for s in sd.get("Items") or []
                for c in s.get("Criteria") or []]
        return out


#: Numbers below this scale with an item's QL (larger ones are flags, ids, hashes).
SCALABLE_BELOW = 10_000
#: Share of an item's small numbers that scale with its QL.
SCALE_SHARE = 0.5


def _scaled(rng: random.Random, value: Any, ratio: float) -> Any:
    """``value`` scaled by the item's QL ratio, for about half of the small positive ints."""
    if (isinstance(value, int) and not isinstance(value, bool) and 1 < value < SCALABLE_BELOW
            and rng.random() < SCALE_SHARE):
        return max(1, round(value * ratio))
    return value


def _vary(rng: random.Random, item: dict[str, Any], pools: _Pools, aoid: int) -> dict[str, Any]:
    item["AOID"] = aoid
    if rng.random() < NANO_SHARE:
        item["DBType"] = DBTYPE_NANO
    stats = item.get("StatValues") or []
    old_ql = next((sv["RawValue"] for sv in stats if sv["Stat"] == 54), None)
    new_ql = rng.randint(1, 300)
    ratio = new_ql / old_ql if isinstance(old_ql, int) and old_ql > 0 else 1.0
    for sv in stats:
        if sv["Stat"] == 54:
            sv["RawValue"] = new_ql
        elif rng.random() < 0.33:
            sv["RawValue"] = rng.choice(pools.stat_values[sv["Stat"]])
        else:
            sv["RawValue"] = _scaled(rng, sv["RawValue"], ratio)
    for c in _Pools._criteria(item):
        if rng.random() < 0.25:
            c["Value2"] = rng.choice(pools.value2[(c["Value1"], c["Operator"])])
        else:
            c["Value2"] = _scaled(rng, c["Value2"], ratio)
    for sd in item.get("SpellData") or []:
        spells = sd.get("Items") or []
        for i, s in enumerate(spells):
            if pools.spells and rng.random() < 0.1:
                spells[i] = s = orjson.loads(orjson.dumps(rng.choice(pools.spells)))
            if "Amount" in s and rng.random() < 0.2 and pools.amounts.get(s.get("Stat")):
                s["Amount"] = rng.choice(pools.amounts[s.get("Stat")])
            elif "Amount" in s:
                s["Amount"] = _scaled(rng, s["Amount"], ratio)
    return item


def generate_aodb(
    out_dir: Path,
    *,
    items: int,
    template: Path,
    seed: int = 0,
    files: int = 1,
    ndjson: bool = False,
) -> GeneratedItems:
    """Write ``items`` items amplified from ``template`` into ``out_dir`` (``items.json``, or
    ``items-NNN.json`` when split over ``files``; ``.ndjson`` with ``ndjson``). Same arguments,
    same bytes."""
    real = load_template(template)
    pools = _Pools(real)
    blobs = [orjson.dumps(it) for it in real]  # copied by re-parsing: faster than deepcopy
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = max(1, min(files, items or 1))
    per_file = -(-items // files) if items else 0
    suffix = ".ndjson" if ndjson else ".json"
    total_bytes = n_stats = n_spells = 0
    made = 0
    written = 0
    for f in range(files):
        name = f"items{suffix}" if files == 1 else f"items-{f:03d}{suffix}"
        count = min(per_file, items - made)
        path = out_dir / name
        with open(path, "w", encoding="utf-8") as fh:
            if not ndjson:
                fh.write("[")
            for i in range(count):
                item = _vary(rng, orjson.loads(rng.choice(blobs)), pools, FIRST_AOID + made)
                made += 1
                n_stats += len(item.get("StatValues") or [])
                n_spells += sum(len(sd.get("Items") or []) for sd in item.get("SpellData") or [])
                text = json.dumps(item, ensure_ascii=False)
                if ndjson:
                    fh.write(text + "\n")
                else:
                    fh.write(text if i == 0 else ", " + text)
            if not ndjson:
                fh.write("]")
        written += 1
        total_bytes += path.stat().st_size
    log.info("generated %d items in %d file(s), %d bytes", made, written, total_bytes)
    return GeneratedItems(out_dir, written, total_bytes, made, n_stats, n_spells)


# --------------------------------------------------------------------------- as the CLI and the bench call it

def _generated(made: GeneratedItems) -> Generated:
    return Generated(made.root, made.files, made.bytes, made.items,
                     (("items", made.items), ("stat values", made.stat_values), ("spells", made.spells)))


def generate(out: Path, *, seed: int = 0, template: Path | None = None, items: int | None = None,
             files: int = 1, ndjson: bool = False) -> Generated:
    """``etl generate aodb``: ``items`` items (default 1,000) amplified from ``template`` (default
    ``$ETL_SHARED_DATA/aodb``), over ``files`` files, as a JSON array or ``ndjson``."""
    template = template or shared_data("aodb")
    if template is None:
        raise ConfigError("the aodb generator amplifies a real aodb export and was given none",
                          hint=f"pass --template DIR (a folder of aodb item arrays, or one such "
                               f"file), or set {SHARED_DATA_ENV} to the folder holding aodb/")
    return _generated(generate_aodb(out, items=items or 1_000, seed=seed, files=files, ndjson=ndjson,
                                    template=template))


def bench_export(out: Path, size: int, seed: int, template: Path | None) -> Generated:
    """An export of ``size`` items for ``etl bench``, amplified from the real ``template``."""
    if template is None:
        raise ConfigError("the aodb bench amplifies a real sample and needs --template",
                          hint=f"pass --template DIR (a real aodb export), or set {SHARED_DATA_ENV} "
                               "to the folder holding aodb/")
    return _generated(generate_aodb(out, items=size, template=template, seed=seed))


GENERATOR = Generator(
    generate=generate,
    options=(
        GenOption("items", int, "number of items (default 1,000)."),
        GenOption("files", int, "split the items over this many files.", default=1),
        GenOption("ndjson", bool, "one item a line instead of a JSON array."),
    ),
    template_help="a real aodb export to amplify (default $ETL_SHARED_DATA/aodb)",
)

BENCH = BenchSpec(sizes=(170_000,), export=bench_export, unit=("item", "items"), real=("aodb",))
