"""Where each dataset's files live, and atomic writes.

Layout under the data root (default ``data/``):
    raw/<dataset>/          raw files dropped by users (never written by the pipeline)
    generated/<dataset>/    synthetic raw files, used when raw/<dataset>/ is empty
    outputs/<dataset>/<stage>/   materialized tables and reports
Every table is written to a staging folder first and renamed into place only when the whole
stage succeeded, so a failed run never leaves a half-written file or replaces the last good one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import polars as pl

from pipelines.registry import REPO_ROOT

DATA_ROOT_ENV = "MBREC_DATA_ROOT"


def default_data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV) or REPO_ROOT / "data")


@dataclass(frozen=True)
class DatasetPaths:
    root: Path
    dataset: str

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw" / self.dataset

    @property
    def generated_dir(self) -> Path:
        return self.root / "generated" / self.dataset

    def stage_dir(self, stage: str) -> Path:
        return self.root / "outputs" / self.dataset / stage


def has_raw_files(raw_dir: Path) -> bool:
    return raw_dir.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in raw_dir.iterdir())


def write_parquet_atomic(frame: pl.DataFrame | pl.LazyFrame, path: Path) -> Path:
    """Write one parquet file via a temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(tmp, engine="streaming")
        else:
            frame.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class StagedOutputs:
    """Collect a stage's files in a staging folder; publish them together on success.

    >>> with StagedOutputs(out_dir) as staged:
    ...     df.write_parquet(staged.path("events.parquet"))
    ...     staged.publish()
    Leaving the block without ``publish()`` (e.g. on an exception) deletes the staging folder and
    leaves the previous outputs untouched.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:12]}"
        self._published = False

    def __enter__(self) -> "StagedOutputs":
        self.staging.mkdir(parents=True)
        return self

    def path(self, name: str) -> Path:
        return self.staging / name

    def publish(self) -> dict[str, Path]:
        """Rename every staged file into the output folder; files not staged this time are kept."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        published = {}
        for f in sorted(self.staging.iterdir()):
            if f.name.startswith("_"):  # scratch files, never published
                continue
            target = self.out_dir / f.name
            os.replace(f, target)
            published[f.name] = target
        self._published = True
        return published

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
