"""Collaborative item embeddings: a truncated SVD of item co-occurrence in training histories.

Two items co-occur when one user's training steps hold them within ``window`` steps of each other;
the symmetric count matrix is log-scaled (log(1 + count)) and factorized with a seeded randomized
SVD (``torch.svd_lowrank`` on the sparse matrix). Item vectors are U·sqrt(S), L2-normalized; items
never seen in training get zero vectors. Only training steps are used, so nothing of the
validation or test targets leaks into the IDs.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from schemas import columns as c


def cooccurrence_pairs(train_steps: pl.LazyFrame | pl.DataFrame, window: int) -> pl.DataFrame:
    """(a, b, count) with a != b, both directions, from (user_id, step, item_id) rows."""
    lf = train_steps.lazy().select(c.USER_ID, "step", c.ITEM_ID).sort(c.USER_ID, "step")
    parts = []
    for offset in range(1, window + 1):  # a loop over offsets, not rows
        shifted = lf.select(pl.col(c.ITEM_ID).alias("a"), pl.col(c.ITEM_ID).shift(-offset).over(c.USER_ID).alias("b"))
        parts.append(shifted.drop_nulls().filter(pl.col("a") != pl.col("b")))
    pairs = pl.concat(parts)
    both = pl.concat([pairs, pairs.select(pl.col("b").alias("a"), pl.col("a").alias("b"))])
    return both.group_by("a", "b").agg(pl.len().alias("count")).sort("a", "b").collect()


def svd_embeddings(pairs: pl.DataFrame, n_items: int, dims: int, seed: int) -> np.ndarray:
    """[n_items, dims] float32, rows L2-normalized (zero rows for items without co-occurrence)."""
    import torch  # here, not at import: the code location loads this module

    out = np.zeros((n_items, dims), dtype=np.float32)
    if pairs.height == 0 or n_items < 2:
        return out
    q = min(dims, n_items - 1)
    idx = torch.from_numpy(np.stack([pairs["a"].to_numpy().astype(np.int64), pairs["b"].to_numpy().astype(np.int64)]))
    val = torch.log1p(torch.from_numpy(pairs["count"].to_numpy().astype(np.float64)))
    m = torch.sparse_coo_tensor(idx, val, (n_items, n_items), check_invariants=False).coalesce()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(m, q=q, niter=4)
    vec = (u * s.sqrt()).numpy()
    # fix each component's sign (SVD is defined up to sign): largest-magnitude entry positive
    sign = np.sign(vec[np.abs(vec).argmax(0), np.arange(vec.shape[1])])
    vec = vec * np.where(sign == 0, 1, sign)
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    out[:, :q] = np.where(norm > 0, vec / np.where(norm > 0, norm, 1), 0)
    return out
