"""Finding and checking the input files: paths and globs resolved to JSON files, each assigned to
the dataset's source whose patterns it matches, sized, hashed and its shape (one object, an array,
a stream) told; a file that is not JSON diagnosed to the byte."""

from __future__ import annotations

import bisect
import fnmatch
import glob as globlib
import gzip
import hashlib
import itertools
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from etl.dataset import Dataset
from etl.errors import InputError
from etl.jsontext import in_staging_folder, is_json_name, json_files_under

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")
_WS = b" \t\r\n"
#: How a file is read: "object" files hold one JSON object and are read whole (read_text);
#: "array" files (a top-level JSON array) and "stream" files (NDJSON, gzip) go through DuckDB's
#: streaming read_json_objects.
Shape = Literal["object", "array", "stream"]


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input file, checked: where it is, which source it feeds, its size and hash."""

    path: Path
    relpath: str
    source: str
    size: int
    sha256: str
    shape: Shape

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "relpath": self.relpath, "source": self.source,
                "size": self.size, "sha256": self.sha256, "shape": self.shape}



# ------------------------------------------------------------------------------ finding inputs


def resolve_inputs(sources: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Expand files, directories (recursively) and globs into (path, relative path) pairs."""
    found: list[tuple[Path, str]] = []
    for src in sources:
        text = str(src)
        # A path that exists is that path, whatever characters its name holds ("export [v2]").
        if _GLOB_CHARS.search(text) and not Path(text).exists():
            matches = sorted(globlib.glob(text, recursive=True))
            staged: dict[str, bool] = {}  # per folder: inside a staging folder (never input)
            files = [Path(m) for m in matches if Path(m).is_file() and is_json_name(Path(m).name)
                     and not staged.setdefault(os.path.dirname(os.path.abspath(m)),
                                               in_staging_folder(os.path.dirname(os.path.abspath(m))))]
            if not files:
                raise InputError("glob matches no JSON file", file=text,
                                 hint="check the pattern; quote it so the shell does not expand it")
            # The input root of a glob (what the files' relative paths, and the references a
            # dataset resolves from them, are judged against) is the deepest folder holding every
            # file it matched: never wider than the folder the user named.
            head = Path(os.path.commonpath([str(f.parent) for f in files]))
            found.extend((f, f.relative_to(head).as_posix() if f.is_relative_to(head) else f.name)
                         for f in files)
        else:
            path = Path(text)
            if path.is_dir():
                files_rel = json_files_under(path)
                if not files_rel:
                    raise InputError("directory holds no JSON file (*.json, *.ndjson, *.jsonl, .gz)",
                                     file=path, hint="point at the export's folder")
                found.extend((path / rel, rel) for rel in files_rel)
            elif path.is_file():
                found.append((path, path.name))
            else:
                raise InputError("no such file or directory", file=path, hint="check the path")
    return found


def assign_sources(dataset: Dataset, files: list[tuple[Path, str]]) -> dict[str, list[tuple[Path, str]]]:
    """Give each file to the first source whose pattern matches its relative path or name."""
    out: dict[str, list[tuple[Path, str]]] = {s.name: [] for s in dataset.sources}
    # A source without patterns holds no JSON files (its levels come from side-file hooks).
    patterns = [(s.name, re.compile("|".join(fnmatch.translate(p) for p in s.match)))
                for s in dataset.sources if s.match]
    ignored = []
    for path, rel in files:
        name = rel.rsplit("/", 1)[-1]
        for src, pattern in patterns:
            if pattern.match(rel) or pattern.match(name):
                out[src].append((path, rel))
                break
        else:
            ignored.append(rel)
    if ignored:
        log.warning("%d file(s) match no source of %s and are ignored, e.g. %s",
                    len(ignored), dataset.name, ", ".join(ignored[:3]))
    return out


# ------------------------------------------------------------------------------ checking inputs


def inspect_file(path: Path, relpath: str, source: str, *, keep: int = 0) -> tuple[InputFile, bytes | None]:
    """Hash ``path`` and check its outline: not empty, starts with ``[``/``{``, not truncated.

    A plain one-object file of at most ``keep`` bytes is also returned whole (its leading
    whitespace and byte-order mark removed), so staging need not read it again.
    """
    digest = hashlib.sha256()
    ndjson = False
    inflate = zlib.decompressobj(wbits=47) if path.name.lower().endswith(".gz") else None
    head = b""
    tail = b""
    size = 0
    offset = 0  # offset in the (decompressed) JSON text
    first_at = -1
    whole: bytes | None = None
    with open(path, "rb") as f:
        # read() sized from the file's length: asking for ``keep`` bytes would allocate (and
        # map and unmap) a buffer of that size for every small file.
        small = keep and inflate is None and os.fstat(f.fileno()).st_size <= keep
        first = f.read() if small else b""
        if first and len(first) <= keep:
            whole = first
            blocks: Iterator[bytes] = iter((first,))
        else:
            blocks = itertools.chain((first,) if first else (), iter(lambda: f.read(1 << 20), b""))
        for block in blocks:
            size += len(block)
            digest.update(block)
            if inflate is not None:
                try:
                    block = inflate.decompress(block)
                except zlib.error as exc:
                    raise InputError(f"not a valid gzip file: {exc}", file=path,
                                     hint="re-compress or decompress the file") from exc
            if not head:
                stripped = block.lstrip(_WS)  # the block itself when nothing is stripped
                if stripped:
                    head = stripped[:4]
                    first_at = offset + len(block) - len(stripped)
                    newline = stripped.find(b"\n")
                    # NDJSON: the first line is a whole object and more lines follow.
                    ndjson = newline > 0 and stripped[:newline].rstrip().endswith(b"}") \
                        and bool(stripped[newline:].strip(_WS))
            # A window first: rstrip of a whole block with a trailing newline would copy it.
            end = block[-4096:].rstrip(_WS) or block.rstrip(_WS)
            if end:
                tail = (tail + end[-4:])[-4:]
            offset += len(block)
    if inflate is not None and not inflate.eof:
        raise InputError(f"gzip stream ends early after {offset} bytes", file=path,
                         offset=size, hint="the file was cut off; export or download it again")
    if not head:
        raise InputError("file is empty (no JSON records)", file=path, offset=0,
                         hint="remove it from the input or export it again")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError("file is UTF-16; JSON exports must be UTF-8", file=path, offset=0,
                         hint="convert it, e.g. `iconv -f UTF-16 -t UTF-8`")
    bom = head.startswith(b"\xef\xbb\xbf")
    if bom:
        head = head[3:].lstrip(_WS) or b"{"
    opener = head[:1]
    if opener not in (b"[", b"{"):
        raise InputError(f"not JSON: starts with {head[:1]!r} instead of '[' or '{{'",
                         file=path, offset=max(first_at, 0),
                         hint="remove non-JSON files from the input folder")
    closer = tail[-1:]
    if opener == b"[" and closer != b"]":
        raise InputError("truncated JSON array: the file ends without its closing ']'",
                         file=path, offset=offset, hint="the export was cut off; export it again")
    if opener == b"{" and closer != b"}":
        raise InputError("truncated JSON: the file ends inside an object",
                         file=path, offset=offset, hint="the export was cut off; export it again")
    plain_object = (opener == b"{" and inflate is None and not ndjson
                    and not path.name.lower().endswith((".ndjson", ".jsonl")))
    shape: Shape = "object" if plain_object else ("array" if opener == b"[" else "stream")
    info = InputFile(path, relpath, source, size, digest.hexdigest(), shape)
    if not plain_object or whole is None:
        return info, None
    whole = whole.lstrip(_WS)
    if bom:
        whole = whole[3:].lstrip(_WS)
    return info, whole


#: A high surrogate escape not followed by a low one, or a low one not after a high one.
_LONE_SURROGATE = re.compile(r"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                             r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def diagnose_json(path: Path, *, limit: int = 512 << 20) -> tuple[int | None, int | None, str]:
    """Find the first broken record of a JSON file: (record, byte offset, reason).

    Used only after the fast reader failed, to say precisely where. Files over ``limit``
    bytes are not scanned.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        return None, None, "file too large to pinpoint the error"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        record = data[: exc.start].count(b"\n{") if data.lstrip()[:1] != b"[" else None
        return record, exc.start, f"invalid UTF-8 byte {data[exc.start:exc.start + 1]!r}"
    decoder = json.JSONDecoder()

    def byte_at(i: int) -> int:
        return len(text[:i].encode("utf-8"))

    i = len(text) - len(text.lstrip())
    if text.startswith("\ufeff"):
        i = 1
    record = 0
    starts: list[int] = []
    array = text[i:i + 1] == "["
    if array:
        i += 1

    def nothing_else() -> tuple[int | None, int | None, str]:
        # Python reads a lone UTF-16 surrogate escape; DuckDB's reader (and UTF-8) does not.
        m = _LONE_SURROGATE.search(text)
        if m:
            return (max(0, bisect.bisect_right(starts, m.start()) - 1), byte_at(m.start()),
                    f"a lone UTF-16 surrogate escape {m.group(0)!r} (no character: half of a pair)")
        return None, None, "no error found"

    while True:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i >= len(text):
            if array:
                return record, byte_at(i), "array ends without ']'"
            return nothing_else()
        if array and text[i] == "]":
            if text[i + 1:].strip():
                return record, byte_at(i + 1), "data after the closing ']'"
            return nothing_else()
        starts.append(i)
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            return record, byte_at(exc.pos), exc.msg
        if not isinstance(value, dict):
            return record, byte_at(i), f"record is a {type(value).__name__}, expected an object"
        i = end
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if array:
            if i < len(text) and text[i] == ",":
                j = i + 1
                while j < len(text) and text[j] in " \t\r\n":
                    j += 1
                if j < len(text) and text[j] == "]":
                    return record, byte_at(i), "trailing comma after the last record, before ']'"
                i = j
            elif i < len(text) and text[i] == "]":
                continue
            else:
                return record, byte_at(i), "expected ',' or ']' after this record"
        record += 1
