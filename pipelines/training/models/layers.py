"""Shared transformer pieces for the sequential models (SASRec, behavior-set models).

A pre-LayerNorm causal transformer in the spirit of nanoGPT's ``Block``: ``x + attn(ln(x))`` then
``x + mlp(ln(x))``, with a final LayerNorm after the stack. Two additions for recommendation data:

- **left padding**: ``keep`` [B, L] marks real steps; padded keys are hidden from every query;
- **attention bias**: an optional additive bias [B, L, L] or [B, heads, L, L] (e.g. behavior-aware
  attention) is added to the attention logits before the softmax.

Every position may always attend to itself, so a query whose visible keys are all padding (a padded
position, or any position of an all-padding row) still has one finite logit: no NaN, and padded
positions never leak into real ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """[L, L] bool, True where query i may see key j (j <= i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def attention_mask(keep: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """[B, 1, L, L] bool, True where attention is allowed.

    ``keep``: [B, L] bool, True on real (non-padding) steps. A query sees the real keys at or before
    it (all real keys when ``causal`` is False) and always itself.
    """
    length = keep.shape[1]
    allowed = keep[:, None, :].expand(-1, length, -1)  # [B, L(query), L(key)]
    if causal:
        allowed = allowed & causal_mask(length, keep.device)
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=keep.device)
    return allowed[:, None]


def right_aligned_positions(length: int, max_len: int, device: torch.device | None = None) -> torch.Tensor:
    """[L] position ids for a left-padded window of ``length`` <= ``max_len`` columns.

    The last column is always position ``max_len - 1``, so a step's position counts from the end of
    the window and does not depend on how much left padding the batch happens to carry.
    """
    if length > max_len:
        raise ValueError(f"sequence length {length} exceeds max_len {max_len}")
    return torch.arange(max_len - length, max_len, device=device)


def next_in_sequence(history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, L, ...] history and [B, ...] target -> [B, L, ...]: at each column, what comes next
    (the following history step; the target after the last column)."""
    return torch.cat([history[:, 1:], target[:, None]], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a boolean mask and an optional additive bias."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D]; allowed [B, 1|H, L, L] bool; bias None, [B, L, L] or [B, H, L, L]."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(b, length, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        logits_bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)  # q's dtype under autocast too
        if bias is not None:
            logits_bias = logits_bias + (bias[:, None] if bias.dim() == 3 else bias).to(q.dtype)
        logits_bias = logits_bias.masked_fill(~allowed, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=logits_bias,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(b, length, d)
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    """Position-wise two-layer MLP (hidden -> 4·hidden -> hidden, GELU)."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, 4 * hidden)
        self.down = nn.Linear(4 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention then feed-forward, each with a residual."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, dropout)
        self.ln_mlp = nn.LayerNorm(hidden)
        self.mlp = FeedForward(hidden, dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), allowed, bias)
        return x + self.mlp(self.ln_mlp(x))


class TransformerEncoder(nn.Module):
    """A stack of causal pre-LN blocks plus a final LayerNorm.

    ``forward(x, keep, bias)``: x [B, L, D] step inputs, keep [B, L] bool real steps, bias an
    optional additive attention bias shared by all blocks. Returns [B, L, D]; outputs at real
    positions depend only on real steps at or before them.
    """

    def __init__(self, hidden: int, blocks: int, heads: int, dropout: float, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(blocks))
        self.ln_final = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        allowed = attention_mask(keep, self.causal)
        for block in self.blocks:
            x = block(x, allowed, bias)
        return self.ln_final(x)


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Summed full-softmax cross-entropy of ``h @ weight.T`` against ``target``, in row chunks.

    The loss is a scalar, so its gradient is known once the softmax is: each chunk's logits are
    computed, turned into ``softmax - onehot`` in place and multiplied straight into the gradients of
    ``h`` and ``weight``. Peak extra memory is one [chunk, n_items] buffer instead of several
    [N, n_items] tensors (logits, log-softmax, their gradients), which on a CPU spends most of its
    time allocating and streaming memory. Same maths as ``F.cross_entropy(h @ weight.T, target,
    reduction="sum")``; only the summation order differs (float tolerance).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros_like(weight) if need_grad else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk], target[start:start + chunk]
            logits = hc @ weight.T  # [c, n_items]
            picked = logits.gather(1, tc[:, None]).squeeze(1)
            top = logits.amax(1, keepdim=True)
            logits.sub_(top).exp_()
            norm = logits.sum(1, keepdim=True)
            total += (norm.log().squeeze(1) + top.squeeze(1) - picked).sum(dtype=torch.float64)
            if need_grad:
                logits.div_(norm)  # softmax
                logits[torch.arange(len(tc), device=h.device), tc] -= 1  # d loss / d logits
                torch.mm(logits, weight, out=grad_h[start:start + chunk])
                grad_w.addmm_(logits.T, hc)
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w)
        return total.to(h.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None


def full_softmax_cross_entropy(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                               chunk: int = 32) -> torch.Tensor:
    """``F.cross_entropy(h @ weight.T, target, reduction="sum")`` for h [N, D], weight [V, D],
    target [N] in [0, V), without materializing the [N, V] logits (see ``_ChunkedSoftmaxCE``)."""
    if h.shape[0] == 0:
        return (h.sum() + weight.sum()) * 0.0
    return _ChunkedSoftmaxCE.apply(h, weight, target, chunk)


# candidate logits from one matmul over the whole catalogue when it is at most this many times the
# candidates per position, else from gathered candidate embeddings (the same dot products either way)
FULL_LOGITS_RATIO = 16


def candidate_logits(r: torch.Tensor, item_weight: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Dot products of representations ``r`` [N, d] with the rows ``candidates`` [N, C] of ``item_weight``
    [rows, d] -> [N, C]. On a small catalogue one matmul against every row and a gather is much cheaper
    on CPU than materializing [N, C, d] gathered embeddings (and their gradient)."""
    if item_weight.shape[0] <= FULL_LOGITS_RATIO * candidates.shape[1]:
        return (r @ item_weight.T).gather(1, candidates)
    return torch.bmm(F.embedding(candidates, item_weight), r[:, :, None]).squeeze(-1)
