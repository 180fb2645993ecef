"""Batches (``models/base.py`` format) from the model-ready numpy arrays (``sequences/model_ready.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pipelines.training.models.base import Batch

BATCH_KEYS = ("items", "behaviors", "lengths", "target_items", "target_behaviors", "user_ids")


def n_examples(arrays: dict[str, np.ndarray]) -> int:
    """Number of examples (rows) in the arrays."""
    return int(len(arrays["target_items"]))


def to_batch(arrays: dict[str, np.ndarray], rows: np.ndarray | slice, device: torch.device | str) -> Batch:
    """The selected rows as int64 tensors on ``device``, one per ``BATCH_KEYS`` entry; other array keys
    (``time_gaps``, ``sessions``, ...) are ignored."""
    missing = [k for k in BATCH_KEYS if k not in arrays]
    if missing:
        raise KeyError(f"model-ready arrays lack {missing}; present: {sorted(arrays)}")
    return {k: torch.from_numpy(np.ascontiguousarray(arrays[k][rows], dtype=np.int64)).to(device) for k in BATCH_KEYS}


def iterate(arrays: dict[str, np.ndarray], batch_size: int, *, shuffle: bool, seed: int,
            device: torch.device | str) -> Iterator[Batch]:
    """Consecutive batches of ``batch_size`` rows (the last one may be smaller).

    ``shuffle``: rows in the order ``np.random.default_rng(seed).permutation(n)`` (same seed, same
    order); otherwise file order and ``seed`` is unused.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = n_examples(arrays)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        yield to_batch(arrays, rows, device)
