"""The staging root on any filesystem pyarrow opens: a local path, or a URI.

``ETL_STAGING_DIR`` / ``--staging-dir`` may be a plain path (``staging``, ``/mnt/shared/staging``)
or a URI that :meth:`pyarrow.fs.FileSystem.from_uri` opens (``file:///mnt/shared/staging``,
``s3://bucket/staging``, ``gs://bucket/staging``, ``hdfs://namenode:8020/staging``). The root is
resolved once (:func:`resolve`) into a :class:`~pathlib.Path` when the filesystem is the local one
(``file://`` included: every code path stays exactly the fast local one), or into a
:class:`RemotePath`, a small path object over a pyarrow filesystem with the few operations the
stages use (``/``, ``exists``, ``is_file``, ``iterdir``, ``read_bytes``, ``write_bytes``,
``mkdir``, ``stat``...). A :class:`RemotePath` has no ``__fspath__``: passed by mistake to
``open()``, DuckDB or a pathlib call it fails at once instead of writing a local file.

What holds on a remote root (object stores do not rename atomically):

- A run is complete when its ``manifest.json`` exists. Everything a stage writes is uploaded
  first and the manifest last, as one object (a PUT is all-or-nothing), so a reader never
  takes a half-uploaded run for a complete one.
- Replacing a run's ``rejects/`` or ``tables/`` (validating or transforming again) removes the
  old files before the new manifest lists the new ones: re-run a stage only while nothing reads
  that run.
- The staging lock holds within one process only (no ``flock`` on an object store): run one
  writer per dataset staging folder at a time.

>>> root = resolve("s3://bucket/staging")          # doctest: +SKIP
>>> (root / "mids").is_dir()                         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.fs as pafs

from etl.errors import ConfigError

log = logging.getLogger(__name__)

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: Roots resolved so far: (their URI without query or trailing slash, the query) → (filesystem,
#: base path). A URI under one of them reuses its filesystem (opened once per process).
_ROOTS: dict[tuple[str, str], tuple[pafs.FileSystem, str]] = {}
_ROOTS_LOCK = threading.Lock()
#: The folder under the system's temporary folder that :func:`work_dir` works in.
SCRATCH = "etl-scratch"


def is_uri(text: str | Path) -> bool:
    """Whether ``text`` is a URI (``scheme://...``) rather than a plain path."""
    return isinstance(text, str) and bool(_URI.match(text))


class RemotePath:
    """A path on a non-local pyarrow filesystem, with the pathlib methods the stages use.

    ``str()`` gives its URI (with the root URI's query, such as ``?endpoint_override=...``),
    which :func:`resolve` turns back into the same path (a Ray task receives that text)."""

    __slots__ = ("fs", "path", "query", "root_path", "root_uri")

    def __init__(self, fs: pafs.FileSystem, path: str, *, root_path: str, root_uri: str,
                 query: str = "") -> None:
        self.fs = fs
        self.path = path.rstrip("/") or path
        self.root_path = root_path
        self.root_uri = root_uri
        self.query = query

    # -- naming -----------------------------------------------------------------------------

    def _with_path(self, path: str) -> RemotePath:
        return RemotePath(self.fs, path, root_path=self.root_path, root_uri=self.root_uri,
                          query=self.query)

    def __truediv__(self, other: str | PurePosixPath) -> RemotePath:
        rel = str(other).strip("/")
        return self._with_path(f"{self.path}/{rel}" if rel else self.path)

    def __str__(self) -> str:
        query = f"?{self.query}" if self.query else ""
        rel = self.path[len(self.root_path):].lstrip("/") if self.path.startswith(self.root_path) else None
        if rel is None:
            return f"{self.root_uri.split('://', 1)[0]}://{self.path}{query}"
        return (f"{self.root_uri}/{rel}" if rel else self.root_uri) + query

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: RemotePath) -> bool:
        return self.path < other.path

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> RemotePath:
        return self._with_path(posixpath.dirname(self.path))

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        return PurePosixPath(posixpath.relpath(self.path, other.path))

    def as_posix(self) -> str:
        return str(self)

    def resolve(self) -> RemotePath:
        return self

    def absolute(self) -> RemotePath:
        return self

    def is_absolute(self) -> bool:
        return True

    # -- queries ----------------------------------------------------------------------------

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return bool(self._info().type != pafs.FileType.NotFound)

    def is_file(self) -> bool:
        return bool(self._info().type == pafs.FileType.File)

    def is_dir(self) -> bool:
        return bool(self._info().type == pafs.FileType.Directory)

    def stat(self) -> SimpleNamespace:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        return SimpleNamespace(st_size=info.size or 0, st_mtime=mtime)

    def iterdir(self) -> Iterator[RemotePath]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.path):
            yield self._with_path(info.path)

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Children whose name matches ``pattern`` (one level: no ``/`` in it)."""
        if "/" in pattern:
            raise ValueError(f"RemotePath.glob takes a name pattern, not {pattern!r}")
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    # -- reading and writing ------------------------------------------------------------------

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return bytes(f.read())

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if not exist_ok and self.exists():
            raise FileExistsError(str(self))
        self.fs.create_dir(self.path, recursive=parents)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def open_input(self) -> Any:
        """A random-access pyarrow file (what Parquet readers need)."""
        return self.fs.open_input_file(self.path)

    def open_output(self) -> Any:
        return self.fs.open_output_stream(self.path)


#: A staging location: a local path, or a path on another pyarrow filesystem.
StagePath: TypeAlias = Path | RemotePath


def resolve(location: str | Path | RemotePath) -> StagePath:
    """The staging location ``location`` names: a :class:`~pathlib.Path` for a plain path or any
    URI of the local filesystem (``file://``), else a :class:`RemotePath`. Raises
    :class:`ConfigError` for a URI pyarrow cannot open (unknown scheme, missing credentials).

    >>> resolve("file:///tmp/staging")
    PosixPath('/tmp/staging')
    >>> resolve("staging")
    PosixPath('staging')
    """
    if isinstance(location, (Path, RemotePath)):
        return location
    text = str(location)
    if not is_uri(text):
        return Path(text)
    bare, _, query = text.partition("?")
    bare = bare.rstrip("/") if not bare.endswith(":///") else bare
    with _ROOTS_LOCK:
        for (uri, q), (fs, base) in _ROOTS.items():
            if q == query and (bare == uri or bare.startswith(uri + "/")):
                rel = bare[len(uri):].strip("/")
                return RemotePath(fs, f"{base}/{rel}" if rel else base, root_path=base, root_uri=uri,
                                  query=query)
        try:
            fs, base = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError, pa.ArrowException) as exc:
            raise ConfigError(f"cannot open staging location {text}: {exc}",
                              hint="use a path, or a URI pyarrow opens (file://, s3://, gs://, hdfs://); "
                                   "credentials come from the filesystem's usual environment") from exc
        if isinstance(fs, pafs.LocalFileSystem):
            return Path(base)
        base = base.rstrip("/")
        _ROOTS[(bare, query)] = (fs, base)
        log.debug("staging location %s is %s on %s", bare, base, fs.type_name)
        return RemotePath(fs, base, root_path=base, root_uri=bare, query=query)


def as_uri(path: StagePath) -> str:
    """``path`` as a URI another process (a Ray worker) resolves to the same place: ``file://``
    with the absolute path for a local one."""
    if isinstance(path, RemotePath):
        return str(path)
    return path.absolute().as_uri()


def parquet_source(path: StagePath) -> Any:
    """What Parquet readers (``pq.ParquetFile``, ``pq.read_schema``, ``pl.read_parquet``) take for
    ``path``: the path itself when local, an open pyarrow file when remote (close it, or let
    the reader own it)."""
    return path.open_input() if isinstance(path, RemotePath) else path


def sha256(path: StagePath, *, block: int = 1 << 20) -> str:
    """The sha256 of a file, local or remote."""
    h = hashlib.sha256()
    if isinstance(path, RemotePath):
        with path.fs.open_input_stream(path.path) as f:
            while chunk := f.read(block):
                h.update(chunk)
        return h.hexdigest()
    with open(path, "rb") as fh:
        while data := fh.read(block):
            h.update(data)
    return h.hexdigest()


def remove_tree(path: StagePath) -> None:
    """Remove a folder and all it holds; nothing when it is not there."""
    if isinstance(path, RemotePath):
        if path.is_dir():
            path.fs.delete_dir(path.path)
        elif path.is_file():
            path.unlink(missing_ok=True)
        return
    shutil.rmtree(path, ignore_errors=True)


def upload_tree(src: Path, dst: RemotePath, *, last: str | None = None) -> None:
    """Copy the local folder ``src`` to ``dst`` (pyarrow's threaded copy); the file named
    ``last`` directly under ``src`` (the manifest) after all others, under a temporary name
    moved into place."""
    dst.mkdir(parents=True, exist_ok=True)
    held = src / last if last is not None and (src / last).is_file() else None
    aside = src.parent / f".{src.name}.{last}.held"
    if held is not None:
        held.replace(aside)  # out of the folder while the rest is copied
    pafs.copy_files(str(src), dst.path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=dst.fs, use_threads=True)
    if held is not None:
        tmp = dst / f".{last}.{os.getpid()}.tmp"
        tmp.write_bytes(aside.read_bytes())
        dst.fs.move(tmp.path, (dst / last).path)  # type: ignore[operator]
        aside.replace(held)


def move_tree(src: RemotePath, dst: RemotePath, *, last: str | None = None) -> None:
    """Move the remote folder ``src`` to ``dst`` file by file (a rename on filesystems that have
    one, a copy and delete on object stores); the file named ``last`` goes after all others."""
    dst.mkdir(parents=True, exist_ok=True)
    infos = src.fs.get_file_info(pafs.FileSelector(src.path, recursive=True, allow_not_found=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    held = None
    for path in files:
        rel = posixpath.relpath(path, src.path)
        if last is not None and rel == last:
            held = path
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src.fs.move(path, target.path)
    if held is not None:
        src.fs.move(held, (dst / last).path)  # type: ignore[operator]
    remove_tree(src)


@contextmanager
def scratch(place: StagePath, prefix: str = "etl-") -> Iterator[Path]:
    """A local folder to write in before publishing to ``place``: ``place`` itself when it is
    local (nothing changes there), a fresh temporary folder (removed after) when it is remote."""
    if not isinstance(place, RemotePath):
        yield place
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def work_dir(place: StagePath, name: str) -> Path:
    """The local folder a phase writes ``name`` (``.tables.tmp``...) in before it is moved into
    ``place``: ``place / name`` when ``place`` is local (nothing changes there); for a remote
    ``place``, a folder of that name under the system's temporary folder, the same one each
    time for one ``place`` (so the next attempt clears what a failed one left)."""
    if not isinstance(place, RemotePath):
        return place / name
    key = hashlib.sha256(str(place).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / SCRATCH / key / name


def drop_local(folder: Path) -> None:
    """Remove a local folder a phase wrote in, and the :func:`work_dir` folder holding it when
    that is empty now."""
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.parent.name == SCRATCH:
        with contextlib.suppress(OSError):
            folder.parent.rmdir()


def download(src: RemotePath, dst: Path) -> None:
    """Copy the remote file ``src`` to the local path ``dst`` (its folder made)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(src.path, str(dst), source_filesystem=src.fs,
                    destination_filesystem=pafs.LocalFileSystem())


def replace_file(src: StagePath, dst: StagePath) -> None:
    """Move the file ``src`` to ``dst`` on one filesystem, replacing it: ``os.replace`` locally,
    the filesystem's move elsewhere (a rename where it has one, a copy and delete on object
    stores, where the object appears whole either way)."""
    if isinstance(src, RemotePath) and isinstance(dst, RemotePath):
        src.fs.move(src.path, dst.path)
        return
    if isinstance(src, RemotePath) or isinstance(dst, RemotePath):
        raise ValueError(f"cannot move {src} to {dst}: not on one filesystem")
    os.replace(src, dst)


def relative(path: StagePath, base: StagePath) -> str:
    """``path`` under ``base`` as a relative POSIX path (both on one filesystem)."""
    if isinstance(path, RemotePath) and isinstance(base, RemotePath):
        return path.relative_to(base).as_posix()
    if isinstance(path, RemotePath) or isinstance(base, RemotePath):
        raise ValueError(f"{path} is not under {base}: not on one filesystem")
    return path.relative_to(base).as_posix()
