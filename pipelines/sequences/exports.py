"""Exports of the sequence stage in the formats other codebases read.

- EIDP/BLADE split files (``train.txt``, ``valid.txt``, ``between_val_test.txt``, ``test.txt``):
  lines ``user,item,b1..bB`` from the eidp protocol, ids 1-based dense, behaviors in registry order;
- RecBole atomic ``<dataset>.inter``: tab-separated with a ``field:type`` header;
- GAMER-style JSON: per user the item list, behavior-name lists and session list.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipelines.registry import DatasetConfig
from pipelines.storage import write_text_atomic
from schemas import columns as c

BLADE_FILES = {"train": "train.txt", "valid": "valid.txt", "between": "between_val_test.txt", "test": "test.txt"}


def _bits(cfg: DatasetConfig) -> list[pl.Expr]:
    return [((pl.col(c.BEHAVIORS) & (1 << i)) != 0).cast(pl.UInt8).alias(f"b{i + 1}")
            for i in range(len(cfg.behaviors))]


def blade_split_files(steps: pl.DataFrame, roles: pl.DataFrame, cfg: DatasetConfig, out: Path) -> dict[str, int]:
    """Write the four split files; excluded steps are not exported. Returns lines per file."""
    joined = steps.join(roles, on=[c.USER_ID, "step"]).sort(c.USER_ID, "step")
    counts = {}
    for role, name in BLADE_FILES.items():
        part = joined.filter(pl.col("role") == role).select(
            (pl.col(c.USER_ID).cast(pl.Int64) + 1).alias("user"), (pl.col(c.ITEM_ID).cast(pl.Int64) + 1).alias("item"),
            *_bits(cfg))
        text = part.write_csv(include_header=False) if part.height else ""
        write_text_atomic(text, out / name)
        counts[name] = part.height
    return counts


def recbole_inter(steps: pl.DataFrame, cfg: DatasetConfig, out: Path) -> Path:
    """RecBole atomic file: user_id:token, item_id:token, timestamp:float (s), behaviors:token_seq, session_id:token."""
    names = cfg.behavior_names
    behaviors = pl.concat_str(
        [pl.when((pl.col(c.BEHAVIORS) & (1 << i)) != 0).then(pl.lit(n)) for i, n in enumerate(names)],
        separator=" ", ignore_nulls=True)
    frame = steps.select(
        pl.col(c.USER_ID).alias("user_id:token"), pl.col(c.ITEM_ID).alias("item_id:token"),
        (pl.col(c.TIMESTAMP) / 1000).alias("timestamp:float") if cfg.time.unit != "none"
        else pl.col("step").cast(pl.Float64).alias("timestamp:float"),
        behaviors.alias("behaviors:token_seq"), pl.col("session").alias("session_id:token"))
    path = out / f"{cfg.name}.inter"
    write_text_atomic(frame.write_csv(separator="\t"), path)
    return path


def gamer_json(steps: pl.DataFrame, cfg: DatasetConfig, out: Path) -> Path:
    """{"<user_id>": {"items": [...], "behaviors": [["pv", "cart"], ...], "sessions": [...]}} in sequence order."""
    names = cfg.behavior_names
    as_list = pl.concat_list(
        [pl.when((pl.col(c.BEHAVIORS) & (1 << i)) != 0).then(pl.lit(n)) for i, n in enumerate(names)]
    ).list.drop_nulls()
    grouped = steps.sort(c.USER_ID, "step").with_columns(as_list.alias("__names")).group_by(
        c.USER_ID, maintain_order=True).agg(pl.col(c.ITEM_ID).alias("items"), pl.col("__names").alias("behaviors"),
                                            pl.col("session").alias("sessions"))
    doc = {str(r[c.USER_ID]): {k: r[k] for k in ("items", "behaviors", "sessions")} for r in grouped.iter_rows(named=True)}
    path = out / f"{cfg.name}.gamer.json"
    write_text_atomic(json.dumps(doc, separators=(",", ":")), path)
    return path
