"""An object-store data root: a local working copy kept in step with the store around every step.

``MBREC_DATA_ROOT=s3://bucket/prefix`` (or any other fsspec URL: ``gs://``, ``az://``, ...) makes the
store the data root that every machine shares. Stages still read and write a POSIX folder, the
working copy (``MBREC_WORK_DIR``, default ``~/.cache/mbrec/work/<hash of the URL>``), because they
publish by atomic rename and a symbolic-link switch under a per-dataset lock. Around every Dagster
step (``assets/object_store.py``):

- **pull** brings the step's scopes (its dataset's ``raw/``, ``generated/`` and ``outputs/``
  folders) down: objects whose ETag changed since this copy last saw them are downloaded (temporary
  name, then rename; the modification time is the object's), link objects become symbolic links
  (after their version folder is down), and files deleted in the store are deleted here if they
  were not changed here.
- **push** sends what the step published: new or changed files first, then one small link object
  per symbolic link whose target changed (``<name>.mbrec-link``, holding the name of the version
  folder), then deletes the objects of files that are gone here (a pruned old version). A reader of
  the store therefore follows the link object to a version folder that is already complete: one PUT
  of a link object is the publish, as the rename of the symbolic link is on a file system. A push
  that fails fails the step.

What is never sent: hidden names (temporary files, staging folders, the lock) except the version
folders of a published stage (``.<name>.v-<id>`` beside the link ``<name>``: the current one and the
previous one, which a stage keeps for readers that resolved the link just before a switch), and
``cache/`` (rebuilt wherever needed). What this copy last
synchronised (size, modification time and ETag of every file, every link) is kept in
``<work dir>/.mbrec-remote/state.json``; one process at a time syncs a working copy (a file lock).

Across machines, one writer per dataset is the run queue's limit (one run per dataset, in the
committed instance settings and the Helm values); within a run, steps write different stage folders.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DATA_ROOT_ENV = "MBREC_DATA_ROOT"  # the data root: a folder, a file:// URL or an object-store URL
LINK_SUFFIX = ".mbrec-link"
STATE_DIR = ".mbrec-remote"
WORK_DIR_ENV = "MBREC_WORK_DIR"
STORAGE_OPTIONS_ENV = "MBREC_STORAGE_OPTIONS"  # JSON passed to fsspec, e.g. {"endpoint_url": ...}


class ObjectStoreError(RuntimeError):
    """The store could not be reached or holds something this pipeline did not write."""


def is_object_store_url(value: str) -> bool:
    scheme = urlparse(value).scheme if "://" in value else ""
    return bool(scheme) and scheme != "file"


def work_dir_for(url: str) -> Path:
    """The local working copy of an object-store data root."""
    if os.environ.get(WORK_DIR_ENV):
        return Path(os.environ[WORK_DIR_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mbrec" / "work" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def dataset_scopes(dataset: str) -> list[str]:
    """What a step of one dataset reads and writes, relative to the data root."""
    return [f"raw/{dataset}", f"generated/{dataset}", f"outputs/{dataset}"]


@dataclass
class SyncReport:
    direction: str
    files: int = 0  # transferred (downloaded or uploaded)
    bytes: int = 0
    links: int = 0
    deleted: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    moved: list[str] = field(default_factory=list)  # the first few paths transferred

    def describe(self) -> str:
        what = "downloaded" if self.direction == "pull" else "uploaded"
        return (f"{self.direction}: {self.files} file(s) {what} ({self.bytes / 1e6:.1f} MB), {self.links} link(s) "
                f"switched, {self.deleted} deleted, {self.unchanged} unchanged, {self.seconds:.1f} s")


def _split(scope: str) -> tuple[str, frozenset[str] | None]:
    """``"outputs/d/shards/map:bucket-0003.parquet,map_report.json"`` -> the folder and the names wanted
    in it (None: all of it)."""
    base, _, names = scope.partition(":")
    return base.strip("/"), (frozenset(n for n in names.split(",") if n) if names else None)


def _matches(rel: str, scope: str) -> bool:
    """Whether ``rel`` belongs to ``scope``: the path itself, below it, a sibling that extends its
    name (``<scope>.mbrec-link``, ``leaderboard.md`` for ``leaderboard``), or its version folders;
    with names after a colon, only the files of those names in it (and its link)."""
    base, names = _split(scope)
    parent, _, name = base.rpartition("/")
    inside = rel.startswith(base + "/") or rel.startswith(f"{parent}/.{name}.v-" if parent else f".{name}.v-")
    if names is not None:
        return rel == base + LINK_SUFFIX or (inside and rel.rpartition("/")[2] in names)
    return inside or rel == base or rel.startswith(base + ".")


def _mtime_ns(info: dict[str, Any]) -> int:
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return int(value.timestamp()) * 1_000_000_000
        if isinstance(value, (int, float)):
            return int(value * 1_000_000_000)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()) * 1_000_000_000
            except ValueError:
                continue
    return time.time_ns()


def _etag(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "content_md5"):
        if info.get(key):
            return str(info[key]).strip('"')
    return f"{info.get('size')}:{_mtime_ns(info)}"


class RemoteRoot:
    """An fsspec store (``url``) mirrored by a local folder (``local``)."""

    def __init__(self, url: str, local: Path, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.local = Path(local)
        scheme = urlparse(self.url).scheme
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as e:
            raise ObjectStoreError(f"data root {self.url}: no file system for {scheme}:// ({e}); for s3:// install "
                                   f"s3fs (pip install -e '.[cluster]')") from e
        self.base = self.base.rstrip("/")

    # ----------------------------------------------------------------------------- paths
    def _abs(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _rel(self, absolute: str) -> str:
        absolute = absolute.rstrip("/")
        prefix = self.base + "/"
        if not absolute.startswith(prefix):
            raise ObjectStoreError(f"{absolute} is not below {self.base}")
        return absolute[len(prefix):]

    def published_at_ns(self, rel: str) -> int | None:
        """When the versioned folder ``rel`` was last published to the store (its link object's
        modification time), or None when it never was."""
        self.fs.invalidate_cache()
        try:
            return _mtime_ns(self.fs.info(self._abs(rel + LINK_SUFFIX)))
        except FileNotFoundError:
            return None

    # ----------------------------------------------------------------------------- state
    @contextmanager
    def _state(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The sync record, held under the working copy's lock; written back when the block ends."""
        state_dir = self.local / STATE_DIR
        state_dir.mkdir(parents=True, exist_ok=True)
        with (state_dir / "lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = state_dir / "state.json"
            state = json.loads(path.read_text()) if path.exists() else {}
            state.setdefault("url", self.url)
            if state["url"] != self.url:
                raise ObjectStoreError(f"{self.local} is the working copy of {state['url']}, not {self.url}; "
                                       f"set {WORK_DIR_ENV} to another folder")
            state.setdefault("files", {})
            state.setdefault("links", {})
            try:
                yield state
            finally:
                tmp = state_dir / f".state.{uuid.uuid4().hex}.tmp"
                tmp.write_text(json.dumps(state, sort_keys=True))
                os.replace(tmp, path)

    # ----------------------------------------------------------------------------- listings
    def _find(self, rel: str) -> dict[str, dict[str, Any]]:
        try:
            found = self.fs.find(self._abs(rel), detail=True)
        except FileNotFoundError:
            return {}
        return {self._rel(name): info for name, info in found.items() if info.get("type") != "directory"}

    def list_remote(self, scopes: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Every object of the scopes, by path relative to the root."""
        self.fs.invalidate_cache()
        out: dict[str, dict[str, Any]] = {}
        for scope in scopes:
            base, _ = _split(scope)
            parent, _, name = base.rpartition("/")
            out.update(self._find(base))
            try:
                siblings = self.fs.ls(self._abs(parent), detail=True)
            except FileNotFoundError:
                continue
            for entry in siblings:
                rel = self._rel(entry["name"])
                leaf = rel.rpartition("/")[2]
                if entry.get("type") == "directory":
                    if leaf.startswith(f".{name}.v-"):
                        out.update(self._find(rel))
                elif leaf.startswith(name + ".") and leaf != name:
                    out[rel] = entry
        return {rel: info for rel, info in out.items() if any(_matches(rel, s) for s in scopes)}

    def list_local(self, scopes: Iterable[str]) -> tuple[dict[str, Path], dict[str, str]]:
        """(files, links) of the scopes in the working copy: hidden names are skipped except the
        version folders a link points at."""
        files: dict[str, Path] = {}
        links: dict[str, str] = {}

        def walk(directory: Path, rel_dir: str) -> None:
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                return
            published = _version_folder_test(entries)
            for e in sorted(entries, key=lambda e: e.name):
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                if e.is_symlink():
                    links[rel] = os.readlink(e.path)
                elif e.name.startswith(".") and not published(e.name):
                    continue
                elif e.is_dir():
                    walk(Path(e.path), rel)
                elif e.is_file():
                    files[rel] = Path(e.path)

        for scope in scopes:
            parent = _split(scope)[0].rpartition("/")[0]
            parent_dir = self.local / parent
            if not parent_dir.is_dir():
                continue
            entries = list(os.scandir(parent_dir))
            published = _version_folder_test(entries)
            for e in entries:
                rel = f"{parent}/{e.name}" if parent else e.name
                if not _matches(rel, _split(scope)[0]):
                    continue
                if e.is_symlink():
                    links[rel] = os.readlink(e.path)
                elif e.name.startswith(".") and not published(e.name):
                    continue
                elif e.is_dir():
                    walk(Path(e.path), rel)
                elif e.is_file():
                    files[rel] = Path(e.path)
        wanted = lambda rel: any(_matches(rel, s) for s in scopes)  # noqa: E731
        return {r: p for r, p in files.items() if wanted(r)}, {r: t for r, t in links.items() if wanted(r + LINK_SUFFIX)}

    # ----------------------------------------------------------------------------- pull
    def pull(self, scopes: list[str], log: Callable[[str], None] = print) -> SyncReport:
        started = time.perf_counter()
        report = SyncReport("pull")
        scopes = [s.strip("/") for s in scopes]
        with self._state() as state:
            remote = self.list_remote(scopes)
            link_objects = {rel[: -len(LINK_SUFFIX)]: info for rel, info in remote.items() if rel.endswith(LINK_SUFFIX)}
            objects = {rel: info for rel, info in remote.items() if not rel.endswith(LINK_SUFFIX)}
            todo = {}
            for rel, info in sorted(objects.items()):
                record = state["files"].get(rel)
                if record and record[2] == _etag(info) and _same_stat(self.local / rel, record):
                    report.unchanged += 1
                else:
                    todo[rel] = info
            self._download(todo, state, log)
            report.files = len(todo)
            report.bytes = sum(int(info.get("size") or 0) for info in todo.values())
            report.moved = list(todo)[:10]
            for rel, info in sorted(link_objects.items()):
                target = self.fs.cat_file(self._abs(rel + LINK_SUFFIX)).decode().strip()
                if "/" in target or not target.startswith("."):
                    raise ObjectStoreError(f"{self._abs(rel + LINK_SUFFIX)}: a link object must name a version folder "
                                           f"beside it, not {target!r}")
                path = self.local / rel
                if path.is_symlink() and os.readlink(path) == target:
                    state["links"][rel] = target
                    continue
                if not (path.parent / target).is_dir():
                    raise ObjectStoreError(f"{self._abs(rel + LINK_SUFFIX)} points at {target}, which the store does "
                                           f"not hold (a publish was interrupted?)")
                _switch_link(path, target)
                state["links"][rel] = target
                report.links += 1
            # gone from the store: delete here what this copy still holds as it was synchronised
            for rel in [r for r in state["files"] if any(_matches(r, s) for s in scopes) and r not in objects]:
                path = self.local / rel
                if _same_stat(path, state["files"][rel]):
                    path.unlink()
                    _remove_empty_parents(path.parent, self.local)
                    report.deleted += 1
                del state["files"][rel]
            for rel in [r for r in state["links"] if any(_matches(r + LINK_SUFFIX, s) for s in scopes) and r not in link_objects]:
                path = self.local / rel
                if path.is_symlink() and os.readlink(path) == state["links"][rel]:
                    path.unlink()
                    report.deleted += 1
                del state["links"][rel]
        report.seconds = time.perf_counter() - started
        if report.files or report.links or report.deleted:
            log(f"{self.url} -> {self.local}: {report.describe()}")
        return report

    def _download(self, todo: dict[str, dict[str, Any]], state: dict[str, Any], log: Callable[[str], None]) -> None:
        """Fetch ``todo`` in one batch (the driver runs the transfers concurrently) into temporary
        names, then rename each into place with the object's modification time."""
        if not todo:
            return
        _say_size(log, "downloading", {rel: int(info.get("size") or 0) for rel, info in todo.items()})
        paths = {rel: self.local / rel for rel in todo}
        tmps = {rel: path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp") for rel, path in paths.items()}
        for rel, path in paths.items():
            if path.is_dir() and not path.is_symlink():
                raise ObjectStoreError(f"{path} is a folder here and a file in the store")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get([self._abs(rel) for rel in todo], [str(tmps[rel]) for rel in todo])
            for rel, info in todo.items():
                mtime = _mtime_ns(info)
                os.utime(tmps[rel], ns=(mtime, mtime))
                os.replace(tmps[rel], paths[rel])
                stat = paths[rel].stat()
                state["files"][rel] = [stat.st_size, stat.st_mtime_ns, _etag(info)]
        finally:
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------- push
    def push(self, scopes: list[str], log: Callable[[str], None] = print) -> SyncReport:
        started = time.perf_counter()
        report = SyncReport("push")
        scopes = [s.strip("/") for s in scopes]
        with self._state() as state:
            files, links = self.list_local(scopes)
            todo = {}
            for rel, path in sorted(files.items()):
                record = state["files"].get(rel)
                if record and _same_stat(path, record):
                    report.unchanged += 1
                else:
                    todo[rel] = path.stat()
            if todo:
                _say_size(log, "uploading", {rel: stat.st_size for rel, stat in todo.items()})
                # one batch (concurrent in the driver), then one listing for the ETags the store gave them
                self.fs.put([str(files[rel]) for rel in todo], [self._abs(rel) for rel in todo])
                listed = self.list_remote(scopes)
                for rel, stat in todo.items():
                    if rel not in listed:
                        raise ObjectStoreError(f"{self._abs(rel)} was uploaded but the store does not list it")
                    state["files"][rel] = [stat.st_size, stat.st_mtime_ns, _etag(listed[rel])]
            report.files = len(todo)
            report.bytes = sum(stat.st_size for stat in todo.values())
            report.moved = list(todo)[:10]
            # the links last: each one publishes a version folder that is now complete in the store
            for rel, target in sorted(links.items()):
                if state["links"].get(rel) == target:
                    continue
                self.fs.pipe_file(self._abs(rel + LINK_SUFFIX), target.encode())
                state["links"][rel] = target
                report.links += 1
            # deleted here since the last sync (an old version pruned): delete in the store
            gone = [r for r in state["files"] if any(_matches(r, s) for s in scopes) and r not in files]
            if gone:
                self._rm([self._abs(r) for r in gone])
                for rel in gone:
                    del state["files"][rel]
                report.deleted += len(gone)
            gone_links = [r for r in state["links"] if any(_matches(r + LINK_SUFFIX, s) for s in scopes) and r not in links]
            if gone_links:
                self._rm([self._abs(r + LINK_SUFFIX) for r in gone_links])
                for rel in gone_links:
                    del state["links"][rel]
                report.deleted += len(gone_links)
        report.seconds = time.perf_counter() - started
        if report.files or report.links or report.deleted:
            log(f"{self.local} -> {self.url}: {report.describe()}")
        return report

    def _rm(self, paths: list[str]) -> None:
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass


BIG_TRANSFER = 64 << 20  # a batch at least this large says what it moves before it starts


def _say_size(log: Callable[[str], None], verb: str, sizes: dict[str, int]) -> None:
    total = sum(sizes.values())
    if total >= BIG_TRANSFER:
        largest = max(sizes, key=lambda rel: sizes[rel])
        log(f"{verb} {len(sizes)} file(s), {total / 1e6:,.0f} MB (largest {largest}, {sizes[largest] / 1e6:,.0f} MB) ...")


def _version_folder_test(entries: list[os.DirEntry]) -> Callable[[str], bool]:
    """Which hidden names of a folder are version folders of a published stage: ``.<link>.v-<id>``
    beside the link ``<link>`` (the current one and the previous one the stage keeps for readers)."""
    prefixes = tuple(f".{e.name}.v-" for e in entries if e.is_symlink())
    return lambda name: bool(prefixes) and name.startswith(prefixes)


def _same_stat(path: Path, record: list[Any]) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (record[0], record[1])


def _remove_empty_parents(directory: Path, root: Path) -> None:
    """Remove ``directory`` and its parents below ``root`` while they are empty (a deleted version)."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:  # not empty, or already gone
            return
        directory = directory.parent


def _switch_link(path: Path, target: str) -> None:
    if path.exists() and not path.is_symlink():
        raise ObjectStoreError(f"{path} is a folder here and a link in the store; move it away")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.link-{uuid.uuid4().hex[:12]}")
    os.symlink(target, tmp)
    os.replace(tmp, path)


def remote_root(value: str) -> RemoteRoot | None:
    """The store behind a data-root setting (None for a path or ``file://`` URL); one per process and
    working copy."""
    if not value or not is_object_store_url(value):
        return None
    return _remote_root(value, str(work_dir_for(value)), os.environ.get(STORAGE_OPTIONS_ENV) or "{}")


@lru_cache(maxsize=8)
def _remote_root(url: str, local: str, options: str) -> RemoteRoot:
    try:
        parsed = json.loads(options)
    except ValueError as e:
        raise ObjectStoreError(f"{STORAGE_OPTIONS_ENV} is not JSON: {e}") from e
    return RemoteRoot(url, Path(local), parsed)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.remote pull|push DATASET...``: synchronise datasets' folders by hand (to read
    published outputs on a laptop, or to send a hand-placed raw file), with ``$MBREC_DATA_ROOT``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipelines.remote", description=main.__doc__)
    ap.add_argument("direction", choices=("pull", "push"))
    ap.add_argument("datasets", nargs="+", help="dataset names (their raw/, generated/ and outputs/ folders)")
    args = ap.parse_args(argv)
    remote = remote_root(os.environ.get(DATA_ROOT_ENV, ""))
    if remote is None:
        ap.error(f"{DATA_ROOT_ENV} is not an object-store URL (it is {os.environ.get(DATA_ROOT_ENV)!r})")
    scopes = [s for name in args.datasets for s in dataset_scopes(name)]
    report = (remote.pull if args.direction == "pull" else remote.push)(scopes, log=lambda _m: None)
    print(f"{remote.url} <-> {remote.local}: {report.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
