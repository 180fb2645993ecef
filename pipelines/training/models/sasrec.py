"""SASRec: self-attentive sequential recommendation over item ids only (Kang & McAuley, ICDM 2018).

Each history step is its item embedding plus a learned position embedding; a causal transformer
reads the sequence, and the state at a position is a user's taste right after that step. Item
scores are dot products with the (tied) item embeddings. Behaviors are ignored.

Training follows the paper's "predict the next item at every position" objective, with a full
softmax over all items instead of the paper's one sampled negative (the stronger, common choice for
full-ranking evaluation): the input is the history window, the labels are the same window shifted by
one step with the target appended, and positions whose input is padding carry no loss. Logits exist
only at positions that carry a label, and the softmax runs fused over chunks of them
(``layers.full_softmax_cross_entropy``; ``softmax_chunk = 0`` is the plain ``F.cross_entropy`` path). For large
catalogues on CPU, ``negatives = n`` replaces the full softmax by a sampled one: the positive against
n uniformly drawn items shared by the batch (a draw equal to the positive is masked out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.training.configs import SASRecConfig
from pipelines.training.models.base import Batch, DatasetInfo, Recommender
from pipelines.training.models.layers import (
    TransformerEncoder,
    full_softmax_cross_entropy,
    next_in_sequence,
    right_aligned_positions,
)


def next_item_labels(items: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
    """[B, L] label of each position: the following history item, the target for the last column,
    and 0 (ignored) where the input itself is padding."""
    return next_in_sequence(items, target_items).masked_fill(items == 0, 0)


class SASRec(Recommender):
    """Item-sequence transformer; see the module docstring."""

    def __init__(self, info: DatasetInfo, cfg: SASRecConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or SASRecConfig()
        self.info, self.cfg = info, cfg
        self.item_emb = nn.Embedding(info.n_items + 1, cfg.hidden, padding_idx=0)  # row = item id + 1
        self.pos_emb = nn.Embedding(info.max_len, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = TransformerEncoder(cfg.hidden, cfg.blocks, cfg.heads, cfg.dropout)
        nn.init.normal_(self.item_emb.weight[1:], std=0.02)  # keep padding row at zero
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """items [B, L] (item id + 1, left-padded) -> hidden states [B, L, D]."""
        keep = items > 0
        positions = right_aligned_positions(items.shape[1], self.info.max_len, items.device)
        x = self.item_emb(items) * self.cfg.hidden ** 0.5 + self.pos_emb(positions)
        x = self.dropout(x) * keep[..., None]
        return self.encoder(x, keep)

    def item_logits(self, h: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., n_items]: dot products with every real item's embedding (row j+1 = item j)."""
        return h @ self.item_emb.weight[1:].T

    def loss(self, batch: Batch) -> torch.Tensor:
        items = batch["items"]
        labels = next_item_labels(items, batch["target_items"])
        h = self.encode(items)
        real = labels > 0
        target = labels[real] - 1
        if 0 < self.cfg.negatives < self.info.n_items:
            return self._sampled_loss(h[real], target)
        if self.cfg.softmax_chunk > 0:  # same loss and gradients, without the [N, n_items] tensors
            losses = full_softmax_cross_entropy(h[real], self.item_emb.weight[1:], target, self.cfg.softmax_chunk)
        else:
            logits = self.item_logits(h[real])  # only real positions: [N, n_items]
            losses = F.cross_entropy(logits, target, reduction="sum")
        return losses / real.sum().clamp(min=1)

    def _sampled_loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Softmax over [positive, n shared negatives]; negatives equal to the positive are masked."""
        negatives = torch.randint(0, self.info.n_items, (self.cfg.negatives,), device=h.device)
        pos = (h * self.item_emb(target + 1)).sum(-1, keepdim=True)  # [N, 1]
        neg = h @ self.item_emb(negatives + 1).T  # [N, n]
        neg = neg.masked_fill(negatives[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([pos, neg], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(target), reduction="sum") / max(len(target), 1)

    def score(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch["items"])[:, -1]
        return self.item_logits(h)
