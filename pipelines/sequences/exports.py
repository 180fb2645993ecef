"""Exports of the sequence stage in the formats other codebases read.

- EIDP/BLADE split files (``train.txt``, ``valid.txt``, ``between_val_test.txt``, ``test.txt``):
  lines ``user,item,b1..bB`` from the eidp protocol, ids 1-based dense, behaviors in registry order;
- RecBole atomic ``<dataset>.inter``: tab-separated with a ``field:type`` header;
- RecBole benchmark files ``<dataset>.{train,valid,test}.inter`` for one protocol, so RecBole
  (``benchmark_filename: [train, valid, test]``) trains and evaluates on exactly our split:
  sequential datasets in RecBole read pre-built histories from such files (``item_id_list``) and skip
  their own leave-last-out, so the valid/test rows carry our targets and our (filtered) histories,
  and the train rows every training prefix, as RecBole's own augmentation would make them;
- GAMER-style JSON: per user the item list, behavior-name lists and session list.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl

from pipelines.layout import RELEASE_SPLIT_FILES
from pipelines.registry import DatasetConfig
from pipelines.storage import write_text_atomic
from schemas import columns as c

RECBOLE_HEADER = ("user_id:token", "item_id_list:token_seq", "item_id:token")


def _bits(cfg: DatasetConfig) -> list[pl.Expr]:
    return [((pl.col(c.BEHAVIORS) & (1 << i)) != 0).cast(pl.UInt8).alias(f"b{i + 1}")
            for i in range(len(cfg.behaviors))]


def blade_split_files(steps: pl.DataFrame, roles: pl.DataFrame, cfg: DatasetConfig, out: Path) -> dict[str, int]:
    """Write the four split files; excluded steps are not exported. Returns lines per file."""
    joined = steps.join(roles, on=[c.USER_ID, "step"]).sort(c.USER_ID, "step")
    counts = {}
    for role, name in RELEASE_SPLIT_FILES.items():
        part = joined.filter(pl.col("role") == role).select(
            (pl.col(c.USER_ID).cast(pl.Int64) + 1).alias("user"), (pl.col(c.ITEM_ID).cast(pl.Int64) + 1).alias("item"),
            *_bits(cfg))
        text = part.write_csv(include_header=False) if part.height else ""
        write_text_atomic(text, out / name)
        counts[name] = part.height
    return counts


def recbole_inter(steps: pl.DataFrame, cfg: DatasetConfig, path: Path) -> Path:
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
    write_text_atomic(frame.write_csv(separator="\t"), path)
    return path


def recbole_benchmark(steps: pl.DataFrame, roles: pl.DataFrame, examples: pl.DataFrame, cfg: DatasetConfig,
                      max_len: int, path_of: Callable[[str], Path]) -> dict[str, int]:
    """One RecBole benchmark file per role (``path_of(role)``); returns rows per file.

    Items are dense ``item_id`` tokens; a history is the last ``max_len`` steps before the target,
    oldest first, with the leakage filter's dropped steps removed (the same windows as the
    model-ready arrays).
    """
    from pipelines.sequences.model_ready import build

    train = steps.join(roles.filter(pl.col("role") == "train"), on=[c.USER_ID, "step"], how="semi",
                       maintain_order="left")
    # train steps are a prefix of every user's sequence, so step k's history is train steps [0, k)
    prefixes = train.filter(pl.col("step") > 0).select(
        c.USER_ID, pl.col("step").alias("history_end"), c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP,
        pl.lit([], pl.List(pl.UInt32)).alias("dropped_steps"))
    counts = {}
    for role, ex in (("train", prefixes), ("valid", examples.filter(pl.col("role") == "valid")),
                     ("test", examples.filter(pl.col("role") == "test"))):
        a = build(steps, ex, max_len)
        history = (pl.Series(a["items"]).arr.to_list().list.eval(pl.element().filter(pl.element() > 0) - 1)
                   .list.eval(pl.element().cast(pl.String)).list.join(" "))
        frame = pl.DataFrame({RECBOLE_HEADER[0]: a["user_ids"], RECBOLE_HEADER[1]: history,
                              RECBOLE_HEADER[2]: a["target_items"] - 1})
        # RecBole cannot hold an empty history (it indexes the last position), so such examples are left out
        kept = frame.filter(pl.col(RECBOLE_HEADER[1]) != "")
        write_text_atomic(kept.write_csv(separator="\t"), path_of(role))
        counts[path_of(role).name] = kept.height
        if role != "train":
            counts[f"{role}_examples_with_empty_history_left_out"] = frame.height - kept.height
    return counts


def gamer_json(steps: pl.DataFrame, cfg: DatasetConfig, path: Path) -> Path:
    """{"<user_id>": {"items": [...], "behaviors": [["pv", "cart"], ...], "sessions": [...]}} in sequence order."""
    names = cfg.behavior_names
    as_list = pl.concat_list(
        [pl.when((pl.col(c.BEHAVIORS) & (1 << i)) != 0).then(pl.lit(n)) for i, n in enumerate(names)]
    ).list.drop_nulls()
    grouped = steps.sort(c.USER_ID, "step").with_columns(as_list.alias("__names")).group_by(
        c.USER_ID, maintain_order=True).agg(pl.col(c.ITEM_ID).alias("items"), pl.col("__names").alias("behaviors"),
                                            pl.col("session").alias("sessions"))
    doc = {str(r[c.USER_ID]): {k: r[k] for k in ("items", "behaviors", "sessions")} for r in grouped.iter_rows(named=True)}
    write_text_atomic(json.dumps(doc, separators=(",", ":")), path)
    return path
