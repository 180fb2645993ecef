from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipelines.ingest.core import ingest_dataset
from pipelines.registry import DatasetConfig, load_registry


@pytest.fixture(scope="session")
def registry():
    return load_registry()


def with_options(cfg: DatasetConfig, **ingest_options) -> DatasetConfig:
    return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update=ingest_options)})


def write(directory: Path, name: str, text: str, newline: str = "\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def run_ingest(cfg: DatasetConfig, raw: Path, out: Path, **kw):
    summary = ingest_dataset(cfg, raw, out, log=lambda _: None, **kw)
    tables = {name: pl.read_parquet(out / f"{name}.parquet")
              for name in ("events", "user_id_map", "item_id_map", "item_side_info", "quarantine")}
    return summary, tables
