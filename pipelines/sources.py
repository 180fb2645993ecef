"""Where a dataset's raw files come from: data/raw/<dataset>/ if it holds files, else the generator."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.layout import INGEST_FILES
from pipelines.registry import DatasetConfig
from pipelines.storage import DatasetPaths, has_raw_files, write_text_atomic

SPEC_FILE = ".synthetic_spec.json"
SOURCE_FILE = INGEST_FILES["source"]  # published with the ingest outputs: what they were built from


class SourceError(RuntimeError):
    """The raw files are gone or unreadable where real outputs exist: never fall back silently."""


@dataclass(frozen=True)
class RawSource:
    directory: Path
    kind: str  # "raw" (user files) or "synthetic" (generated)
    description: str
    files: dict[str, dict[str, object]]  # name -> {bytes, sha256?}

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "description": self.description, "files": self.files},
                          indent=1, sort_keys=True) + "\n"


def previous_source_kind(paths: DatasetPaths) -> str | None:
    """What the published ingest outputs were built from ("raw" / "synthetic"), None if none exist."""
    f = paths.source()
    try:
        return json.loads(f.read_text()).get("kind") if f.is_file() else None
    except (OSError, ValueError):
        return None


def resolve_raw_source(
    cfg: DatasetConfig, paths: DatasetPaths, *, log: Callable[[str], None] = print, hash_limit_bytes: int = 256 << 20,
    allow_synthetic: bool = False,
) -> RawSource:
    """Use the user's raw files when present; otherwise generate synthetic files (cached by spec).

    Generated data stands in only for a dataset that has never been built from real files: when
    the published outputs came from raw files and ``data/raw/<dataset>/`` holds none (folder
    removed, a directory or a broken link under the file's name), this fails naming the path,
    unless ``allow_synthetic``.
    """
    unreadable = [p for p in (paths.raw_dir / f for f in cfg.all_file_names)
                  if (p.exists() or p.is_symlink()) and not p.is_file()]
    if unreadable:  # the user meant to give real files: say what is wrong with them
        raise SourceError(f"dataset '{cfg.name}': {', '.join(map(str, unreadable))} "
                          f"{'is' if len(unreadable) == 1 else 'are'} not a readable file (a folder or a broken link)")
    if has_raw_files(paths.raw_dir):
        return RawSource(paths.raw_dir, "raw", f"raw files in {_rel(paths.raw_dir, paths)}",
                         _describe(paths.raw_dir, cfg, hash_limit_bytes, _known_hashes(paths)))
    if previous_source_kind(paths) == "raw" and not allow_synthetic:
        expected = ", ".join(str(paths.raw_dir / f) for f in cfg.all_file_names)
        raise SourceError(
            f"dataset '{cfg.name}': {paths.raw_dir} holds no readable raw file (expected {expected}), but the "
            f"published outputs in {paths.ingest_dir()} were built from real files. Refusing to replace them "
            "with generated data: restore the raw files, or run with ingest config {allow_synthetic: true} "
            "(Dagster run config of the ingest op) to replace them on purpose.")
    from pipelines.synthetic import SyntheticSpec, write_synthetic

    import pipelines.synthetic as generator

    spec = SyntheticSpec(**cfg.synthetic.model_dump())
    # the cache key includes a hash of the generator's source: a changed generator regenerates
    code = hashlib.sha256(Path(generator.__file__).read_bytes()).hexdigest()[:16]
    spec_json = json.dumps({"format": cfg.format, "generator": code, **cfg.synthetic.model_dump()}, sort_keys=True)
    marker = paths.generated_dir / SPEC_FILE
    cached = marker.is_file() and marker.read_text() == spec_json and all(
        (paths.generated_dir / f).is_file() for f in cfg.all_file_names
    )
    if not cached:
        log(f"{cfg.name}: {paths.raw_dir} holds no files; generating synthetic {cfg.format} data "
            f"({spec.users} users, {spec.items} items, seed {spec.seed}) in {paths.generated_dir}")
        write_synthetic(cfg.format, paths.generated_dir, spec, progress=log)
        write_text_atomic(spec_json, marker)
    else:
        log(f"{cfg.name}: {paths.raw_dir} holds no files; reusing generated data in {paths.generated_dir}")
    return RawSource(
        paths.generated_dir, "synthetic",
        f"synthetic {cfg.format} data (seed {spec.seed}, {spec.users} users, {spec.items} items): "
        f"{_rel(paths.raw_dir, paths)} holds no files",
        _describe(paths.generated_dir, cfg, hash_limit_bytes),
    )


def _rel(path: Path, paths: DatasetPaths) -> str:
    """A path relative to the data root: what source.json records (no machine-specific prefix)."""
    return str(path.relative_to(paths.root)) if path.is_relative_to(paths.root) else str(path)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _known_hashes(paths: DatasetPaths) -> dict[str, tuple[tuple[int, str, str], str]]:
    """Raw files the published ingest already hashed: name -> ((size, head, tail), sha256).

    A refresh that only adds daily files must not re-read every old file to describe it: a file whose
    fingerprint (size, SHA-256 of its first and last 64 KiB) equals the recorded one keeps its recorded
    hash. (The fingerprint's blind spot, a same-size edit in the middle of a large file, is the one
    incremental ingest has too: force a full rebuild after such an edit.)"""
    try:
        source = json.loads(paths.source().read_text())["files"]
        state = json.loads(paths.ingest_state().read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    for entry in state:
        info = source.get(entry.get("name"), {})
        if "sha256" in info:
            out[entry["name"]] = ((int(entry["size"]), str(entry["head"]), str(entry["tail"])), str(info["sha256"]))
    return out


def _describe(directory: Path, cfg: DatasetConfig, hash_limit_bytes: int,
              known: dict[str, tuple[tuple[int, str, str], str]] | None = None) -> dict[str, dict[str, object]]:
    from pipelines.ingest.core import matching_files
    from pipelines.ingest.fingerprints import fingerprint

    out: dict[str, dict[str, object]] = {}
    for p in (p for pattern in cfg.all_file_names for p in matching_files(directory, pattern)):
        name = p.name
        size = p.stat().st_size
        info: dict[str, object] = {"bytes": size}
        if size <= hash_limit_bytes:
            recorded = (known or {}).get(name)
            if recorded is not None:
                fp = fingerprint(p)
                if (fp.size, fp.head, fp.tail) == recorded[0]:
                    info["sha256"] = recorded[1]
                    out[name] = info
                    continue
            info["sha256"] = _sha256_file(p)
        out[name] = info
    return out
