"""Where a dataset's raw files come from: data/raw/<dataset>/ if it holds files, else the generator."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.registry import DatasetConfig
from pipelines.storage import DatasetPaths, has_raw_files, write_text_atomic

SPEC_FILE = ".synthetic_spec.json"


@dataclass(frozen=True)
class RawSource:
    directory: Path
    kind: str  # "raw" (user files) or "synthetic" (generated)
    description: str
    files: dict[str, dict[str, object]]  # name -> {bytes, sha256?}


def resolve_raw_source(
    cfg: DatasetConfig, paths: DatasetPaths, *, log: Callable[[str], None] = print, hash_limit_bytes: int = 256 << 20
) -> RawSource:
    """Use the user's raw files when present; otherwise generate synthetic files (cached by spec)."""
    if has_raw_files(paths.raw_dir):
        return RawSource(paths.raw_dir, "raw", f"raw files in {paths.raw_dir}",
                         _describe(paths.raw_dir, cfg, hash_limit_bytes))
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
        f"{paths.raw_dir} holds no files",
        _describe(paths.generated_dir, cfg, hash_limit_bytes),
    )


def _describe(directory: Path, cfg: DatasetConfig, hash_limit_bytes: int) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name in cfg.all_file_names:
        p = directory / name
        if not p.is_file():
            continue
        info: dict[str, object] = {"bytes": p.stat().st_size}
        if p.stat().st_size <= hash_limit_bytes:
            info["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        out[name] = info
    return out
