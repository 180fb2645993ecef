"""Most-popular baseline: every user gets the same ranking, by training frequency."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from pipelines.training.models.base import Batch, DatasetInfo, Recommender


class Popularity(Recommender):
    """score(item) = number of occurrences of the item in the training arrays (non-padding history
    steps plus targets), identical for every row. Counts live in the ``counts`` buffer so they travel
    with ``state_dict``. Scores are float32: exact for counts up to 2**24."""

    trainable: ClassVar[bool] = False

    def __init__(self, info: DatasetInfo) -> None:
        super().__init__()
        self.info = info
        self.register_buffer("counts", torch.zeros(info.n_items, dtype=torch.int64))

    def fit_statistics(self, train: dict[str, np.ndarray]) -> None:
        items = np.asarray(train["items"], dtype=np.int64).reshape(-1)
        ids = np.concatenate([items[items > 0], np.asarray(train["target_items"], dtype=np.int64)]) - 1
        if ids.size and (ids.min() < 0 or ids.max() >= self.info.n_items):
            raise ValueError(f"train arrays hold item ids outside [0, {self.info.n_items}) "
                             f"(min {ids.min()}, max {ids.max()}); DatasetInfo.n_items does not match the data")
        counts = np.bincount(ids, minlength=self.info.n_items)
        self.counts.copy_(torch.from_numpy(counts))

    def score(self, batch: Batch) -> torch.Tensor:
        return self.counts.to(torch.float32).unsqueeze(0).repeat(batch["items"].shape[0], 1)
