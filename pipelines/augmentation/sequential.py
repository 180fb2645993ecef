"""GAMER-style sequential augmentation of training sequences.

View k of x (k = 1..x, ratio r = k/x) removes each behavior below the vocabulary's top level from
each training set with probability r / (level + 1); a step whose set becomes empty is dropped.
Top-level behaviors (the targets, e.g. buy) are never removed, items never change, and only
training steps are inputs, so valid/test targets and their histories cannot change.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.registry import DatasetConfig
from schemas import columns as c


def drop_probabilities(cfg: DatasetConfig, ratio: float) -> np.ndarray:
    """Per behavior bit: r / (level + 1) below the top level, 0 at the top level."""
    top = max(b.level for b in cfg.behaviors)
    return np.array([0.0 if b.level == top else ratio / (b.level + 1) for b in cfg.behaviors])


def sequential_views(train_steps: pl.DataFrame, cfg: DatasetConfig, views: int, seed: int,
                     shard: int = 0) -> pl.DataFrame:
    """All ``views`` augmented copies of the given training steps (view, ratio + the step columns).

    ``shard`` keys the random stream so a shard's output does not depend on other shards.
    """
    if views < 1:
        raise ValueError(f"sequential augmentation needs at least one view, got {views}")
    masks = train_steps[c.BEHAVIORS].to_numpy().astype(np.int64)
    bits = 1 << np.arange(len(cfg.behaviors))
    out = []
    for k in range(1, views + 1):
        ratio = k / views
        rng = np.random.default_rng([seed, shard, k])
        p = drop_probabilities(cfg, ratio)
        remove = (rng.random((len(masks), len(bits))) < p) & ((masks[:, None] & bits) != 0)
        new = masks & ~(remove * bits).sum(axis=1)
        keep = new != 0
        out.append(train_steps.filter(pl.Series(keep)).with_columns(
            pl.Series(c.BEHAVIORS, new[keep].astype(np.uint16)),
        ).select(pl.lit(k, pl.UInt8).alias("view"), pl.lit(ratio, pl.Float32).alias("ratio"), pl.all()))
    return pl.concat(out)
