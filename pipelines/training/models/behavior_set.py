"""A behavior-set sequential recommender of the EIDP / BLADE family.

Every step of a multi-behavior sequence is an item together with the *set* of behaviors the user
performed on it (e.g. {click, cart}). Following EIDP and BLADE, behaviors enter the model at several
levels, not only as an extra input feature:

1. **Personalized behavior-set embedding** (EIDP): a set is the sum of its behaviors' embeddings,
   each scaled by a per-user gate, so that e.g. "cart" can weigh more for a user who rarely carts
   without buying. Gates are ``1 + tanh(W u)`` of the user embedding ``u`` (start at 1, stay in (0, 2)).
2. **Early fusion** (BLADE's input-level fusion): step input = item + personalized set + position.
3. **Behavior-aware attention** (intermediate-level fusion): every attention head adds a learned bias
   for the pair (query step's set, key step's set): the mean of a learned [heads, B, B] table over all
   (behavior of the query step, behavior of the key step) pairs. It starts at zero (plain attention).
4. **Target-behavior conditioning** (EIDP): the representation that scores items is the sequence
   state fused with the embedding of the behavior set being predicted: ``r = h + MLP([h; set])``.
   Training conditions each position on the next step's set; scoring on ``target_behaviors``.

Loss: binary cross-entropy of the true next item against ``negatives`` uniformly sampled items at
every real position (negatives equal to the positive are ignored), weighted by BLADE's behavior
richness ``w = 1 + richness_weight · (|next set| − 1)`` and normalized by the sum of the weights.
Optionally (BLADE), an InfoNCE loss between two behavior-level augmentations of the history.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.training.configs import BehaviorSetConfig
from pipelines.augmentation.behavior_ops import auxiliary_flipping, cooccurrence_addition, frequency_masking
from pipelines.training.models.base import Batch, DatasetInfo, Recommender
from pipelines.training.models.layers import (TransformerEncoder, candidate_logits, next_in_sequence,
                                              right_aligned_positions)

Augment = Callable[[np.ndarray], np.ndarray]


def multi_hot(bitmasks: torch.Tensor, n_behaviors: int) -> torch.Tensor:
    """Bitmasks (any shape) -> float multi-hot [..., n_behaviors] (bit i = i-th behavior; 0 -> all zeros)."""
    bits = torch.arange(n_behaviors, device=bitmasks.device)
    return ((bitmasks[..., None] >> bits) & 1).float()


def richness_weights(next_sets: torch.Tensor, n_behaviors: int, richness_weight: float) -> torch.Tensor:
    """BLADE's behavior-richness weight of each position from the bitmask of the set it predicts:
    ``w = 1 + richness_weight · (popcount − 1)``; an empty set counts as a single behavior (w = 1)."""
    size = multi_hot(next_sets, n_behaviors).sum(-1)
    return 1.0 + richness_weight * (size - 1).clamp(min=0)


class PersonalizedSetEmbedding(nn.Module):
    """Multi-hot set [..., B] and user vector [..., D] (broadcastable) -> [..., D]:
    ``sum_i set_i · gate_i(user) · e_i`` with ``gate = 1 + tanh(W user)``."""

    def __init__(self, n_behaviors: int, hidden: int) -> None:
        super().__init__()
        self.behavior = nn.Parameter(torch.randn(n_behaviors, hidden) * 0.02)
        self.gate = nn.Linear(hidden, n_behaviors)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, sets: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        gates = 1.0 + torch.tanh(self.gate(user))
        return (sets * gates) @ self.behavior


class BehaviorPairBias(nn.Module):
    """Sets [N, L, B] -> additive attention bias [N, heads, L, L]: for query step q and key step k,
    the mean of ``table[h, i, j]`` over behaviors i in q's set and j in k's set (0 for empty sets)."""

    def __init__(self, n_behaviors: int, heads: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(heads, n_behaviors, n_behaviors))

    def forward(self, sets: torch.Tensor) -> torch.Tensor:
        share = sets / sets.sum(-1, keepdim=True).clamp(min=1)
        return torch.einsum("nqi,hij,nkj->nhqk", share, self.table, share)


class TargetConditioning(nn.Module):
    """Sequence state h [..., D] and embedding of the predicted behavior set s [..., D] ->
    ``h + MLP([h; s])``, the vector that scores items."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, target_set: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(torch.cat([h, target_set], dim=-1))


class BehaviorSetModel(Recommender):
    """See the module docstring. ``augment`` maps int multi-hot histories [B, L, n_behaviors] (numpy)
    to an augmented copy of the same shape; it is used only when ``cfg.contrastive_weight > 0``."""

    def __init__(self, info: DatasetInfo, cfg: BehaviorSetConfig | None = None, augment: Augment | None = None) -> None:
        super().__init__()
        cfg = cfg or BehaviorSetConfig()
        self.info, self.cfg, self.augment = info, cfg, augment
        d = cfg.hidden
        self.item_emb = nn.Embedding(info.n_items + 1, d, padding_idx=0)  # row = item id + 1
        self.user_emb = nn.Embedding(info.n_users, d)
        self.pos_emb = nn.Embedding(info.max_len, d)
        self.set_emb = PersonalizedSetEmbedding(info.n_behaviors, d)
        self.pair_bias = BehaviorPairBias(info.n_behaviors, cfg.heads)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = TransformerEncoder(d, cfg.blocks, cfg.heads, cfg.dropout)
        self.condition = TargetConditioning(d, cfg.dropout)
        for emb in (self.item_emb, self.user_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        # negatives come from a private generator, seeded from the global torch RNG at construction
        self.sampler_seed = int(torch.randint(0, 2**62, (1,)).item())
        self._sampler: torch.Generator | None = None

    # -- building blocks ------------------------------------------------------------------------

    def encode(self, items: torch.Tensor, sets: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """items [N, L], float multi-hot sets [N, L, B], user vectors [N, D] -> states [N, L, D]."""
        keep = items > 0
        positions = right_aligned_positions(items.shape[1], self.info.max_len, items.device)
        x = self.item_emb(items) + self.set_emb(sets, user[:, None]) + self.pos_emb(positions)
        x = self.dropout(x) * keep[..., None]
        return self.encoder(x, keep, bias=self.pair_bias(sets))

    def item_logits(self, r: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., n_items]: column j = item id j (embedding row j + 1)."""
        return r @ self.item_emb.weight[1:].T

    def reset_sampler(self) -> None:
        """Restart the negative sampler's stream from ``sampler_seed``."""
        self._sampler = None

    def sampler(self) -> torch.Generator:
        """The negative sampler's generator, on the model's device (re-seeded if the model moved)."""
        device = self.device
        if self._sampler is None or self._sampler.device != device:
            self._sampler = torch.Generator(device=device)
            self._sampler.manual_seed(self.sampler_seed)
        return self._sampler

    # -- training -------------------------------------------------------------------------------

    def loss(self, batch: Batch) -> torch.Tensor:
        """Richness-weighted mean of the per-position BCE losses (+ the optional contrastive loss)."""
        cfg = self.cfg
        per_position, next_masks = self.next_item_losses(batch)
        weights = richness_weights(next_masks, self.info.n_behaviors, cfg.richness_weight)
        total = (weights * per_position).sum() / weights.sum().clamp(min=1e-12)
        if cfg.contrastive_weight > 0 and self.augment is not None:
            user = self.user_emb(batch["user_ids"])
            total = total + cfg.contrastive_weight * self.contrastive_loss(batch["items"], batch["behaviors"], user)
        return total

    def next_item_losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """BCE loss of every real position [N] (row-major over the batch) and the bitmask of the set
        it predicts [N]. Each position scores its next item against ``negatives`` uniform samples,
        conditioned on the next step's behavior set."""
        nb = self.info.n_behaviors
        items = batch["items"]
        user = self.user_emb(batch["user_ids"])
        h = self.encode(items, multi_hot(batch["behaviors"], nb), user)

        real = items > 0
        next_items = next_in_sequence(items, batch["target_items"])[real]  # [N]
        next_masks = next_in_sequence(batch["behaviors"], batch["target_behaviors"])[real]  # [N]
        user_at = user[:, None].expand(-1, items.shape[1], -1)[real]
        r = self.condition(h[real], self.set_emb(multi_hot(next_masks, nb), user_at))  # [N, D]

        negatives = torch.randint(1, self.info.n_items + 1, (len(next_items), self.cfg.negatives),
                                  generator=self.sampler(), device=items.device)
        candidates = torch.cat([next_items[:, None], negatives], dim=1)  # [N, 1 + K]
        logits = candidate_logits(r, self.item_emb.weight, candidates)  # [N, 1 + K]
        positive_loss = F.softplus(-logits[:, 0])  # -log sigmoid(s+)
        valid = (negatives != next_items[:, None]).float()  # a sampled copy of the positive is no negative
        negative_loss = (F.softplus(logits[:, 1:]) * valid).sum(1) / valid.sum(1).clamp(min=1)
        return positive_loss + negative_loss, next_masks

    def augmented_sets(self, behaviors: torch.Tensor) -> torch.Tensor:
        """One augmented view of the history's multi-hot sets (via ``augment``, on the host)."""
        history = multi_hot(behaviors, self.info.n_behaviors).to(torch.int8).cpu().numpy()
        view = np.asarray(self.augment(history))
        if view.shape != history.shape or not np.array_equal(view.any(-1), history.any(-1)):
            raise ValueError("augment must keep the shape and which steps hold a (non-empty) set")
        return torch.from_numpy(view.astype(np.float32)).to(behaviors.device)

    def contrastive_loss(self, items: torch.Tensor, behaviors: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """BLADE's sequence-level InfoNCE: the last-position states of two augmented views of the
        same history are positives; other rows of the batch are negatives (symmetric, cosine /
        temperature). Rows without history are left out."""
        rows = items[:, -1] > 0
        if int(rows.sum()) == 0:
            return items.new_zeros((), dtype=torch.float32)
        items, behaviors, user = items[rows], behaviors[rows], user[rows]
        z1, z2 = (F.normalize(self.encode(items, self.augmented_sets(behaviors), user)[:, -1], dim=-1)
                  for _ in range(2))
        logits = z1 @ z2.T / self.cfg.contrastive_temperature
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    # -- ranking --------------------------------------------------------------------------------

    def score(self, batch: Batch) -> torch.Tensor:
        nb = self.info.n_behaviors
        user = self.user_emb(batch["user_ids"])
        h = self.encode(batch["items"], multi_hot(batch["behaviors"], nb), user)[:, -1]
        r = self.condition(h, self.set_emb(multi_hot(batch["target_behaviors"], nb), user))
        return self.item_logits(r)


def default_augment(M: np.ndarray, mask_prob: np.ndarray, auxiliary: list[int], ratio: float, seed: int) -> Augment:
    """BLADE's behavior-level augmentation: each call applies one of co-occurrence addition,
    frequency masking or auxiliary flipping (chosen uniformly) to a whole batch [N, L, B].

    ``M``: behavior co-occurrence counts (or their row-normalized form), ``mask_prob``: m^c
    normalized, ``auxiliary``: indices of the auxiliary behaviors, all from the training statistics
    (``pipelines/augmentation/statistics.py``). One numpy Generator, seeded once, drives every draw.
    """
    rng = np.random.default_rng(seed)
    operators: tuple[Augment, ...] = (
        lambda x: cooccurrence_addition(x, M, ratio, rng),
        lambda x: frequency_masking(x, mask_prob, ratio, rng),
        lambda x: auxiliary_flipping(x, auxiliary, ratio, rng),
    )

    def augment(x: np.ndarray) -> np.ndarray:
        return operators[int(rng.integers(len(operators)))](x)

    return augment
