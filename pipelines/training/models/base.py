"""What every model offers the generic training and evaluation loops.

A batch is a dict of tensors built from the model-ready arrays (``pipelines/sequences/model_ready.py``),
all int64 on the model's device:

- ``items``            [B, L]  item_id + 1, left-padded with 0;
- ``behaviors``        [B, L]  behavior bitmask of each history step (bit i = i-th registry behavior; 0 on padding);
- ``lengths``          [B]     number of real history steps (<= L);
- ``target_items``     [B]     target item_id + 1;
- ``target_behaviors`` [B]     the target step's behavior bitmask;
- ``user_ids``         [B]     dense user ids.

Scores are over item ids: column ``j`` of ``score`` is item id ``j`` (= ``items`` value ``j + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """Sizes a model needs to build its layers."""

    n_items: int
    n_users: int
    n_behaviors: int
    max_len: int


class Recommender(nn.Module):
    """Base class. Trainable models implement ``loss``; every model implements ``score`` (full ranking
    over all items) or, for generative models, ``rank`` (a ranked list of item ids)."""

    trainable: ClassVar[bool] = True
    full_ranking: ClassVar[bool] = True  # False: evaluation uses ``rank`` (e.g. a beam) instead of ``score``

    def fit_statistics(self, train: dict[str, np.ndarray]) -> None:
        """Non-trainable models learn their counts here from the train arrays; others ignore it."""

    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    def score(self, batch: Batch) -> torch.Tensor:
        """[B, n_items] float scores; higher is better."""
        raise NotImplementedError

    def rank(self, batch: Batch, k: int) -> torch.Tensor:
        """[B, k] item ids, best first; -1 where fewer than k items were produced."""
        scores = self.score(batch)
        top = torch.topk(scores, k=min(k, scores.shape[1]), dim=1).indices
        if top.shape[1] < k:  # fewer items than asked for: pad with -1 as documented
            top = torch.nn.functional.pad(top, (0, k - top.shape[1]), value=-1)
        return top

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU; otherwise the named device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
