"""Generate MidsReborn-shaped exports of any size, deterministically.

Two sources of powersets:

* ``template_dir`` given (a real export such as ``../shared/data/mids``): its powersets are
  *amplified* — renamed copies whose powers and effects are drawn from the real pool, so key
  names, value types and the optional-key mix are exactly those of the real program.
* no template: a synthetic powerset factory writes the same format from the project's own
  description of it (used by ``etl demo`` on a machine without the sample data).

Amplification mixes powers across sets and fills every set with powers, so it loses some of the
real export's quirks (pet powersets with an empty ``SetName`` and no powers, effects whose
``PowerFullName`` is empty). For scale on real data, :func:`copy_mids` writes N renamed copies of
a whole real export instead: every record as it is, only the names that are keys renamed.

The ratio of powers per powerset and effects per power follows the full real export
(3,568 powersets, 9,649 powers, 65,293 effects), so ``entries`` (powersets + powers + effects)
maps to a realistic number of files and bytes.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from etl.dataset import BenchSpec, Generated, Generator, GenOption
from etl.errors import ConfigError

log = logging.getLogger(__name__)

#: Real export ratios (full Homecoming export of 2021-03-31).
POWERS_PER_SET = 9_649 / 3_568
EFFECTS_PER_POWER = 65_293 / 9_649
ENTRIES_PER_SET = 1 + POWERS_PER_SET + POWERS_PER_SET * EFFECTS_PER_POWER


@dataclass(frozen=True, slots=True)
class GeneratedExport:
    """What a generator call wrote."""

    root: Path
    files: int
    bytes: int
    powersets: int
    powers: int
    effects: int

    @property
    def entries(self) -> int:
        return self.powersets + self.powers + self.effects


def powersets_for_entries(entries: int) -> int:
    """How many powerset files give about ``entries`` entries at the real export's ratios."""
    return max(1, round(entries / ENTRIES_PER_SET))


def _dump(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2)


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method; means here are small.
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


# --------------------------------------------------------------------------- synthetic parts

_DAMAGE = ["Smashing", "Lethal", "Fire", "Cold", "Energy", "Negative", "Psionic", "Toxic"]
_ORIGINS = ["Magic", "Mutation", "Natural", "Science", "Technology"]
_ARCHETYPES = [
    ("Blaster", "Class_Blaster", "Blaster_Ranged", "Blaster_Support", 1205, 1847.3),
    ("Controller", "Class_Controller", "Controller_Control", "Controller_Buff", 1017, 1606.4),
    ("Defender", "Class_Defender", "Defender_Buff", "Defender_Ranged", 1017, 1606.4),
    ("Scrapper", "Class_Scrapper", "Scrapper_Melee", "Scrapper_Defense", 1339, 2088.2),
    ("Tanker", "Class_Tanker", "Tanker_Defense", "Tanker_Melee", 1874, 3534.0),
    ("Brute", "Class_Brute", "Brute_Melee", "Brute_Defense", 1499, 3212.0),
    ("Corruptor", "Class_Corruptor", "Corruptor_Ranged", "Corruptor_Buff", 1071, 1606.4),
    ("Dominator", "Class_Dominator", "Dominator_Control", "Dominator_Assault", 1017, 1606.4),
    ("Mastermind", "Class_Mastermind", "Mastermind_Summon", "Mastermind_Buff", 803, 1606.4),
    ("Stalker", "Class_Stalker", "Stalker_Melee", "Stalker_Defense", 1204, 1606.4),
]


def _synthetic_archetypes() -> list[dict[str, Any]]:
    out = []
    for i, (name, cls, prim, sec, hp, cap) in enumerate(_ARCHETYPES):
        out.append(
            {
                "DisplayName": name,
                "ClassType": 1 + i % 3,
                "Hitpoints": hp,
                "HPCap": cap,
                "DescLong": f"The {name} is one of the archetypes of the synthetic demo export.",
                "DescShort": f"{name} archetype.",
                "ResCap": 0.75 if i % 2 else 0.9,
                "RechargeCap": 5.0,
                "DamageCap": 4.0 + (i % 3) * 0.5,
                "RegenCap": 20.0,
                "RecoveryCap": 5.0,
                "Origin": _ORIGINS,
                "Primary": [3 + i * 2],
                "Secondary": [4 + i * 2],
                "Ancillary": [],
                "PerceptionCap": 1153.0,
                "ClassName": cls,
                "PrimaryGroup": prim,
                "SecondaryGroup": sec,
                "EpicGroup": "EPIC",
                "Playable": True,
                "BaseRecovery": 1.0,
                "BaseRegen": 0.25,
                "BaseThreat": 1.0,
                "Hero": i % 4 != 3,
            }
        )
    return out


def _synthetic_effect(rng: random.Random, power_full_name: str, unique_id: int) -> dict[str, Any]:
    mag = round(rng.uniform(0.05, 2.5), 4)
    effect: dict[str, Any] = {
        "MagnitudeExpression": "",
        "Probability": 1.0 if rng.random() < 0.8 else round(rng.uniform(0.1, 0.9), 2),
        "Mag": mag,
        "MagPercent": round(mag * 100, 4),
        "Duration": round(rng.choice([0.0, 4.1, 10.25, 15.0, 30.0]), 2),
        "DisplayPercentage": rng.random() < 0.7,
        "BaseProbability": 1.0,
        "Reward": "",
        "EffectId": rng.choice(["", "Damage", "Defense", "Resistance", "Heal"]),
        "Special": "",
        "EffectType": rng.randrange(0, 60),
        "Summon": "",
        "nSummon": -1,
        "UIDClassName": "",
        "nIDClassName": -1,
        "ToWho": rng.choice([1, 2, 3]),
        "Scale": round(rng.uniform(0.1, 3.0), 3),
        "nMagnitude": 1.0,
        "nDuration": 10.25,
        "Aspect": rng.randrange(0, 5),
        "ModifierTable": rng.choice(["Melee_Damage", "Ranged_Damage", "Melee_Buff_Def", "Ranged_Heal"]),
        "nModifierTable": rng.randrange(0, 120),
        "PowerFullName": power_full_name,
        "Absorbed_PowerType": 1,
        "Absorbed_Power_nID": -1,
        "Absorbed_Class_nID": -1,
        "Absorbed_EffectID": -1,
        "UniqueID": unique_id,
        "Override": "",
        "ActiveConditionals": [],
        "nOverride": -1,
    }
    for attr in ("Accuracy", "ActivatePeriod", "CastTime", "EnduranceCost", "Radius", "Range"):
        effect[f"AtrOrig{attr}"] = -1.0
        effect[f"AtrMod{attr}"] = -1.0
    if rng.random() < 0.6:
        effect["DamageType"] = rng.randrange(0, len(_DAMAGE))
        effect["Stacking"] = rng.randrange(0, 3)
    if rng.random() < 0.3:
        effect["PvMode"] = rng.randrange(0, 3)
        effect["Buffable"] = rng.random() < 0.5
        effect["Resistible"] = rng.random() < 0.5
    if rng.random() < 0.1:
        effect["MezType"] = rng.randrange(0, 20)
    return effect


def _synthetic_powerset(rng: random.Random, index: int) -> tuple[str, dict[str, Any]]:
    at = _ARCHETYPES[index % len(_ARCHETYPES)]
    group = at[2] if index % 2 == 0 else at[3]
    set_name = f"Demo_Set_{index:05d}"
    full = f"{group}.{set_name}"
    powers = []
    for j in range(1 + _poisson(rng, POWERS_PER_SET - 1)):
        pname = f"Power_{j:02d}"
        pfull = f"{full}.{pname}"
        n_eff = 1 + _poisson(rng, EFFECTS_PER_POWER - 1)
        power: dict[str, Any] = {
            "PowerIndex": index * 16 + j,
            "PowerSetID": index,
            "StaticIndex": index * 16 + j,
            "NGroupMembership": [],
            "FullName": pfull,
            "GroupName": group,
            "SetName": set_name,
            "PowerName": pname,
            "DisplayName": pname.replace("_", " "),
            "Requires": {
                "ClassName": [],
                "ClassNameNot": [],
                "NClassName": [],
                "NClassNameNot": [],
                "NPowerID": [],
                "NPowerIDNot": [],
                "PowerID": [[f"{full}.Power_00", ""]] if j and rng.random() < 0.2 else [],
                "PowerIDNot": [],
            },
            "Accuracy": 1.0,
            "AccuracyMult": 1.0,
            "GroupMembership": [],
            "EntitiesAffected": 1,
            "Target": rng.choice([1, 2, 4]),
            "TargetLoS": True,
            "EffectArea": rng.choice([1, 2, 3]),
            "MaxBoosts": "6",
            "NumAllowed": 1,
            "BoostsAllowed": ["Damage_Boost", "Accuracy_Boost", "Recharge_Boost"],
            "Enhancements": [rng.randrange(0, 200) for _ in range(3)],
            "DescShort": f"{pname} of {set_name}",
            "DescLong": f"{pname} is a synthetic power of {set_name}, made by the demo generator.",
            "SetTypes": [rng.randrange(0, 40)],
            "Level": rng.choice([1, 1, 2, 4, 6, 8, 10, 12, 18, 26, 32]),
            "VariableName": "",
            "NIDSubPower": [],
            "UIDSubPower": [],
            "IgnoreEnh": [],
            "Ignore_Buff": [],
            "MutexAuto": True,
            "ForcedClass": "",
            "Effects": [_synthetic_effect(rng, pfull, k + 1) for k in range(n_eff)],
            "FullSetName": full,
            "AoEModifier": 1.0,
            "EndCost": round(rng.uniform(4, 20), 3),
            "RechargeTime": round(rng.uniform(2, 240), 2),
            "BaseRechargeTime": 4.0,
            "CastTime": round(rng.uniform(0.5, 3), 3),
            "CastTimeReal": 1.67,
            "Range": rng.choice([0.0, 7.0, 40.0, 80.0]),
        }
        if rng.random() < 0.25:
            power["Radius"] = rng.choice([8.0, 15.0, 25.0])
            power["MaxTargets"] = rng.choice([5, 10, 16])
        powers.append(power)
    ps = {
        "Description": f"Synthetic powerset number {index}.",
        "SetName": set_name,
        "FullName": full,
        "ImageName": "",
        "Power": [p["StaticIndex"] for p in powers],
        "SetType": 1 + index % 2,
        "DisplayName": set_name.replace("_", " "),
        "nArchetype": index % len(_ARCHETYPES),
        "nID": index,
        "SubName": "",
        "ATClass": at[1],
        "UIDTrunkSet": "",
        "nIDTrunkSet": -1,
        "UIDLinkSecondary": "",
        "nIDLinkSecondary": -1,
        "UIDMutexSets": [],
        "nIDMutexSets": [],
        "GroupName": group,
        "Powers": powers,
    }
    return f"Player/{at[1]}_{group}.{set_name}.json", ps


def _synthetic_enhdb(rng: random.Random) -> dict[str, Any]:
    sets: list[dict[str, Any]] = []
    enhs: list[dict[str, Any]] = []
    for s in range(40):
        members = []
        for k in range(5):
            idx = len(enhs)
            members.append(idx)
            enhs.append(
                {
                    "StaticIndex": idx,
                    "Name": f"Demo Set {s} Piece {k}",
                    "ShortName": f"DS{s}.{k}",
                    "Desc": "",
                    "TypeID": 4,
                    "SubTypeID": 0,
                    "ClassID": [rng.randrange(0, 40)],
                    "Image": f"demo{s}.png",
                    "nIDSet": s,
                    "UIDSet": f"Demo_Set_{s}",
                    "Effect": [{"Enhance": {"ID": rng.randrange(1, 20), "SubID": -1}, "Multiplier": 1.0}],
                    "EffectChance": 1.0,
                    "LevelMin": 9,
                    "LevelMax": 49,
                    "Unique": k == 4,
                    "RecipeName": "",
                    "RecipeIDX": -1,
                    "UID": f"Crafted_Demo_Set_{s}_{chr(65 + k)}",
                    "LongName": f"Demo Set {s}: Piece {k}",
                }
            )
        sets.append(
            {
                "Bonus": [
                    {"Special": -1, "Name": [f"Set_Bonus.Set_Bonus.Demo_{b}"], "Index": [7000 + b],
                     "AltString": "", "Slotted": b + 2}
                    for b in range(rng.randrange(2, 6))
                ],
                "Desc": "",
                "DisplayName": f"Demo Set {s}",
                "Enhancements": members,
                "Image": f"demo{s}.png",
                "LevelMax": 49,
                "LevelMin": 9,
                "SetType": rng.randrange(0, 40),
                "ShortName": f"DS{s}",
                "SpecialBonus": [{"Special": -1, "Name": [], "Index": [], "AltString": ""} for _ in range(6)],
                "Uid": f"Demo_Set_{s}",
            }
        )
    return {"name": "Mids' Hero Designer Enhancement Database", "Enhancements": enhs, "EnhancementSets": sets}


def _synthetic_salvage() -> dict[str, Any]:
    return {
        "name": "Mids' Hero Designer Salvage Database",
        "Salvage": [
            {"InternalName": f"S_Demo{i:03d}", "ExternalName": f"Demo Salvage {i}",
             "LevelMin": 9 + (i % 3) * 16, "LevelMax": 24 + (i % 3) * 16}
            for i in range(60)
        ],
    }


def _synthetic_header(archetypes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "Mids' Hero Designer Database MK II",
        "Version": 1.0,
        "Date": "2026-01-01T00:00:00+00:00",
        "Issue": 27,
        "ArchetypeVersion": {"Revision": 1, "RevisionDate": "2026-01-01T00:00:00", "SourceFile": "demo"},
        "Archetypes": archetypes,
        "PowersetVersion": {"Revision": 1, "RevisionDate": "2026-01-01T00:00:00", "SourceFile": "demo"},
        "Powers": {"PowerVersion": {"Revision": 1}, "Powers": []},
        "Entities": [],
    }


# --------------------------------------------------------------------------- amplification


def _template_sets(template_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    files = sorted((template_dir / "db").rglob("*.json"))
    if not files:
        raise FileNotFoundError(f"no powerset files under {template_dir / 'db'}")
    return [(str(f.relative_to(template_dir / "db")), orjson.loads(f.read_bytes())) for f in files]


def _amplified_sets(rng: random.Random, templates: list[tuple[str, dict[str, Any]]], count: int
                    ) -> Iterator[tuple[str, dict[str, Any]]]:
    pool = [p for _, ps in templates for p in ps["Powers"]]
    for i in range(count):
        rel, tpl = templates[i % len(templates)]
        folder = rel.split("/", 1)[0] if "/" in rel else "Player"
        ps = {k: v for k, v in tpl.items() if k != "Powers"}
        set_name = f"{tpl['SetName']}_x{i:05d}"
        group = tpl["GroupName"]
        full = f"{group}.{set_name}"
        ps.update(SetName=set_name, FullName=full, DisplayName=f"{tpl['DisplayName']} {i}", nID=i)
        n_powers = 1 + _poisson(rng, POWERS_PER_SET - 1)
        picked = [pool[rng.randrange(len(pool))] for _ in range(n_powers)]
        names = [f"{p['PowerName']}_{j}" for j, p in enumerate(picked)]
        renamed = {p["FullName"]: f"{full}.{n}" for p, n in zip(picked, names, strict=True)}
        powers = []
        for j, (src, pname) in enumerate(zip(picked, names, strict=True)):
            p = copy.deepcopy({k: v for k, v in src.items() if k != "Effects"})
            pfull = f"{full}.{pname}"
            p.update(FullName=pfull, SetName=set_name, GroupName=group, PowerName=pname,
                     FullSetName=full, PowerSetID=i, StaticIndex=i * 64 + j, PowerIndex=i * 64 + j)
            req = p.get("Requires") or {}
            for key in ("PowerID", "PowerIDNot"):
                req[key] = [[renamed.get(x, x) for x in grp] for grp in req.get(key, [])]
            effects = src.get("Effects", [])
            if effects:
                # Cycle through the template's effects so the real export's mean holds even
                # where the sampled power has fewer effects than drawn.
                n_eff = 1 + _poisson(rng, EFFECTS_PER_POWER - 1)
                start = rng.randrange(len(effects))
                effects = [effects[(start + k) % len(effects)] for k in range(n_eff)]
            new_effects = []
            for e in effects:
                e2 = dict(e)
                e2["PowerFullName"] = pfull
                new_effects.append(e2)
            p["Effects"] = new_effects
            powers.append(p)
        ps["Power"] = [p["StaticIndex"] for p in powers]
        ps["Powers"] = powers
        prefix = rel.rsplit("/", 1)[-1].split(".", 1)[0]
        yield f"{folder}/{prefix}.{set_name}.json", ps


# --------------------------------------------------------------------------- renamed copies

#: The copier's output format: part of the bench's cache key, raised when copies change.
COPY_VERSION = 1
#: Where a real export's powerset files are.
_DB = "db"
#: The header files, written once (they are shared by every copy).
_HEADERS = ("I12.json", "EnhDB.json", "Salvage.json")


def _copy_suffix(copy_index: int) -> str:
    """What copy ``copy_index`` appends to each name: copy 0 keeps the real names."""
    return f"_c{copy_index}" if copy_index else ""


def _export_names(files: list[Path]) -> dict[str, str]:
    """Every powerset and power ``FullName`` of the export → the powerset ``FullName`` it sits in
    (a powerset maps to itself)."""
    names: dict[str, str] = {}
    for f in files:
        ps = orjson.loads(f.read_bytes())
        if not isinstance(ps, dict) or not isinstance(ps.get("FullName"), str):
            continue
        names[ps["FullName"]] = ps["FullName"]
        for p in ps.get("Powers") or []:
            if isinstance(p, dict) and isinstance(p.get("FullName"), str):
                names.setdefault(p["FullName"], ps["FullName"])
    return names


def _renaming(names: dict[str, str], suffix: str) -> dict[str, str]:
    """Old name → new name for one copy: the powerset's ``FullName`` gets ``suffix``, and a
    power named ``<powerset>.<power>`` becomes ``<powerset + suffix>.<power>`` (any other power
    name gets ``suffix`` at its end). Raises if a new name meets one already there."""
    out = {}
    for name, owner in names.items():
        head = owner + "."
        out[name] = (owner + suffix + "." + name[len(head):] if name != owner and name.startswith(head)
                     else name + suffix)
    new = set(out.values())
    if len(new) != len(out) or new & names.keys():
        msg = f"renaming with {suffix!r} would give names the export already has; pick another suffix"
        raise ValueError(msg)
    return out


def _renamed(obj: Any, renames: dict[str, str]) -> Any:
    """``obj`` with every string value that is a key name of the export renamed (FullName,
    FullSetName, PowerFullName, Requires.PowerID, Summon, Reward, UIDSubPower… wherever it is).
    Everything else, dirt included, is kept as it is."""
    if isinstance(obj, dict):
        return {k: _renamed(v, renames) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, renames) for v in obj]
    if isinstance(obj, str):
        return renames.get(obj, obj)
    return obj


def _renamed_set(ps: Any, renames: dict[str, str], suffix: str) -> Any:
    """A powerset file's object renamed for one copy: its key names, and its ``SetName`` (and
    that of its powers) when it is not empty; an empty one stays empty."""
    if not isinstance(ps, dict):
        return ps
    out = _renamed(ps, renames)
    if isinstance(out.get("SetName"), str) and out["SetName"]:
        out["SetName"] += suffix
    for p in out.get("Powers") or []:
        if isinstance(p, dict) and isinstance(p.get("SetName"), str) and p["SetName"]:
            p["SetName"] += suffix
    return out


def _count(ps: Any) -> tuple[int, int]:
    powers = [p for p in ps.get("Powers") or [] if isinstance(p, dict)] if isinstance(ps, dict) else []
    return len(powers), sum(len(p.get("Effects") or []) for p in powers)


def copy_mids(template_dir: Path, out_dir: Path, *, copies: int, pretty: bool = False) -> GeneratedExport:
    """Write ``copies`` renamed copies of a real MidsReborn export (e.g. ``../shared/data/mids_full``)
    under ``out_dir``: the export at N times its size, with the real export's records and dirt.

    Every powerset file is written ``copies`` times. Copy 0 keeps the real names; copy ``k``
    renames each powerset ``FullName`` to ``<FullName>_c<k>``, each power ``<set>.<power>`` to
    ``<set>_c<k>.<power>``, a non-empty ``SetName`` to ``<SetName>_c<k>``, and every string value
    anywhere in the file that names one of the export's powersets or powers (``FullSetName``,
    ``PowerFullName``, ``Requires.PowerID``, ``Summon``…), so keys stay unique and references stay
    inside their copy. Nothing else changes: pet sets keep their empty ``SetName`` and no powers,
    the description with a NUL keeps it, numeric ids (``nID``, ``StaticIndex``) and display names
    repeat as real duplicates would. ``I12.json``, ``EnhDB.json`` and ``Salvage.json`` are copied
    once, byte for byte. Files are ``db/<folder>/<name>_c<k>.json``.

    Powerset files are written compact (whitespace is not data: the real export's 140 MB are
    90 MB compact, so five copies are ~450 MB), or with ``pretty`` indented by two spaces like the real
    export (copy 0 then is the real file's bytes). Deterministic: the same export always gives
    the same bytes. Memory holds one powerset file and the export's names.

    Example:
        >>> made = copy_mids(Path("../shared/data/mids_full"), Path("/tmp/mids-x5"), copies=5)
        >>> made.entries  # doctest: +SKIP
        392550
    """
    if copies < 1:
        msg = f"copies must be at least 1, not {copies}"
        raise ValueError(msg)
    template_dir, out_dir = Path(template_dir), Path(out_dir)
    files = sorted((template_dir / _DB).rglob("*.json"))
    if not files:
        msg = f"no powerset files under {template_dir / _DB}"
        raise FileNotFoundError(msg)
    names = _export_names(files)
    renames = [_renaming(names, _copy_suffix(k)) if k else {} for k in range(copies)]
    written = total = n_sets = n_powers = n_effects = 0

    def write(path: Path, data: bytes) -> None:
        nonlocal written, total
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += 1
        total += len(data)

    for name in _HEADERS:
        if (template_dir / name).is_file():
            write(out_dir / name, (template_dir / name).read_bytes())
    option = orjson.OPT_INDENT_2 if pretty else 0
    for f in files:
        raw = f.read_bytes()
        ps = orjson.loads(raw)
        powers, effects = _count(ps)
        rel = f.relative_to(template_dir / _DB)
        for k in range(copies):
            suffix = _copy_suffix(k)
            if k == 0:
                data = raw if pretty else orjson.dumps(ps)
            else:
                data = orjson.dumps(_renamed_set(ps, renames[k], suffix), option=option)
            write(out_dir / _DB / rel.with_name(f"{rel.stem}{suffix}{rel.suffix}"), data)
            n_sets += 1
            n_powers += powers
            n_effects += effects
    log.info("copied %s x%d: %d files (%d bytes) under %s", template_dir, copies, written, total, out_dir)
    return GeneratedExport(out_dir, written, total, n_sets, n_powers, n_effects)


def export_size(root: Path) -> GeneratedExport:
    """Count a MidsReborn export as it is (files, bytes, powersets, powers, effects)."""
    root = Path(root)
    files = sorted((root / _DB).rglob("*.json"))
    headers = [root / name for name in _HEADERS if (root / name).is_file()]
    n_powers = n_effects = 0
    for f in files:
        powers, effects = _count(orjson.loads(f.read_bytes()))
        n_powers += powers
        n_effects += effects
    size = sum(f.stat().st_size for f in (*headers, *files))
    return GeneratedExport(root, len(files) + len(headers), size, len(files), n_powers, n_effects)


# --------------------------------------------------------------------------- entry point


def generate_mids(
    out_dir: Path,
    *,
    powersets: int,
    seed: int = 0,
    template_dir: Path | None = None,
) -> GeneratedExport:
    """Write a MidsReborn-format export with ``powersets`` powerset files under ``out_dir``.

    The layout is the real one: ``I12.json``, ``EnhDB.json``, ``Salvage.json`` and
    ``db/<Folder>/<Name>.json``. The same arguments always write the same bytes.
    """
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    (out_dir / "db").mkdir(parents=True, exist_ok=True)
    written = total = n_powers = n_effects = 0

    def write(rel: str, data: bytes) -> None:
        nonlocal written, total
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += 1
        total += len(data)

    if template_dir is not None:
        template_dir = Path(template_dir)
        for name in ("I12.json", "EnhDB.json", "Salvage.json"):
            write(name, (template_dir / name).read_bytes())
        sets: Iterator[tuple[str, dict[str, Any]]] = _amplified_sets(
            rng, _template_sets(template_dir), powersets)
    else:
        write("I12.json", _dump(_synthetic_header(_synthetic_archetypes())))
        write("EnhDB.json", _dump(_synthetic_enhdb(rng)))
        write("Salvage.json", _dump(_synthetic_salvage()))
        sets = (_synthetic_powerset(rng, i) for i in range(powersets))

    for rel, ps in sets:
        n_powers += len(ps["Powers"])
        n_effects += sum(len(p["Effects"]) for p in ps["Powers"])
        write(f"db/{rel}", _dump(ps))
    log.info("generated %d files (%d bytes) under %s", written, total, out_dir)
    return GeneratedExport(out_dir, written, total, powersets, n_powers, n_effects)


# --------------------------------------------------------------------------- as the CLI and the bench call it


def _generated(made: GeneratedExport) -> Generated:
    return Generated(made.root, made.files, made.bytes, made.entries,
                     (("powersets", made.powersets), ("powers", made.powers), ("effects", made.effects)))


def generate(out: Path, *, seed: int = 0, template: Path | None = None, powersets: int | None = None,
             entries: int | None = None, copies: int | None = None, pretty: bool = False) -> Generated:
    """``etl generate mids``: ``copies`` renamed copies of the real export ``template``, or
    ``powersets`` powerset files (or about ``entries`` entries; default 2,000), amplified from
    ``template`` when given, synthetic otherwise."""
    if copies:
        if template is None:
            raise ConfigError("--copies copies a real export and needs --template",
                              hint="pass --template ../shared/data/mids_full")
        return _generated(copy_mids(template, out, copies=copies, pretty=pretty))
    count = powersets or powersets_for_entries(entries or 2_000)
    return _generated(generate_mids(out, powersets=count, seed=seed, template_dir=template))


def bench_export(out: Path, size: int, seed: int, template: Path | None) -> Generated:
    """An export of about ``size`` entries for ``etl bench``."""
    return _generated(generate_mids(out, powersets=powersets_for_entries(size), seed=seed,
                                    template_dir=template))


def bench_copies(template: Path, out: Path, copies: int) -> Generated:
    return _generated(copy_mids(template, out, copies=copies))


def measure(root: Path) -> Generated:
    return _generated(export_size(root))


GENERATOR = Generator(
    generate=generate,
    options=(
        GenOption("powersets", int, "number of powerset files."),
        GenOption("entries", int, "or about this many entries (powersets + powers + effects)."),
        GenOption("copies", int, "or N renamed copies of the whole real export --template (every record "
                  "as it is, only key names suffixed _c1.._cN-1; compact JSON)."),
        GenOption("pretty", bool, "--copies: indent like the real export instead of compact JSON."),
    ),
    template_help="e.g. ../shared/data/mids, synthetic when absent",
    demo={"powersets": 200, "seed": 0},
    demo_size="powersets",
)

BENCH = BenchSpec(
    sizes=(78_000, 360_000),
    export=bench_export,
    real=("mids_full", "mids"),
    sample=("mids",),
    copies=bench_copies,
    measure=measure,
    copy_version=COPY_VERSION,
    default_copies=(1, 5),
)
