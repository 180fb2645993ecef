"""Batches (``models/base.py`` format) from the model-ready numpy arrays (``sequences/model_ready.py``).

Histories are left-padded to the stage's ``max_len``. With ``trim`` a batch keeps only the columns
from its longest history on: every model reads positions right-aligned (the last column is always
position ``max_len - 1``) and masks padding, so a trimmed batch gives the same outputs for every
real step while skipping the padding's work. Evaluation always trims (no randomness there). In
training a narrower batch also draws fewer random numbers (dropout masks, augmentations), which
changes the rest of the run's random stream, so training trims only with ``length_pools``: rows
sorted by length within pools of that many batches, so that a batch's rows have similar lengths
and trimming pays (the usual "group by length"); the batches' order is still shuffled.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pipelines.training.models.base import Batch

BATCH_KEYS = ("items", "behaviors", "lengths", "target_items", "target_behaviors", "user_ids")
HISTORY_KEYS = ("items", "behaviors")  # the [N, L] arrays a trimmed batch narrows


def n_examples(arrays: dict[str, np.ndarray]) -> int:
    """Number of examples (rows) in the arrays."""
    return int(len(arrays["target_items"]))


def to_batch(arrays: dict[str, np.ndarray], rows: np.ndarray | slice, device: torch.device | str, *,
             trim: bool = False) -> Batch:
    """The selected rows as int64 tensors on ``device``, one per ``BATCH_KEYS`` entry; other array keys
    (``time_gaps``, ``sessions``, ...) are ignored. ``trim``: drop the leading columns that are padding
    (item 0) in every selected row, keeping at least the last column."""
    missing = [k for k in BATCH_KEYS if k not in arrays]
    if missing:
        raise KeyError(f"model-ready arrays lack {missing}; present: {sorted(arrays)}")
    picked = {k: arrays[k][rows] for k in BATCH_KEYS}
    if trim and picked["items"].ndim == 2 and picked["items"].shape[1] > 1:
        real_columns = picked["items"].any(axis=0)
        first = int(real_columns.argmax()) if real_columns.any() else picked["items"].shape[1] - 1
        for k in HISTORY_KEYS:
            picked[k] = picked[k][:, first:]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)).to(device) for k, v in picked.items()}


def batch_rows(n: int, batch_size: int, *, shuffle: bool, seed: int, lengths: np.ndarray | None = None,
               length_pools: int = 0) -> list[np.ndarray]:
    """Row indices of each batch of ``batch_size`` (the last one of a pool may be smaller).

    ``shuffle``: rows in the order ``np.random.default_rng(seed).permutation(n)``; otherwise file order
    and ``seed`` is unused. ``length_pools = p > 0`` (needs ``lengths``): that order is cut into pools
    of ``p * batch_size`` rows, each pool is sorted by length (stable), cut into batches, and, when
    shuffling, the batches are put in an order drawn from the same generator. Same seed, same batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if length_pools < 0:
        raise ValueError(f"length_pools must be >= 0, got {length_pools}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if not length_pools:
        return [order[start:start + batch_size] for start in range(0, n, batch_size)]
    if lengths is None:
        raise ValueError("length_pools needs the rows' lengths")
    pool = length_pools * batch_size
    out: list[np.ndarray] = []
    for start in range(0, n, pool):
        rows = order[start:start + pool]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        out.extend(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
    if shuffle:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def iterate(arrays: dict[str, np.ndarray], batch_size: int, *, shuffle: bool, seed: int,
            device: torch.device | str, length_pools: int = 0, trim: bool = False) -> Iterator[Batch]:
    """The batches of ``batch_rows`` (see there for ``shuffle``, ``seed`` and ``length_pools``), trimmed
    to their longest history when ``trim``."""
    for rows in batch_rows(n_examples(arrays), batch_size, shuffle=shuffle, seed=seed,
                           lengths=arrays.get("lengths"), length_pools=length_pools):
        yield to_batch(arrays, rows, device, trim=trim)
