"""Behavior-level augmentations (BLADE paper definitions) over batches of multi-hot sequences.

Every operator takes ``x``: int [N, L, B] multi-hot behavior sets (all-zero rows are padding),
picks each non-padding step independently with probability ``ratio`` (rho), changes only the
behavior sets of picked steps, and returns a new array (``x`` is never modified). Items and
targets are not inputs, so they cannot change. Randomness comes only from ``rng`` (seeded).

Where BLADE's released code differs from its paper, we follow the paper:
- its co-occurrence addition is a no-op (or crashes on numpy 2); here it adds a behavior;
- its cap meant to protect click from masking compares against raw counts, so click is never
  masked; here every behavior, click included, is masked with its probability from m^c.
No operator empties a set: a draw that would leaves the step as it was.
"""

from __future__ import annotations

import numpy as np


def _picked(x: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return x.any(axis=-1) & (rng.random(x.shape[:2]) < ratio)


def cooccurrence_addition(x: np.ndarray, M: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """For each picked step with set b: p = b . M, zero the behaviors already present, normalize,
    sample one behavior from p and add it (steps whose p is all zero are left unchanged)."""
    picked = _picked(x, ratio, rng)
    p = x.astype(np.float64) @ M.astype(np.float64)
    p[x.astype(bool)] = 0.0
    total = p.sum(axis=-1)
    cdf = np.cumsum(p, axis=-1) / np.where(total > 0, total, 1.0)[..., None]
    u = rng.random(x.shape[:2])
    choice = np.minimum((u[..., None] >= cdf).sum(axis=-1), x.shape[-1] - 1)
    add = picked & (total > 0)
    out = x.copy()
    n, l_ = np.nonzero(add)
    out[n, l_, choice[add]] = 1
    return out


def frequency_masking(x: np.ndarray, mask_prob: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """For each picked step, drop each present behavior i with probability mask_prob[i] (m^c normalized)."""
    picked = _picked(x, ratio, rng)
    drop = rng.random(x.shape) < np.asarray(mask_prob)[None, None, :]
    masked = np.where(drop, 0, x)
    apply = picked & masked.any(axis=-1)
    return np.where(apply[..., None], masked, x).astype(x.dtype)


def auxiliary_flipping(x: np.ndarray, auxiliary: list[int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """For each picked step, flip the auxiliary behaviors' bits (e.g. click 1 -> 0, 0 -> 1)."""
    picked = _picked(x, ratio, rng)
    flipped = x.copy()
    flipped[..., auxiliary] = 1 - flipped[..., auxiliary]
    apply = picked & flipped.any(axis=-1)
    return np.where(apply[..., None], flipped, x).astype(x.dtype)
