"""Repeat-the-history heuristic: a probe for the same-item leak, not a recommender to ship.

In multi-behavior logs a purchase is often preceded by a click or cart of the very same item. When
such steps stay in the history, "recommend what the user just touched" looks excellent: this model
scores well exactly on the cases where the target was interacted with right before, and near the
bottom everywhere else (every item outside the history ties at 0, and ties count against the target).
Its HR@k on a split therefore measures how much of that split the leak explains; after the leakage
filter it should collapse.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from pipelines.training.models.base import Batch, DatasetInfo, Recommender


class RecentHistory(Recommender):
    """score(item) = 1 + p, with p the 0-based position of the item's most recent occurrence among the
    row's real history steps (larger = more recent); 0 for items not in the history."""

    trainable: ClassVar[bool] = False

    def __init__(self, info: DatasetInfo) -> None:
        super().__init__()
        self.info = info

    def score(self, batch: Batch) -> torch.Tensor:
        items = batch["items"]  # [B, L], item_id + 1, 0 = padding
        real = items > 0
        recency = torch.where(real, torch.cumsum(real.to(torch.int64), dim=1), 0).to(torch.float32)  # 1 + p
        scores = torch.zeros(items.shape[0], self.info.n_items + 1, dtype=torch.float32, device=items.device)
        scores.scatter_reduce_(1, items, recency, reduce="amax", include_self=True)
        return scores[:, 1:]  # column 0 collected the padding
