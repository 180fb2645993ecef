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


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a bijection of uint64 that spreads every input bit over the output."""
    z = z.copy()
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def row_uniforms(seed: int, view: int, user: np.ndarray, step: np.ndarray, n_bits: int) -> np.ndarray:
    """[rows, n_bits] uniforms in [0, 1), each a function of (seed, view, user, step, bit) only.

    A counter-based draw (SplitMix64 over the row's key) instead of one random stream per call: a
    step's draws do not depend on which other rows are processed with it, so the views are the same
    whatever the user ranges (``rows_per_shard``), and a refresh that moves the ranges does not
    change the views of users whose steps did not change."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed) * _GOLDEN + np.uint64(view))
        key = _mix(key ^ (user.astype(np.uint64) << np.uint64(32) | step.astype(np.uint64)))
        bits = _mix(key[:, None] + (np.arange(1, n_bits + 1, dtype=np.uint64) * _GOLDEN)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def sequential_views(train_steps: pl.DataFrame, cfg: DatasetConfig, views: int, seed: int) -> pl.DataFrame:
    """All ``views`` augmented copies of the given training steps (view, ratio + the step columns),
    in the steps' order, a step's views together (so user-ordered steps give a user-ordered table).

    Each behavior of each step is dropped by its own draw (``row_uniforms``), so a step's views
    depend only on the step, the view and the seed, not on the other rows processed with it."""
    if views < 1:
        raise ValueError(f"sequential augmentation needs at least one view, got {views}")
    masks = train_steps[c.BEHAVIORS].to_numpy().astype(np.int64)
    user = train_steps[c.USER_ID].to_numpy()
    step = train_steps["step"].to_numpy()
    bits = 1 << np.arange(len(cfg.behaviors))
    out = []
    for k in range(1, views + 1):
        ratio = k / views
        p = drop_probabilities(cfg, ratio)
        remove = (row_uniforms(seed, k, user, step, len(bits)) < p) & ((masks[:, None] & bits) != 0)
        new = masks & ~(remove * bits).sum(axis=1)
        keep = new != 0
        out.append(train_steps.with_row_index("__row").filter(pl.Series(keep)).with_columns(
            pl.Series(c.BEHAVIORS, new[keep].astype(np.uint16)),
        ).select(pl.lit(k, pl.UInt8).alias("view"), pl.lit(ratio, pl.Float32).alias("ratio"), pl.all()))
    return pl.concat(out).sort("__row", maintain_order=True).drop("__row")
