"""Full-ranking metrics with one target per evaluation case.

Policies (README, "Training and evaluation"):

- **Ranks start at 1.** The target's rank among all items, never sampled negatives.
- **Ties count against the target** (pessimistic): an item scoring exactly the target's score is
  ranked ahead of it, so a constant scorer gets the worst rank, not an arbitrary ``topk`` order.
- **History masking** is optional: ``exclude`` lists item ids removed from the ranking per row; the
  target itself is never removed, even when it occurs in ``exclude``.
- **Ranked lists** (generative models, top-k only): a target that is not in the list gets rank
  ``MISS``, so HR@k and NDCG@k are exact for k up to the list length, and MRR is MRR truncated at the
  list length (a missing target contributes 0 instead of 1/true_rank).

Item ids are 0-based here (column ``j`` of a score matrix is item ``j``); the model-ready arrays
store ``item_id + 1``, the caller subtracts 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MISS = 2**31 - 1  # rank of a target absent from a ranked list (top-k evaluation)

RankArray = np.ndarray | torch.Tensor


def pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of each row's target among all items, ties counted against the target.

    ``rank_b = 1 + |{ j : j != t_b, j not excluded in row b, s_bj >= s_bt_b }|``

    ``scores`` [B, N] (column j = item j), ``targets`` [B] item ids in [0, N), ``exclude`` optional
    [B, L] item ids to drop from row b's ranking (-1 = nothing; the target is never dropped).
    Returns int64 [B] on the scores' device. Raises ``ValueError`` on NaN scores or targets out of range.
    """
    if scores.dim() != 2 or targets.dim() != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(f"expected scores [B, N] and targets [B], got {tuple(scores.shape)} and {tuple(targets.shape)}")
    targets = targets.to(device=scores.device, dtype=torch.int64)
    if scores.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    _check_targets(targets, scores.shape[1])
    nan_rows = torch.isnan(scores).any(dim=1)
    if bool(nan_rows.any()):
        raise ValueError(f"NaN scores in {int(nan_rows.sum())} of {scores.shape[0]} rows "
                         f"(first row {int(nan_rows.nonzero()[0, 0])}); a model produced NaN, check its training loss")
    target_scores = scores.gather(1, targets[:, None])
    ahead = scores >= target_scores  # includes the target itself
    if exclude is not None:
        ahead &= ~_exclusion_mask(exclude.to(scores.device), targets, scores.shape[1])
    return ahead.sum(dim=1)  # the target counts itself once: = 1 + items ahead


def ranks_from_lists(ranked: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Position (from 1) of each row's target in a best-first list of item ids, ``MISS`` when absent.

    Before counting, the list is cleaned: -1 entries (empty slots), excluded items (``exclude`` as in
    ``pessimistic_ranks``; never the target) and repeats of an item already listed earlier are removed:
    ``rank_b = |{ i <= p_b : ranked_bi kept }|`` with ``p_b`` the first position of ``t_b``.
    A list of length k truncates MRR at k (absent targets add 0). Returns int64 [B].
    """
    if ranked.dim() != 2 or targets.dim() != 1 or ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"expected ranked [B, k] and targets [B], got {tuple(ranked.shape)} and {tuple(targets.shape)}")
    ranked = ranked.to(torch.int64)
    targets = targets.to(device=ranked.device, dtype=torch.int64)
    n_rows, k = ranked.shape
    if n_rows == 0 or k == 0:
        return torch.full((n_rows,), MISS, dtype=torch.int64, device=ranked.device)
    keep = ranked >= 0
    earlier = torch.ones(k, k, dtype=torch.bool, device=ranked.device).tril(diagonal=-1)  # [i, i'] : i' < i
    repeated = ((ranked[:, :, None] == ranked[:, None, :]) & earlier).any(dim=2)
    keep &= ~repeated
    if exclude is not None:
        exclude = exclude.to(device=ranked.device, dtype=torch.int64)
        drop = (exclude >= 0) & (exclude != targets[:, None])  # [B, L]
        excluded = ((ranked[:, :, None] == exclude[:, None, :]) & drop[:, None, :]).any(dim=2)
        keep &= ~excluded
    is_target = (ranked == targets[:, None]) & keep
    position = torch.cumsum(keep.to(torch.int64), dim=1)
    found = is_target.any(dim=1)
    first = is_target.to(torch.int8).argmax(dim=1)  # first True; 0 when absent (masked below)
    rank = position.gather(1, first[:, None]).squeeze(1)
    return torch.where(found, rank, torch.full_like(rank, MISS))


def hit_rate(ranks: RankArray, k: int) -> float:
    """HR@k = mean over cases of [rank <= k]. 0.0 for no cases."""
    r = _as_numpy(ranks)
    return float(np.mean(r <= k)) if r.size else 0.0


def ndcg(ranks: RankArray, k: int) -> float:
    """NDCG@k with one relevant item = mean over cases of 1 / log2(rank + 1) if rank <= k else 0
    (the ideal DCG is 1). 0.0 for no cases."""
    r = _as_numpy(ranks)
    if not r.size:
        return 0.0
    gains = np.where(r <= k, 1.0 / np.log2(np.minimum(r, k).astype(np.float64) + 1.0), 0.0)
    return float(gains.mean())


def mrr(ranks: RankArray) -> float:
    """MRR = mean over cases of 1 / rank, with 0 for ``MISS`` (truncated at the list length for
    ranked-list evaluation). 0.0 for no cases."""
    r = _as_numpy(ranks)
    if not r.size:
        return 0.0
    return float(np.where(r >= MISS, 0.0, 1.0 / r.astype(np.float64)).mean())


def summarize(ranks: RankArray, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """``{"hr@k", "ndcg@k"}`` for each k (in the order given), then ``"mrr"`` and ``"n"`` (number of
    cases). All metrics are 0.0 when there are no cases."""
    r = _as_numpy(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(r, k)
        out[f"ndcg@{k}"] = ndcg(r, k)
    out["mrr"] = mrr(r)
    out["n"] = int(r.size)
    return out


def _check_targets(targets: torch.Tensor, n_items: int) -> None:
    bad = (targets < 0) | (targets >= n_items)
    if bool(bad.any()):
        raise ValueError(f"{int(bad.sum())} target ids outside [0, {n_items}) (first: {int(targets[bad][0])}); "
                         "targets are 0-based item ids (model-ready target_items minus 1)")


def _exclusion_mask(exclude: torch.Tensor, targets: torch.Tensor, n_items: int) -> torch.Tensor:
    """[B, N] bool, True for items to drop from row b. Entries -1 and the target are ignored: they
    are redirected to the target's own column, which is then cleared (every write is ``True``, so
    duplicate indices cannot race)."""
    if exclude.dim() != 2 or exclude.shape[0] != targets.shape[0]:
        raise ValueError(f"expected exclude [B, L] with B = {targets.shape[0]}, got {tuple(exclude.shape)}")
    exclude = exclude.to(torch.int64)
    if bool((exclude >= n_items).any()):
        raise ValueError(f"exclude holds item ids >= n_items = {n_items}")
    index = torch.where(exclude >= 0, exclude, targets[:, None])
    mask = torch.zeros(targets.shape[0], n_items, dtype=torch.bool, device=exclude.device)
    mask.scatter_(1, index, True)
    mask[torch.arange(targets.shape[0], device=exclude.device), targets] = False
    return mask


def _as_numpy(ranks: RankArray) -> np.ndarray:
    r = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    r = r.reshape(-1).astype(np.int64)
    if r.size and r.min() < 1:
        raise ValueError(f"ranks start at 1, got {r.min()}")
    return r
