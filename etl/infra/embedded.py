"""A private PostgreSQL under the project directory, for when no database URL is given.

The cluster lives in ``<project>/.etl/pg/``::

    .etl/pg.lock          flock: one process at a time creates, starts or stops the server
    .etl/pg/data/         the cluster (PGDATA); settings in data/etl.conf
    .etl/pg/server.log    the server's log (pg_ctl -l)
    .etl/pg/initdb.log    what initdb said
    .etl/pg/state.json    port, binaries and version last used

The server listens on 127.0.0.1 only, on a port of its own (never the system server's 5432), with
trust authentication for the superuser ``postgres``; the toolkit's data goes into database ``etl``.

PostgreSQL refuses to run as root. When the toolkit runs as root, the server runs as the ``postgres``
account (or ``ETL_EMBEDDED_USER``) and ``.etl/pg`` is owned by it. If that account cannot reach the
project directory (a parent folder closed to others, like pytest's ``/tmp/pytest-of-root``), the data
lives in its home instead (``~postgres/etl-embedded/<project>-<hash>``) and ``.etl/pg`` is a symlink
to it, so every path above still works from the project.

Binaries are searched in ``ETL_PG_BINDIR``, ``pg_config --bindir``, the usual install folders
(``/usr/lib/postgresql/*/bin``, ``/usr/pgsql-*/bin``, Homebrew), ``PATH``, and last in the ``pgserver``
wheel if it is installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from etl.config import find_pyproject
from etl.infra.errors import EmbeddedError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: The superuser initdb creates, and the user in the returned URL.
SUPERUSER = "postgres"
#: The database the toolkit loads into.
DATABASE = "etl"
#: The OS account the server runs as when the toolkit runs as root.
SERVER_ACCOUNT = os.environ.get("ETL_EMBEDDED_USER", "postgres")
#: Seconds to wait for another process that holds the lock, and for the server to start or stop.
TIMEOUT = 120.0

#: Server settings for bulk loading on a small machine (written to data/etl.conf; ALTER SYSTEM
#: still overrides them). fsync stays on: this is a real database.
SETTINGS: dict[str, str | int] = {
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "shared_buffers": "256MB",
    "maintenance_work_mem": "256MB",
    "work_mem": "32MB",
    "max_wal_size": "4GB",
    "min_wal_size": "256MB",
    "checkpoint_timeout": "15min",
    "wal_level": "minimal",
    "max_wal_senders": 0,
    "max_parallel_maintenance_workers": 2,
}

_REQUIRED = ("initdb", "pg_ctl", "postgres")
_INSTALL_HINT = ("install PostgreSQL server binaries (apt install postgresql, or pip install "
                 "'etl-staging[server]' for a wheel that ships them; ETL_PG_BINDIR names their folder), "
                 "or pass --database-url / set ETL_DATABASE_URL")


# ------------------------------------------------------------------------------ where things are


def project_root(start: Path | None = None) -> Path:
    """The folder of the nearest pyproject.toml at or above ``start`` (the working directory),
    else ``start`` itself."""
    found = find_pyproject(start)
    return found.parent if found is not None else (start or Path.cwd()).resolve()


@dataclass(frozen=True, slots=True)
class _Paths:
    root: Path
    #: ``.etl/pg``, or once it exists its real path (what the server's account is given).
    base: Path

    @property
    def etl_dir(self) -> Path:
        return self.root / ".etl"

    @property
    def lock(self) -> Path:
        return self.etl_dir / "pg.lock"

    @property
    def link(self) -> Path:
        return self.etl_dir / "pg"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    @property
    def initdb_log(self) -> Path:
        return self.base / "initdb.log"

    @property
    def state(self) -> Path:
        return self.base / "state.json"


def _paths(root: Path | None) -> _Paths:
    """Where the project's cluster is; ``base`` resolved through the symlink if there is one."""
    root = (root or project_root()).resolve()
    link = root / ".etl" / "pg"
    return _Paths(root, link.resolve() if link.is_symlink() else link)


def _created(paths: _Paths) -> bool:
    return paths.link.is_symlink() or paths.link.exists()


def url_for(port: int) -> str:
    """The URL of the embedded server's ``etl`` database on ``port``."""
    return f"postgresql://{SUPERUSER}@{HOST}:{port}/{DATABASE}"


# ------------------------------------------------------------------------------ the server's account


@dataclass(frozen=True, slots=True)
class _Account:
    name: str
    uid: int
    gid: int
    home: Path
    #: Whether processes must switch to this account (the toolkit runs as root).
    switch: bool


def _account() -> _Account:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return _Account(me.pw_name, me.pw_uid, me.pw_gid, Path(me.pw_dir), switch=False)
    try:
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise EmbeddedError(
            f"running as root, and there is no {SERVER_ACCOUNT!r} account to run PostgreSQL as "
            "(it refuses to run as root)",
            hint="create one (useradd --system --create-home postgres; apt install postgresql does), "
                 "set ETL_EMBEDDED_USER to another account, run etl as a normal user, or pass "
                 "--database-url") from None
    if entry.pw_uid == 0:
        raise EmbeddedError(f"the server account {SERVER_ACCOUNT!r} is root; PostgreSQL refuses that",
                            hint="set ETL_EMBEDDED_USER to an unprivileged account")
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), switch=True)


def _env(account: _Account) -> dict[str, str]:
    # PG* variables (PGPORT, PGDATA, PGHOST…) of the caller must not steer the private server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and not k.startswith("LC_")}
    env.update(HOME=str(account.home), USER=account.name, LOGNAME=account.name, LC_ALL="C")
    env.setdefault("PATH", os.defpath)
    return env


def _run(cmd: list[str], account: _Account, *, timeout: float,
         new_session: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as the server's account (no shell; output captured)."""
    switch: dict[str, Any] = (
        {"user": account.uid, "group": account.gid, "extra_groups": []} if account.switch else {})
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=_env(account), cwd="/", timeout=timeout,
                              start_new_session=new_session, check=False, **switch)
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s",
                            hint="look at the server log, then try again") from exc
    except OSError as exc:
        raise EmbeddedError(f"cannot run {cmd[0]}: {exc}", hint=_INSTALL_HINT) from exc


def _chown(path: Path, account: _Account) -> None:
    if account.switch:
        os.chown(path, account.uid, account.gid)


def _usable_by(path: Path, account: _Account) -> bool:
    """Whether the server's account can enter and write ``path`` (every parent must let it through)."""
    if not account.switch:
        return os.access(path, os.W_OK | os.X_OK)
    test = shutil.which("test") or "/usr/bin/test"
    return _run([test, "-w", str(path), "-a", "-x", str(path)], account, timeout=30).returncode == 0


def _prepare_base(paths: _Paths, account: _Account) -> _Paths:
    """Make ``.etl/pg`` (owned by the server's account); the paths with its real location."""
    paths.etl_dir.mkdir(parents=True, exist_ok=True)
    link = paths.link
    if _created(paths):
        if not paths.base.is_dir():
            raise EmbeddedError(f"{link} is not a folder (or links to a missing one)",
                                file=link, hint=f"remove {link} and run this again")
        return paths
    link.mkdir(mode=0o700)
    try:
        _chown(link, account)
        if _usable_by(link, account):
            return paths
    except OSError as exc:
        log.debug("cannot hand %s to %s: %s", link, account.name, exc)
    link.rmdir()
    # The account cannot reach the project: keep the cluster in its home, linked from the project.
    digest = hashlib.sha256(str(paths.root).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", paths.root.name)[:40] or "project"
    home = account.home / "etl-embedded"
    external = home / f"{slug}-{digest}"
    for folder in (home, external):
        folder.mkdir(mode=0o700, exist_ok=True)
        _chown(folder, account)
    if not _usable_by(external, account):
        raise EmbeddedError(
            f"the server account {account.name!r} can reach neither {paths.root} nor {external}",
            file=link,
            hint=f"let {account.name} through the project's parent folders (chmod o+x), or pass "
                 "--database-url")
    (external / "PROJECT").write_text(f"{paths.root}\n")
    link.symlink_to(external, target_is_directory=True)
    log.info("the account %s cannot reach %s; the embedded cluster lives in %s (linked from %s)",
             account.name, paths.root, external, link)
    return _Paths(paths.root, external)


# ------------------------------------------------------------------------------ binaries


@dataclass(frozen=True, slots=True)
class _Binaries:
    bindir: Path
    version: str  # "15.20"

    def __getitem__(self, name: str) -> str:
        return str(self.bindir / name)


def _candidate_dirs() -> Iterator[Path]:
    if os.environ.get("ETL_PG_BINDIR"):
        yield Path(os.environ["ETL_PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30,
                                 check=False)
            if out.returncode == 0 and out.stdout.strip():
                yield Path(out.stdout.strip())

    def newest_first(pattern: str) -> list[str]:
        def key(p: str) -> tuple[int, ...]:
            return tuple(int(n) for n in re.findall(r"\d+", p))
        return sorted(glob.glob(pattern), key=key, reverse=True)

    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin",
                    "/usr/local/opt/postgresql@*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/bin"):
        yield from map(Path, newest_first(pattern))
    for name in _REQUIRED:
        found = shutil.which(name)
        if found:
            yield Path(found).resolve().parent
    try:  # the pgserver wheel ships the server; used only when nothing else is installed
        spec = find_spec("pgserver")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        yield Path(spec.origin).parent / "pginstall" / "bin"


def _version(bindir: Path) -> str | None:
    if not all(os.access(bindir / name, os.X_OK) for name in _REQUIRED):
        return None
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out.stdout)
    return match.group(1) if out.returncode == 0 and match else None


def find_binaries(*, major: str | None = None) -> tuple[Path, str]:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres`` and their version (``"15.20"``).

    With ``major``, only binaries of that major version (an existing cluster's) qualify."""
    found = _find_binaries(major=major)
    return found.bindir, found.version


def _find_binaries(*, major: str | None) -> _Binaries:
    seen: set[Path] = set()
    others: list[str] = []
    for bindir in _candidate_dirs():
        if bindir in seen:
            continue
        seen.add(bindir)
        version = _version(bindir)
        if version is None:
            continue
        if major is None or version.split(".", 1)[0] == major:
            return _Binaries(bindir, version)
        others.append(f"{version} in {bindir}")
    if major is not None and others:
        raise EmbeddedError(
            f"the embedded cluster was made by PostgreSQL {major}, and only other versions are "
            f"installed ({'; '.join(others)})",
            hint=f"install PostgreSQL {major} server binaries (or set ETL_PG_BINDIR), or move .etl/pg "
                 "away to start an empty cluster (pg_upgrade can carry the data over)")
    raise EmbeddedError("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found", hint=_INSTALL_HINT)


# ------------------------------------------------------------------------------ the running server


@dataclass(frozen=True, slots=True)
class _Postmaster:
    pid: int
    port: int | None
    status: str  # "starting", "ready", "stopping" or "" (see postmaster.pid)


def _alive(pid: int, data: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) PostgreSQL process serving ``data``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():  # no procfs: trust the pid file, as pg_ctl does
        return True
    try:
        stat = (proc / "stat").read_text()
        if stat[stat.rindex(")") + 2:].startswith("Z"):
            return False
    except (OSError, ValueError):
        return False
    # A pid reused after a reboot or container restart belongs to another program (or server):
    # every PostgreSQL process works in its data directory.
    try:
        return Path(os.readlink(proc / "cwd")) == data.resolve()
    except OSError:  # not ours to inspect
        cmdline = (proc / "cmdline").read_bytes() if os.access(proc / "cmdline", os.R_OK) else b""
        return b"postgres" in cmdline or b"postmaster" in cmdline


def _postmaster(data: Path) -> _Postmaster | None:
    """The server that holds ``data``, from its postmaster.pid, if it is alive."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid, data):
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    status = lines[7].strip() if len(lines) > 7 else ""
    return _Postmaster(pid, port, status)


def _answers(port: int, *, dbname: str = "postgres") -> bool:
    import psycopg

    try:
        with psycopg.connect(host=HOST, port=port, user=SUPERUSER, dbname=dbname, connect_timeout=3,
                             autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _wait_for_running(paths: _Paths, data: Path) -> int | None:
    """The port of a live server on ``data`` that answers; ``None`` if there is none (or it is
    shutting down). Waits while it starts."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        pm = _postmaster(data)
        if pm is None:
            return None
        if pm.status == "ready" and pm.port is not None and _answers(pm.port):
            return pm.port
        if time.monotonic() > deadline:
            raise EmbeddedError(f"the embedded server (pid {pm.pid}) runs but does not answer",
                                file=paths.log_file,
                                hint="read the log; `etl db stop` then `etl db start` restarts it")
        time.sleep(0.2)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL binds
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_port(root: Path, *, avoid: int | None = None) -> int:
    """A free port: one derived from the project path (the same each time), else any."""
    first = 54330 + int(hashlib.sha256(str(root).encode()).hexdigest(), 16) % 500
    for port in range(first, first + 20):
        if port != avoid and _port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    return port


def _read_state(paths: _Paths) -> dict[str, Any]:
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(paths: _Paths, **values: Any) -> None:
    state = _read_state(paths) | values
    tmp = paths.state.with_name(paths.state.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(paths.state)


def _log_tail(path: Path, *, since: int = 0, lines: int = 8) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    wanted = [ln for ln in text.splitlines() if re.search(r"FATAL|ERROR|PANIC|could not", ln)]
    return "\n".join((wanted or text.splitlines())[-lines:])


# ------------------------------------------------------------------------------ create, configure, start


def _locale() -> str:
    """``C.UTF-8`` for character classes when the OS has it; collation stays ``C`` (fast, stable)."""
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "C"
    names = {ln.strip().lower().replace("-", "") for ln in out.stdout.splitlines()}
    return "C.UTF-8" if "c.utf8" in names else "C"


def _initdb(paths: _Paths, data: Path, bins: _Binaries, account: _Account) -> None:
    log.info("creating the embedded PostgreSQL %s cluster in %s", bins.version, data)
    cmd = [bins["initdb"], "--pgdata", str(data), "--username", SUPERUSER, "--auth", "trust",
           "--encoding", "UTF8", "--locale", _locale(), "--lc-collate", "C"]
    done = _run(cmd, account, timeout=TIMEOUT)
    paths.initdb_log.write_text(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise EmbeddedError(f"initdb failed: {tail}", file=paths.initdb_log,
                            hint=f"read {paths.initdb_log}; remove {paths.data} and run this again")
    conf = data / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write("\n# Settings of the etl toolkit's embedded server (port, bulk-load tuning).\n"
                 "include_if_exists = 'etl.conf'\n")


def _write_conf(data: Path, port: int, account: _Account) -> None:
    def value(v: str | int) -> str:
        return str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'"

    conf = data / "etl.conf"
    body = "".join(f"{k} = {value(v)}\n" for k, v in {"port": port, **SETTINGS}.items())
    conf.write_text("# Written by etl (etl/embedded.py) on every start; ALTER SYSTEM overrides it.\n" + body)
    conf.chmod(0o600)
    _chown(conf, account)


def _start(paths: _Paths, data: Path, bins: _Binaries, account: _Account, port: int) -> int:
    """Start the server; on a port taken meanwhile, once more on another. Returns the port."""
    for attempt in (1, 2):
        _write_conf(data, port, account)
        since = paths.log_file.stat().st_size if paths.log_file.exists() else 0
        log.info("starting the embedded PostgreSQL %s on %s:%d", bins.version, HOST, port)
        done = _run([bins["pg_ctl"], "start", "--pgdata", str(data), "--log", str(paths.log_file),
                     "--wait", "--timeout", str(int(TIMEOUT)), "--silent"],
                    account, timeout=TIMEOUT + 10, new_session=True)
        if done.returncode == 0:
            return port
        tail = _log_tail(paths.log_file, since=since) or (done.stderr or done.stdout).strip()
        if attempt == 1 and re.search(r"could not (bind|create listen)|already in use", tail):
            log.warning("port %d was taken; trying another", port)
            port = _pick_port(paths.root, avoid=port)
            continue
        raise EmbeddedError(f"the embedded PostgreSQL did not start: {tail}", file=paths.log_file,
                            hint=f"read {paths.log_file}, fix the cause, then run `etl db start` again")
    raise AssertionError("unreachable")


def _ensure_database(port: int) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=HOST, port=port, user=SUPERUSER, dbname="postgres", autocommit=True,
                         connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            log.info("creating database %s", DATABASE)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))


@contextlib.contextmanager
def _locked(paths: _Paths) -> Iterator[None]:
    """Hold ``.etl/pg.lock``: one process at a time creates, starts or stops the server."""
    try:
        paths.etl_dir.mkdir(parents=True, exist_ok=True)
        fh = paths.lock.open("a")
    except OSError as exc:
        raise EmbeddedError(f"cannot write the embedded server's lock file: {exc}", file=paths.lock,
                            hint="run etl in a project directory you can write to, or pass "
                                 "--database-url") from exc
    with fh:
        deadline = time.monotonic() + TIMEOUT
        waited = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for another etl process that starts or stops the embedded server")
                    waited = True
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"another process has held {paths.lock} for {TIMEOUT:.0f} s",
                                        file=paths.lock,
                                        hint="wait for the other etl command to finish, then run this "
                                             "again") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cluster_major(data: Path) -> str | None:
    try:
        return (data / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None


# ------------------------------------------------------------------------------ the public functions


def ensure_started(root: Path | None = None) -> str:
    """Start (or reuse) the project's private server and return its URL.

    Creates the cluster on first use under ``<root>/.etl/pg/`` (``root`` defaults to
    :func:`project_root`), starts it if it is not running, makes database ``etl`` and returns
    ``postgresql://postgres@127.0.0.1:<port>/etl``. Safe to call from several processes at once.

    Raises:
        EmbeddedError: no server binaries, initdb failed, or the server does not start or answer.
    """
    paths = _paths(root)
    with _locked(paths):
        account = _account()
        paths = _prepare_base(paths, account)
        data = paths.data
        port = _wait_for_running(paths, data)
        if port is None:
            major = _cluster_major(data)
            bins = _find_binaries(major=major)
            if major is None:
                _initdb(paths, data, bins, account)
            stale = data / "postmaster.pid"
            if stale.exists():  # its process is gone (or is another program now): not ours to honour
                log.warning("removing the stale %s", stale)
                stale.unlink()
            wanted = _read_state(paths).get("port")
            port = wanted if isinstance(wanted, int) and _port_free(wanted) else _pick_port(paths.root)
            port = _start(paths, data, bins, account, port)
            _write_state(paths, port=port, bindir=str(bins.bindir), version=bins.version,
                         user=account.name, data_dir=str(data))
            log.info("embedded PostgreSQL %s runs on %s:%d (data in %s)", bins.version, HOST, port, data)
        _ensure_database(port)
        return url_for(port)


def stop(root: Path | None = None) -> bool:
    """Stop the project's private server (fast shutdown: sessions are ended, data is kept).

    Returns:
        Whether it was running.

    Raises:
        EmbeddedError: it did not stop in time.
    """
    paths = _paths(root)
    if not _created(paths):
        return False
    with _locked(paths):
        data = paths.data
        pm = _postmaster(data)
        if pm is None:
            return False
        log.info("stopping the embedded PostgreSQL (pid %d)", pm.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pm.pid, signal.SIGINT)  # what `pg_ctl stop -m fast` sends
        deadline = time.monotonic() + TIMEOUT
        while _postmaster(data) is not None:
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the embedded PostgreSQL (pid {pm.pid}) did not stop within "
                                    f"{TIMEOUT:.0f} s", file=paths.log_file,
                                    hint=f"read the log; `kill -QUIT {pm.pid}` stops it at once "
                                         "(it recovers on the next start)")
            time.sleep(0.1)
        return True


def status(root: Path | None = None) -> dict[str, Any]:
    """What the project's private server is: ``exists``, ``running``, ``port``, ``url``, ``pid``,
    ``version``, ``data_dir``, ``log_file``, ``user``. Starts nothing."""
    paths = _paths(root)
    created = _created(paths)
    data = paths.data
    state = _read_state(paths) if created else {}
    pm = _postmaster(data) if created else None
    port = pm.port if pm is not None and pm.port else state.get("port")
    return {
        "exists": _cluster_major(data) is not None,
        "running": pm is not None,
        "ready": pm is not None and pm.status == "ready",
        "port": port,
        "url": url_for(port) if port else None,
        "pid": pm.pid if pm is not None else None,
        "version": state.get("version") or _cluster_major(data),
        "data_dir": str(data),
        "log_file": str(paths.log_file),
        "user": state.get("user"),
        "project_dir": str(paths.root),
    }


def remove(root: Path | None = None) -> bool:
    """Stop the private server and delete its cluster (and the folder it links to). Returns whether
    there was one. The data is gone afterwards: the next :func:`ensure_started` starts empty."""
    paths = _paths(root)
    if not _created(paths):
        return False
    stop(paths.root)
    with _locked(paths):
        if paths.link.is_symlink():
            paths.link.unlink()
        shutil.rmtree(paths.base, ignore_errors=True)
        if paths.base.parent.name == "etl-embedded":
            with contextlib.suppress(OSError):
                paths.base.parent.rmdir()  # only if no other project's cluster is there
    log.info("removed the embedded cluster of %s", paths.root)
    return True
