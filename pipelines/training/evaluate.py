"""Full-ranking evaluation of a ``Recommender`` on model-ready arrays, overall and per target behavior.

Policies: one target per example; ranks are pessimistic (ties count against the target); with
``mask_history = m > 0`` the last m history items of each row are removed from its ranking (the
target never is); ``mask_history = 0`` masks nothing (RecBole's convention for sequential models).
Models without full ranking (``full_ranking = False``) return a best-first list of ``beam_k`` items;
a target outside it has rank ``metrics.MISS`` (MRR truncated at ``beam_k``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.training.batches import batch_rows, n_examples, to_batch
from pipelines.training.metrics import pessimistic_ranks, ranks_from_lists, summarize
from pipelines.training.models.base import Batch, Recommender


@dataclass
class EvaluationResult:
    """``ranks`` [N] int64 and ``target_behaviors`` [N] bitmasks, row-aligned with the arrays;
    ``metrics`` over all rows; ``per_behavior[name]`` over the rows whose target bitmask has that
    behavior's bit (a multi-behavior target counts in each of its behaviors; behaviors without
    examples are absent); ``mask_history``: how many last history items were masked (0 = none)."""

    ranks: np.ndarray
    target_behaviors: np.ndarray
    metrics: dict[str, float]
    per_behavior: dict[str, dict[str, float]]
    mask_history: int


def evaluate(model: Recommender, arrays: dict[str, np.ndarray], behavior_names: list[str], *,
             batch_size: int = 128, mask_history: int = 0, ks: Sequence[int] = (5, 10, 20),
             beam_k: int | None = None) -> EvaluationResult:
    """Rank every example's target with ``model`` (in eval mode, without gradients) and summarize.

    Full-ranking models: ``pessimistic_ranks(model.score(batch), target)``. Others:
    ``ranks_from_lists(model.rank(batch, beam_k or max(ks)), target)``; masked items leave holes in
    that list, so with ``mask_history`` pass a ``beam_k`` large enough to keep ``max(ks)`` items.
    Rows are scored in batches of similar history length, each trimmed to its longest history
    (``batches.to_batch``); ranks come back in row order, equal to those of padded batches.
    """
    if mask_history < 0:
        raise ValueError(f"mask_history must be >= 0, got {mask_history}")
    list_k = beam_k or max(ks)
    if not model.full_ranking and list_k < max(ks):
        raise ValueError(f"beam_k = {beam_k} < max(ks) = {max(ks)}: HR/NDCG@{max(ks)} would be understated")
    model.eval()
    ranks = np.zeros(n_examples(arrays), dtype=np.int64)
    # rows in length order, each batch trimmed to its longest history (models read positions from the
    # right and mask padding: the same scores without the padding's work); ranks go back to row order
    by_length = batch_rows(len(ranks), batch_size, shuffle=False, seed=0, lengths=arrays["lengths"],
                           length_pools=max(1, -(-len(ranks) // batch_size)))
    with torch.no_grad():
        for rows in by_length:
            batch = to_batch(arrays, rows, model.device, trim=True)
            ranks[rows] = _batch_ranks(model, batch, mask_history, list_k).cpu().numpy()
    target_behaviors = np.asarray(arrays["target_behaviors"], dtype=np.int64)
    return EvaluationResult(ranks=ranks, target_behaviors=target_behaviors, metrics=summarize(ranks, ks),
                            per_behavior=per_behavior(ranks, target_behaviors, behavior_names, ks),
                            mask_history=mask_history)


def per_behavior(ranks: np.ndarray, target_behaviors: np.ndarray, behavior_names: list[str],
                 ks: Sequence[int] = (5, 10, 20)) -> dict[str, dict[str, float]]:
    """``summarize`` over the rows whose target bitmask has bit i, for each i-th behavior name with rows."""
    out: dict[str, dict[str, float]] = {}
    for bit, name in enumerate(behavior_names):
        rows = (target_behaviors >> bit) & 1 == 1
        if rows.any():
            out[name] = summarize(ranks[rows], ks)
    return out


def history_exclusions(items: torch.Tensor, mask_history: int) -> torch.Tensor:
    """[B, m] 0-based item ids of the last m history steps (-1 on padding), from left-padded
    ``items`` (item_id + 1)."""
    return items[:, -mask_history:] - 1


def _batch_ranks(model: Recommender, batch: Batch, mask_history: int, list_k: int) -> torch.Tensor:
    targets = batch["target_items"] - 1
    exclude = history_exclusions(batch["items"], mask_history) if mask_history > 0 else None
    if model.full_ranking:
        return pessimistic_ranks(model.score(batch), targets, exclude)
    return ranks_from_lists(model.rank(batch, list_k), targets, exclude)
