"""Generate pharmacy license search trees of any size, deterministically, with the real dirt.

The layout and record shape are those of the real sample (``../shared/data/licenses``):
``<state>/<Pharmacy>_<NN>_parse.json`` beside a PNG screenshot ``<Pharmacy>_<NN>.png``. The dirt
is the sample's, in about its proportions, plus what the scraper writes for other states:

* dates in varied formats (``09/14/2016``, ``2/28/2027``, ``2027-02-28``, ``Feb 28, 2027``) and
  empty strings; placeholders (``Not On File``, ``N/A``, ``---``, ``Unknown``);
* statuses with a trailing slash (``Clear/``, ``Closed/``);
* no-result searches (``licenses: []``, ``result_status: "not_found"``), about one in twenty;
* ``source_image_file`` as a path from the scraping machine (resolves nowhere here);
* one result in ``missing_every`` without a screenshot, and screenshots without a result.

Screenshots are real PNG files (valid signature, IHDR and IDAT) of noise, about the size of the
real ones (~110 KB), so hashing and copying cost what they cost on real trees.
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from etl.dataset import BenchSpec, Generated, Generator, GenOption

STATES = ("FL", "TX", "CA", "NY", "PA", "OH", "GA", "NC", "MI", "NJ", "VA", "WA", "AZ", "MA")
PHARMACIES = ("Belmar", "Beaker", "Empower", "Wells", "Olympia", "Hallandale", "Triangle",
              "Stark", "Lakeside", "Harbor", "Summit", "Cedar", "Maple", "Pioneer", "Keystone")
STATUSES = ("Clear/", "Clear/", "Clear/", "Closed/", "Active", "Null and Void/", "Inactive")
TYPES = ("Pharmacy Non-Resident", "Pharmacy Special Non-Resident", "Community Pharmacy",
         "Pharmacy Outsourcing Facility")
PLACEHOLDERS = ("Not On File", "N/A", "---", "Unknown", "")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class GeneratedTree:
    root: Path
    results: int
    images: int
    files: int
    bytes: int


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(rng: random.Random, width: int = 240, height: int = 150) -> bytes:
    """A valid RGB PNG of noise (stored, not compressed: ~``3*width*height`` bytes)."""
    row = 1 + 3 * width
    raw = bytearray(rng.randbytes(row * height))
    raw[::row] = bytes(height)  # filter type 0 on every row
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(bytes(raw), 0)) + _chunk(b"IEND", b""))


def _date(rng: random.Random, year: int) -> str:
    m, d = rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice((f"{m:02d}/{d:02d}/{year}", f"{m}/{d}/{year}", f"{year}-{m:02d}-{d:02d}",
                       f"{MONTHS[m - 1]} {d}, {year}")) \
        if rng.random() > 0.05 else rng.choice(PLACEHOLDERS)


def _record(rng: random.Random, state: str, pharmacy: str, n: int, found: bool) -> dict[str, object]:
    ts = f"2025-08-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:" \
         f"{rng.randint(0, 59):02d}.{rng.randint(0, 999999):06d}"
    licenses = []
    if found:
        blank = rng.random() < 0.15
        licenses.append({
            "pharmacy_name": f"{pharmacy.upper()} PHARMACY {n}",
            "license_number": f"PH{rng.randint(10000, 99999)}{n:02d}",
            "license_status": rng.choice(STATUSES),
            "license_type": rng.choice(PLACEHOLDERS) if blank else rng.choice(TYPES),
            "issue_date": _date(rng, rng.randint(1995, 2024)),
            "expiration_date": _date(rng, rng.randint(2025, 2028)) if rng.random() > 0.1 else "",
            "address": {"street": f"{rng.randint(1, 9999)} MAIN ST", "suite": "",
                        "city": rng.choice(("SUITE 200 MCKINNEY", "MADISON", "WICHITA", "Unknown")),
                        "state": rng.choice(STATES), "zip_code": f"{rng.randint(10000, 99999)}"},
            "contact": {"phone": None, "email": None},
            "additional_info": {"specialties": ["Non-Resident"]},
        })
    return {
        "metadata": {"pharmacy_name": pharmacy, "search_timestamp": ts, "state": state,
                     "scraper_version": "1.0.0", "json_generated_timestamp": ts,
                     "source_html_file": f"/home/scraper/data/2025-08-03/{state}/{pharmacy}_{n:02d}.html",
                     "source_image_file": f"data/states_baseline/{state}/{pharmacy}_{n:02d}.png",
                     "source_excel_file": None, "search_result_type": "pharmacy_data"},
        "search_result": {"licenses": licenses, "result_status": "found" if found else "not_found",
                          "search_query": pharmacy},
        "debug_info": {"parser_class": f"{state}Parser", "state_processor": state},
        "errors": [], "warnings": [],
    }


def generate_licenses(out: Path, *, results: int = 515, seed: int = 0,
                      missing_every: int = 0) -> GeneratedTree:
    """Write ``results`` result files (with screenshots) under ``out/<state>/``.

    ``missing_every``: every that-many-th result has no screenshot (0: only the last one, so
    515 results come with 514 images, as in the benchmark)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    files = size = images = 0
    for i in range(results):
        state = STATES[i % len(STATES)]
        pharmacy = PHARMACIES[(i // len(STATES)) % len(PHARMACIES)]
        n = i // (len(STATES) * len(PHARMACIES)) + 1
        folder = out / state
        folder.mkdir(exist_ok=True)
        found = rng.random() > 0.05
        text = json.dumps(_record(rng, state, pharmacy, n, found), indent=2)
        (folder / f"{pharmacy}_{n:02d}_parse.json").write_text(text)
        files += 1
        size += len(text)
        missing = (i == results - 1) if not missing_every else (i % missing_every == missing_every - 1)
        if not missing:
            png = make_png(rng)
            (folder / f"{pharmacy}_{n:02d}.png").write_bytes(png)
            files += 1
            images += 1
            size += len(png)
    return GeneratedTree(out, results, images, files, size)


# --------------------------------------------------------------------------- as the CLI and the bench call it


def _generated(tree: GeneratedTree) -> Generated:
    return Generated(tree.root, tree.files, tree.bytes, tree.results,
                     (("results", tree.results), ("screenshots", tree.images)), {"images": tree.images})


def generate(out: Path, *, seed: int = 0, template: Path | None = None,
             results: int | None = None) -> Generated:
    """``etl generate licenses``: ``results`` result files (default 515) with their screenshots
    (``template`` is not used: the tree is generated whole)."""
    return _generated(generate_licenses(out, results=results or 515, seed=seed))


def bench_export(out: Path, size: int, seed: int, template: Path | None) -> Generated:
    """A tree of ``size`` result files for ``etl bench``."""
    return _generated(generate_licenses(out, results=size, seed=seed))


GENERATOR = Generator(
    generate=generate,
    options=(GenOption("results", int, "number of result files (default 515)."),),
)

BENCH = BenchSpec(sizes=(515,), export=bench_export, unit=("result file", "result files"), reimport=True)
