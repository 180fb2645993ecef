"""BLADE: dual item-behavior fusion + behavior-level augmentation (Li et al., AAAI 2026).

Every step of a sequence is an item with the *set* of behaviors performed on it. The model, as the
paper's section "Dual Item-Behavior Fusion" defines it:

1. **Personalized behavior-set embedding** (Eq. 1, after EIDP): ``beta = softmax(f_u ⊙ b) · G`` with a
   behavior embedding matrix G [|B|, d] and a per-user preference factor f_u [|B|] (a user x behavior
   matrix). *Choice*: the softmax runs over the behaviors *in* the set only (absent ones get weight 0;
   a literal softmax over all |B| entries would give absent behaviors weight too and make the
   embedding of every set equal at initialization); an empty (padding) set embeds to 0.
2. **Early fusion** (Eqs. 2-4): ``X_e = E + B + P`` (f = summation, one of the paper's three
   options), then ``blocks`` standard transformer blocks -> F.
3. **Intermediate fusion**: ``X = E + P`` through ``blocks`` blocks of
   - **BASA** (Eqs. 5-6): per head ``A_h = Q_h^X K_h^X^T + Q_h^B K_h^B^T`` (queries/keys of the
     behavior-set embeddings B added to the item ones), values from X only, causal;
   - **BGMoE** (Eq. 7): ``O = sum_i softmax(W B)_i · FFN_i(R)``: the behavior-set embedding of each
     step routes (dense softmax gate) over ``experts`` feed-forward experts.
4. **Aggregation** (Eq. 8): ``Ǔ = alpha · O + (1 - alpha) · F``.
5. **Next-behavior cross-attention** (Eqs. 9-10): queries are the *next* step's set embeddings
   ``T = [beta^2 .. beta^{L+1}]`` (the target set at the last position), keys/values Ǔ, causal;
   then an FFN -> U. Scores: ``u_l · e_v`` (Eq. 15) against every item.

Blocks are pre-LayerNorm with residuals (the paper omits residuals and normalization from its
figure); causal masks are applied *before* the softmax (the paper writes ``softmax(·) ⊙ Δ``, which
would let later keys change the normalization of earlier rows).

Training (section "Prediction and Model Training"):
- ``L_next`` (Eq. 16): BCE of the true next item against ``negatives`` (paper: 1) sampled items per
  position, weighted by behavior richness ``w = |b_{l+1}|_0 / |B|``, averaged over real positions.
  *Choice*: negatives are uniform over the catalogue and a draw equal to the positive is ignored;
  ``exclude_history_negatives`` also ignores draws in the user's window, as the paper (which samples
  from V minus the user's items) does. That convention teaches the model to score history items high,
  harmless only when evaluation masks the history (the paper's does); ours does not by default.
- ``L_SeqCL`` (Eqs. 17-18): two augmented views of the history's behavior sets (items untouched),
  each made by the augmentation stage's operators (``pipelines/augmentation/behavior_ops.py``) with
  the training split's statistics; both encoded to U [L, d], flattened over steps (L·d), similarity
  the dot product / ``contrastive_temperature``; other sequences of the batch are negatives; the
  loss is the sum of both directions. ``L = L_next + contrastive_weight · L_SeqCL`` (Eq. 19).
  *Choice*: a view's next-step queries T come from the view's own (augmented) sets; the target set
  stays as observed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.augmentation import behavior_ops
from pipelines.training.configs import AUGMENTATIONS, BladeConfig
from pipelines.training.models.base import Batch, DatasetInfo, Recommender
from pipelines.training.models.behavior_set import multi_hot
from pipelines.training.models.layers import (FeedForward, SelfAttention, TransformerEncoder, attention_mask,
                                              candidate_logits, next_in_sequence, right_aligned_positions)

Augment = Callable[[np.ndarray], np.ndarray]


def richness_weights(next_sets: torch.Tensor, n_behaviors: int) -> torch.Tensor:
    """Eq. 16's ``w = |b_{l+1}|_0 / |B|`` from the bitmask of the set each position predicts."""
    return multi_hot(next_sets, n_behaviors).sum(-1) / n_behaviors


class SetEmbedding(nn.Module):
    """Eq. 1: multi-hot sets [N, L, B] and user ids [N] -> [N, L, d]: ``softmax_{i in set}(f_u,i) · G_i``."""

    def __init__(self, n_users: int, n_behaviors: int, hidden: int) -> None:
        super().__init__()
        self.G = nn.Parameter(torch.randn(n_behaviors, hidden) * 0.02)
        self.factor = nn.Embedding(n_users, n_behaviors)  # F in R^{|U| x |B|}
        nn.init.zeros_(self.factor.weight)  # start: the mean of the set's behavior embeddings

    def forward(self, sets: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        f = self.factor(users)[:, None, :].expand_as(sets)
        logits = f.masked_fill(sets <= 0, float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # an empty set: all -inf -> zeros
        return weights @ self.G


class BehaviorAwareAttention(nn.Module):
    """BASA (Eqs. 5-6): item self-attention whose logits add behavior-set query/key products."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn = SelfAttention(hidden, heads, dropout)  # Q^X, K^X, V^X, output projection
        self.qk_behavior = nn.Linear(hidden, 2 * hidden)  # Q^B, K^B

    def behavior_logits(self, b: torch.Tensor) -> torch.Tensor:
        """[N, L, d] set embeddings -> [N, heads, L, L] ``Q^B K^B^T / sqrt(d_h)``."""
        n, length, d = b.shape
        q, k = (t.view(n, length, self.heads, d // self.heads).transpose(1, 2)
                for t in self.qk_behavior(b).split(d, dim=2))
        return q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5

    def forward(self, x: torch.Tensor, b: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # scaled_dot_product_attention scales Q^X K^X^T by 1/sqrt(d_h); the behavior term is pre-scaled
        return self.attn(x, allowed, bias=self.behavior_logits(b))


class BehaviorGuidedMoE(nn.Module):
    """BGMoE (Eq. 7): ``sum_i softmax(W b)_i · FFN_i(r)``, dense over ``experts`` experts.

    Expert i is ``down_i(gelu(up_i(r)))`` (d -> 4d -> d). The experts' weights are stored side by
    side, so all experts run as two matrix products: ``up`` holds every ``up_i`` ([d] -> [experts·4d]);
    the gated hidden units go through ``down`` (every ``down_i`` stacked) and the gated biases are
    added. The result is exactly the routing-weighted sum of the experts' outputs."""

    def __init__(self, hidden: int, experts: int, dropout: float) -> None:
        super().__init__()
        self.n_experts, self.width = experts, 4 * hidden
        self.router = nn.Linear(hidden, experts)
        self.up = nn.Linear(hidden, experts * self.width)
        self.down = nn.Linear(experts * self.width, hidden, bias=False)
        self.down_bias = nn.Parameter(torch.zeros(experts, hidden))
        bound = self.width ** -0.5  # what each expert's own nn.Linear(4d, d) would use
        nn.init.uniform_(self.down.weight, -bound, bound)
        nn.init.uniform_(self.down_bias, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def routing(self, b: torch.Tensor) -> torch.Tensor:
        """[..., d] set embeddings -> [..., experts] routing weights (rows sum to 1)."""
        return torch.softmax(self.router(b), dim=-1)

    def expert_outputs(self, r: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., experts, d]: every expert's output (for tests and inspection)."""
        h = F.gelu(self.up(r)).unflatten(-1, (self.n_experts, self.width))
        w = self.down.weight.T.unflatten(0, (self.n_experts, self.width))  # [experts, 4d, d]
        return torch.einsum("...ef,efd->...ed", h, w) + self.down_bias

    def forward(self, r: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        gate = self.routing(b)  # [N, L, experts]
        h = F.gelu(self.up(r)).unflatten(-1, (self.n_experts, self.width)) * gate[..., None]
        return self.dropout(self.down(h.flatten(-2)) + gate @ self.down_bias)


class IntermediateBlock(nn.Module):
    """Pre-LN block: ``x + BASA(ln(x), B)`` then ``x + BGMoE(ln(x), B)``."""

    def __init__(self, hidden: int, heads: int, experts: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(hidden)
        self.attn = BehaviorAwareAttention(hidden, heads, dropout)
        self.ln_moe = nn.LayerNorm(hidden)
        self.moe = BehaviorGuidedMoE(hidden, experts, dropout)

    def forward(self, x: torch.Tensor, b: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), b, allowed)
        return x + self.moe(self.ln_moe(x), b)


class NextBehaviorCrossAttention(nn.Module):
    """Eqs. 9-10: queries from the next-step set embeddings T, keys/values from Ǔ (single head,
    causal: position l reads Ǔ_1..Ǔ_l), then an FFN; pre-LN with residuals around Ǔ."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.ln_q, self.ln_kv, self.ln_ffn, self.ln_out = (nn.LayerNorm(hidden) for _ in range(4))
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.dropout = dropout
        self.ffn = FeedForward(hidden, dropout)

    def forward(self, t: torch.Tensor, u: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q = self.q(self.ln_q(t))[:, None]
        k, v = (x[:, None] for x in self.kv(self.ln_kv(u)).chunk(2, dim=-1))
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = u + y[:, 0]
        return self.ln_out(x + self.ffn(self.ln_ffn(x)))


class Blade(Recommender):
    """See the module docstring. ``augment`` maps int multi-hot histories [N, L, B] (numpy) to an
    augmented view of the same shape (``make_augment``); used when ``contrastive_weight > 0``."""

    def __init__(self, info: DatasetInfo, cfg: BladeConfig | None = None, augment: Augment | None = None) -> None:
        super().__init__()
        cfg = cfg or BladeConfig()
        self.info, self.cfg, self.augment = info, cfg, augment
        d = cfg.hidden
        self.item_emb = nn.Embedding(info.n_items + 1, d, padding_idx=0)  # row = item id + 1
        self.pos_emb = nn.Embedding(info.max_len, d)
        self.set_emb = SetEmbedding(info.n_users, info.n_behaviors, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.early = TransformerEncoder(d, cfg.blocks, cfg.heads, cfg.dropout)
        self.intermediate = nn.ModuleList(IntermediateBlock(d, cfg.heads, cfg.experts, cfg.dropout)
                                          for _ in range(cfg.blocks))
        self.ln_intermediate = nn.LayerNorm(d)
        self.cross = NextBehaviorCrossAttention(d, cfg.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        # negatives come from a private generator, seeded from the global torch RNG at construction
        self.sampler_seed = int(torch.randint(0, 2**62, (1,)).item())
        self._sampler: torch.Generator | None = None

    # -- encoder --------------------------------------------------------------------------------

    def fused(self, items: torch.Tensor, sets: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """items [N, L], float multi-hot sets [N, L, B], users [N] -> Ǔ [N, L, d] (Eq. 8)."""
        keep = items > 0
        e = self.item_emb(items)
        p = self.pos_emb(right_aligned_positions(items.shape[1], self.info.max_len, items.device))
        b = self.set_emb(sets, users) * keep[..., None]  # a padded step holds no set, whatever its bits
        early = self.early(self.dropout(e + b + p) * keep[..., None], keep)  # F
        x = self.dropout(e + p) * keep[..., None]
        allowed = attention_mask(keep)
        for block in self.intermediate:
            x = block(x, b, allowed)
        return self.cfg.alpha * self.ln_intermediate(x) + (1 - self.cfg.alpha) * early

    def represent(self, items: torch.Tensor, sets: torch.Tensor, next_sets: torch.Tensor,
                  users: torch.Tensor) -> torch.Tensor:
        """User representations U [N, L, d]; ``next_sets`` [N, L, B] is what each position predicts."""
        u = self.fused(items, sets, users)
        t = self.set_emb(next_sets, users)
        return self.cross(t, u, attention_mask(items > 0))

    def routing_weights(self, batch: Batch) -> torch.Tensor:
        """BGMoE routing of every block for the batch's history: [blocks, N, L, experts]."""
        b = self.set_emb(multi_hot(batch["behaviors"], self.info.n_behaviors), batch["user_ids"])
        b = b * (batch["items"] > 0)[..., None]
        return torch.stack([block.moe.routing(b) for block in self.intermediate])

    def item_logits(self, u: torch.Tensor) -> torch.Tensor:
        return u @ self.item_emb.weight[1:].T

    def score(self, batch: Batch) -> torch.Tensor:
        nb = self.info.n_behaviors
        sets = multi_hot(batch["behaviors"], nb)
        next_sets = multi_hot(next_in_sequence(batch["behaviors"], batch["target_behaviors"]), nb)
        return self.item_logits(self.represent(batch["items"], sets, next_sets, batch["user_ids"])[:, -1])

    # -- training -------------------------------------------------------------------------------

    def sampler(self) -> torch.Generator:
        device = self.device
        if self._sampler is None or self._sampler.device != device:
            self._sampler = torch.Generator(device=device)
            self._sampler.manual_seed(self.sampler_seed)
        return self._sampler

    def loss(self, batch: Batch) -> torch.Tensor:
        total = self.next_item_loss(batch)
        if self.cfg.contrastive_weight > 0 and self.augment is not None:
            total = total + self.cfg.contrastive_weight * self.contrastive_loss(batch)
        return total

    def next_item_loss(self, batch: Batch) -> torch.Tensor:
        """Eq. 16: richness-weighted BCE over real positions, divided by the number of real positions."""
        nb = self.info.n_behaviors
        items = batch["items"]
        next_masks = next_in_sequence(batch["behaviors"], batch["target_behaviors"])
        u = self.represent(items, multi_hot(batch["behaviors"], nb), multi_hot(next_masks, nb), batch["user_ids"])
        real = items > 0
        rows = real.nonzero()[:, 0]  # the sequence of each real position
        positives = next_in_sequence(items, batch["target_items"])[real]  # [M], item id + 1
        negatives = torch.randint(1, self.info.n_items + 1, (len(positives), self.cfg.negatives),
                                  generator=self.sampler(), device=items.device)
        valid = negatives != positives[:, None]  # [M, K]
        if self.cfg.exclude_history_negatives:
            valid &= ~(negatives[..., None] == items[rows][:, None, :]).any(-1)
        valid = valid.float()
        logits = candidate_logits(u[real], self.item_emb.weight, torch.cat([positives[:, None], negatives], dim=1))
        per_position = F.softplus(-logits[:, 0]) + (F.softplus(logits[:, 1:]) * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        w = richness_weights(next_masks, nb)[real]
        return (per_position * w).sum() / real.sum().clamp(min=1)

    def augmented_sets(self, behaviors: torch.Tensor) -> torch.Tensor:
        """One augmented view [N, L, B] of the history's sets (on the host: the stage's numpy operators)."""
        history = multi_hot(behaviors, self.info.n_behaviors).to(torch.int8).cpu().numpy()
        view = np.asarray(self.augment(history))
        if view.shape != history.shape or not np.array_equal(view.any(-1), history.any(-1)):
            raise ValueError("augment must keep the shape and which steps hold a (non-empty) set")
        return torch.from_numpy(view.astype(np.float32)).to(behaviors.device)

    def contrastive_loss(self, batch: Batch) -> torch.Tensor:
        """Eqs. 17-18 over the rows with any history (each row's view is its own positive)."""
        rows = batch["items"][:, -1] > 0
        if int(rows.sum()) < 2:
            return batch["items"].new_zeros((), dtype=torch.float32)
        items, behaviors, users = batch["items"][rows], batch["behaviors"][rows], batch["user_ids"][rows]
        target = multi_hot(batch["target_behaviors"][rows], self.info.n_behaviors)
        keep = (items > 0)[..., None]
        views = []
        for _ in range(2):
            sets = self.augmented_sets(behaviors)
            next_sets = torch.cat([sets[:, 1:], target[:, None]], dim=1)
            views.append((self.represent(items, sets, next_sets, users) * keep).flatten(1))
        logits = views[0] @ views[1].T / self.cfg.contrastive_temperature
        labels = torch.arange(len(logits), device=logits.device)
        return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)


def make_augment(kind: str, M: np.ndarray, mask_prob: np.ndarray, auxiliary: list[int], ratio: float,
                 seed: int) -> Augment:
    """A view generator over int multi-hot batches [N, L, B] from the augmentation stage's operators.

    ``kind``: one operator for every view (``cooccurrence``, ``masking``, ``flipping``: the paper's
    ablation) or ``mixed`` (each sequence of each view gets one of the three, uniformly). ``M``: the
    co-occurrence probability matrix, ``mask_prob``: m^c normalized, ``auxiliary``: indices of the
    auxiliary behaviors, all from the training split's statistics. One numpy Generator, seeded once.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    operators: dict[str, Augment] = {
        "cooccurrence": lambda x: behavior_ops.cooccurrence_addition(x, M, ratio, rng),
        "masking": lambda x: behavior_ops.frequency_masking(x, mask_prob, ratio, rng),
        "flipping": lambda x: behavior_ops.auxiliary_flipping(x, auxiliary, ratio, rng),
    }
    if kind != "mixed":
        return operators[kind]

    def mixed(x: np.ndarray) -> np.ndarray:
        choice = rng.integers(3, size=len(x))
        out = x.copy()
        for i, op in enumerate(operators.values()):
            rows = np.flatnonzero(choice == i)
            if len(rows):
                out[rows] = op(x[rows])
        return out

    return mixed
