"""Generative semantic-ID recommender (in the spirit of TIGER and GAMER).

Every item is a tuple of D semantic-ID codes (``pipelines`` semantic-ID stage; the last level is a
dedup counter, so tuples are unique). A small decoder-only transformer reads a user's history as a
token sequence and writes the next item's tuple one code at a time; ranking is a beam search that
may only follow code prefixes of real items. See ``GenerativeSID`` for the sequence layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.training.configs import GenerativeSIDConfig
from pipelines.training.models.base import Batch, DatasetInfo, Recommender
from pipelines.training.models.layers import FeedForward
from pipelines.semantic_ids.tokens import token

PAD, BOS = 0, 1


class SIDVocabulary:
    """Token ids: ``<pad>`` = 0, ``<bos>`` = 1, one ``<beh_m>`` per behavior bitmask m in
    [0, 2**n_behaviors), then the codes of each level l at ``code_offsets[l] + code``."""

    def __init__(self, n_behaviors: int, codebook_sizes: list[int]) -> None:
        self.n_behaviors = n_behaviors
        self.codebook_sizes = [int(s) for s in codebook_sizes]
        self.behavior_offset = 2
        first_code = self.behavior_offset + 2 ** n_behaviors
        self.code_offsets = [first_code + int(s) for s in np.cumsum([0] + self.codebook_sizes[:-1])]
        self.size = first_code + sum(self.codebook_sizes)

    def names(self) -> list[str]:
        behaviors = [f"<beh_{m}>" for m in range(2 ** self.n_behaviors)]
        codes = [token(l, c) for l, size in enumerate(self.codebook_sizes) for c in range(size)]
        return ["<pad>", "<bos>", *behaviors, *codes]


class PrefixTrie(nn.Module):
    """The valid code prefixes of the item tuples, level by level, as sorted int64 keys.

    A prefix of length l + 1 is a node at depth l + 1 with key ``parent * codebook_sizes[l] + code``,
    where ``parent`` is the index of its length-l prefix among the sorted keys of depth l (the root
    is node 0). Sorting keys sorts prefixes lexicographically, and a key is at most
    n_items * codebook_size, so it never overflows. The leaves (depth D) are the items.
    """

    def __init__(self, codes: np.ndarray, codebook_sizes: list[int]) -> None:
        super().__init__()
        self.codebook_sizes = list(codebook_sizes)
        node = np.zeros(len(codes), dtype=np.int64)  # every item starts at the root
        for level, size in enumerate(codebook_sizes):
            keys, node = np.unique(node * size + codes[:, level], return_inverse=True)
            self.register_buffer(f"keys_{level}", torch.from_numpy(keys.astype(np.int64)))
        if len(keys) != len(codes):
            raise ValueError(f"{len(codes) - len(keys)} items share a code tuple with another item; the last "
                             "level must be a dedup counter that makes every tuple unique")
        leaf_item = np.empty(len(codes), dtype=np.int64)
        leaf_item[node.reshape(-1)] = np.arange(len(codes))
        self.register_buffer("leaf_item", torch.from_numpy(leaf_item))

    def extend(self, level: int, node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For depth-``level`` nodes [...] -> (child node [..., K], exists [..., K]) for every code of
        that level; where a child does not exist its node index is arbitrary (but in range)."""
        size = self.codebook_sizes[level]
        keys: torch.Tensor = getattr(self, f"keys_{level}")
        wanted = node[..., None] * size + torch.arange(size, device=node.device)
        child = torch.searchsorted(keys, wanted.contiguous()).clamp(max=len(keys) - 1)
        return child, keys[child] == wanted


KeysValues = tuple[torch.Tensor, torch.Tensor]  # one layer's attention keys and values [N, heads, T, head_dim]


@dataclass
class PromptCache:
    """A prompt's attention keys and values in every layer, and which of its positions are real
    tokens, so that later tokens can attend to the prompt without re-running it."""

    keys_values: list[KeysValues]
    real: torch.Tensor  # [N, P] bool
    first_position: int = 0  # position of the prompt's first token (> 0 when leading padding was cut)


class SelfAttention(nn.Module):
    """Multi-head self-attention under a boolean mask (True = may attend), optionally also over the
    keys and values of earlier positions (``past``, a cached prompt)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden = {hidden} is not divisible by heads = {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: KeysValues | None = None
                ) -> tuple[torch.Tensor, KeysValues]:
        """x [N, T, C], mask [N, T, P + T] -> (output [N, T, C], keys and values of x's positions)."""
        N, T, C = x.shape
        q, k, v = (t.view(N, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        all_k, all_v = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
        y = F.scaled_dot_product_attention(q, all_k, all_v, attn_mask=mask[:, None],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(N, T, C))), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, dropout)
        self.ln_mlp = nn.LayerNorm(hidden)
        self.mlp = FeedForward(hidden, dropout)  # the same feed-forward as every other model's block

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: KeysValues | None = None
                ) -> tuple[torch.Tensor, KeysValues]:
        attended, keys_values = self.attn(self.ln_attn(x), mask, past)
        x = x + attended
        return x + self.mlp(self.ln_mlp(x)), keys_values


class GenerativeSID(Recommender):
    """Decoder-only transformer over behavior and semantic-ID tokens; ranks items by beam search.

    Sequence of one row (H = ``cfg.history_steps``, D = code levels)::

        <pad> ... <pad> <bos> | <beh_m1> <a_.> <b_.> ... | ... | <beh_mH> <a_.> ... | <beh_t> <a_.> <b_.> ...
                              |  oldest kept history step |     |  latest history    | target behavior + codes

    Each history step is its behavior-set token (the bitmask as one token) followed by its item's
    D code tokens; the last H steps of the window are kept and missing steps become left padding
    in front of ``<bos>``. Then comes the behavior we ask for (``target_behaviors``) and, in
    training, the target's D codes (teacher forcing). The fixed length is 1 + H(1 + D) + 1 + D.
    Attention is causal and skips padding keys; positions are absolute, so with left padding the
    target always sits at the same positions.

    Training (``loss``): next-token cross-entropy on every item-code token of the sequence, i.e.
    the codes of the history items and of the target, each predicted from the token before it;
    behavior tokens, ``<bos>`` and padding are inputs only. The target's codes carry weight
    ``cfg.target_weight`` (history codes 1); the loss is the weighted mean.

    Ranking (``rank``): the prompt (everything before the target's codes) is decoded level by level
    with a beam of ``max(cfg.beam_size, k)``. At level l each beam may only extend to codes that
    keep its prefix a prefix of some item's tuple (``PrefixTrie``), so every finished beam is a
    real item and distinct beams are distinct items. Beams are ordered by their summed
    log-probabilities (softmax over the whole vocabulary). The prompt runs through the transformer
    once per row and its keys and values are cached (``PromptCache``); each level then runs only the
    codes chosen so far: a row's beams side by side, each attending to the cached prompt and to its
    own earlier codes.
    """

    full_ranking = False

    def __init__(self, info: DatasetInfo, codes: np.ndarray, codebook_sizes: list[int],
                 cfg: GenerativeSIDConfig = GenerativeSIDConfig()) -> None:
        super().__init__()
        codes = np.asarray(codes, dtype=np.int64)
        check_codes(codes, codebook_sizes, info.n_items)
        if cfg.history_steps < 1:
            raise ValueError(f"history_steps must be >= 1, got {cfg.history_steps}")
        self.info, self.cfg = info, cfg
        self.vocab = SIDVocabulary(info.n_behaviors, codebook_sizes)
        self.levels = len(codebook_sizes)
        self.block_size = 1 + cfg.history_steps * (1 + self.levels) + 1 + self.levels
        # row = item id + 1 (the batch's ``items`` values); row 0 (padding) is all <pad>
        item_tokens = np.vstack([np.full((1, self.levels), PAD), codes + np.asarray(self.vocab.code_offsets)])
        self.register_buffer("item_tokens", torch.from_numpy(item_tokens))
        self.trie = PrefixTrie(codes, codebook_sizes)

        self.token_emb = nn.Embedding(self.vocab.size, cfg.hidden)
        self.pos_emb = nn.Embedding(self.block_size, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.lm_head = nn.Linear(cfg.hidden, self.vocab.size, bias=False)
        self.lm_head.weight = self.token_emb.weight  # tied input and output token embeddings
        self.apply(init_weights)

    def vocabulary(self) -> list[str]:
        """Token names by id: ``<pad>``, ``<bos>``, ``<beh_0>`` ..., ``<a_0>`` ..., ``<b_0>`` ..."""
        return self.vocab.names()

    # ----- sequences -----

    def prompt(self, batch: Batch) -> torch.Tensor:
        """[B, block_size - D] tokens: padding, <bos>, the history steps, the target behavior."""
        H = self.cfg.history_steps
        items, behaviors = last_columns(batch["items"], H), last_columns(batch["behaviors"], H)
        real = items > 0
        step_behavior = torch.where(real, self.vocab.behavior_offset + behaviors, PAD)
        steps = torch.cat([step_behavior[..., None], self.item_tokens[items]], dim=2).flatten(1)  # [B, H(1+D)]
        target_behavior = self.vocab.behavior_offset + batch["target_behaviors"]
        tokens = torch.cat([steps.new_full((len(steps), 1), PAD), steps, target_behavior[:, None]], dim=1)
        # history is left-padded: <bos> takes the last padding slot before the first real step
        bos_at = (~real).sum(dim=1) * (1 + self.levels)
        return tokens.scatter(1, bos_at[:, None], BOS)

    def sequence(self, batch: Batch) -> torch.Tensor:
        """[B, block_size] tokens: the prompt followed by the target item's D codes."""
        return torch.cat([self.prompt(batch), self.item_tokens[batch["target_items"]]], dim=1)

    # ----- transformer -----

    def transformer(self, tokens: torch.Tensor, past: PromptCache | None = None, branches: int = 1,
                    first_position: int = 0) -> tuple[torch.Tensor, PromptCache]:
        """tokens [N, branches * T]: ``branches`` independent continuations of T tokens side by side,
        each at positions ``first_position``.., or right after the cached prompt ``past`` (which all of
        them see) -> (final hidden states [N, branches * T, hidden], the tokens' own cache)."""
        N, T = tokens.shape[0], tokens.shape[1] // branches
        start = first_position if past is None else past.first_position + past.real.shape[1]
        index = torch.arange(branches * T, device=tokens.device)
        branch, step = index // T, index % T
        positions = start + step
        causal = (branch[:, None] == branch[None, :]) & (step[:, None] >= step[None, :])
        # a query never attends to padding keys, but always to itself (padding rows stay finite)
        mask = causal & ((tokens != PAD)[:, None, :] | torch.eye(len(index), dtype=torch.bool, device=tokens.device))
        if past is not None:
            mask = torch.cat([past.real[:, None, :].expand(N, len(index), past.real.shape[1]), mask], dim=2)
        x = self.dropout(self.token_emb(tokens) + self.pos_emb(positions))
        keys_values = []
        for layer, block in enumerate(self.blocks):
            x, layer_keys_values = block(x, mask, None if past is None else past.keys_values[layer])
            keys_values.append(layer_keys_values)
        return self.ln_f(x), PromptCache(keys_values, tokens != PAD, start)

    def forward(self, tokens: torch.Tensor, first_position: int = 0) -> torch.Tensor:
        """tokens [N, T] (laid out as a full sequence's columns ``first_position`` to
        ``first_position + T - 1``) -> [N, T, vocab] logits of the token after each position."""
        return self.lm_head(self.transformer(tokens, first_position=first_position)[0])

    # ----- training -----

    def loss(self, batch: Batch) -> torch.Tensor:
        # the whole window, padding included: cutting it would change the shape dropout draws for, and
        # so the random stream of training (ranking cuts it: no randomness there)
        tokens = self.sequence(batch)
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        weight = (labels >= self.vocab.code_offsets[0]).float()
        weight[:, -self.levels:] *= self.cfg.target_weight
        hidden = self.transformer(inputs)[0]
        # only positions whose label is a code carry loss: the vocabulary head and the softmax skip
        # the rest (behavior tokens, padding), the same weighted mean without their zero terms
        scored = weight > 0
        ce = F.cross_entropy(self.lm_head(hidden[scored]).float(), labels[scored], reduction="none")
        return (ce * weight[scored]).sum() / weight.sum()

    # ----- ranking -----

    def score(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError("GenerativeSID does not score all items; use rank(batch, k) (beam search)")

    @torch.no_grad()
    def beam_search(self, batch: Batch, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Constrained beam search -> (item ids [B, width], log-probabilities [B, width]), best first;
        item -1 and log-probability -inf where fewer than ``width`` items were reached."""
        prompt, first = cut_leading_padding(self.prompt(batch))
        B = len(prompt)
        hidden, cache = self.transformer(prompt, first_position=first)  # once per row, not once per beam
        logits = self.lm_head(hidden[:, -1:])  # [B, n_beams, vocab]; one beam (the prompt) to start
        beams = prompt.new_zeros(B, 1, 0)  # [B, n_beams, level] code tokens chosen so far
        log_prob = torch.zeros(B, 1, device=prompt.device)
        node = torch.zeros(B, 1, dtype=torch.long, device=prompt.device)
        for level, size in enumerate(self.vocab.codebook_sizes):
            n_beams = beams.shape[1]
            if level > 0:  # all beams of a row side by side after its cached prompt
                hidden, _ = self.transformer(beams.flatten(1), cache, branches=n_beams)
                logits = self.lm_head(hidden.view(B, n_beams, level, -1)[:, :, -1])
            offset = self.vocab.code_offsets[level]
            code_log_prob = F.log_softmax(logits.float(), dim=-1)[..., offset:offset + size]  # [B, n_beams, K]
            child, exists = self.trie.extend(level, node)
            candidates = (log_prob[..., None] + code_log_prob).masked_fill(~exists, float("-inf"))
            log_prob, pick = candidates.flatten(1).topk(min(width, n_beams * size), dim=1)
            parent, code = pick // size, pick % size
            node = child.flatten(1).gather(1, pick)
            beams = torch.cat([beams.gather(1, parent[..., None].expand(-1, -1, beams.shape[2])),
                               (offset + code)[..., None]], dim=2)
        items = self.trie.leaf_item[node].masked_fill(log_prob == float("-inf"), -1)
        missing = width - items.shape[1]  # fewer candidates than the width at some level
        return F.pad(items, (0, missing), value=-1), F.pad(log_prob, (0, missing), value=float("-inf"))

    def rank(self, batch: Batch, k: int) -> torch.Tensor:
        """[B, k] item ids by beam log-probability, conditioned on ``batch["target_behaviors"]``;
        -1 where fewer than k valid items exist. Call ``eval()`` first (dropout)."""
        items, _ = self.beam_search(batch, max(self.cfg.beam_size, k))
        return items[:, :k]


def check_codes(codes: np.ndarray, codebook_sizes: list[int], n_items: int) -> None:
    """Raise ValueError unless ``codes`` is [n_items, D] with level-l codes in [0, codebook_sizes[l])."""
    if not codebook_sizes:
        raise ValueError("codebook_sizes is empty: items need at least one code level")
    if codes.ndim != 2 or codes.shape != (n_items, len(codebook_sizes)):
        raise ValueError(f"codes must have shape [n_items={n_items}, levels={len(codebook_sizes)}], got {codes.shape}")
    bad = (codes < 0) | (codes >= np.asarray(codebook_sizes, dtype=np.int64))
    if bad.any():
        item, level = np.argwhere(bad)[0]
        raise ValueError(f"item {item} has code {codes[item, level]} at level {level}, outside "
                         f"[0, {codebook_sizes[level]}) ({int(bad.sum())} bad codes in all)")


def cut_leading_padding(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Drop the leading columns that are ``<pad>`` in every row -> (the rest, how many were dropped).

    Real tokens never attend to padding keys, so with positions starting at the number dropped the
    model computes the same for every real token, without the work on rows' shared padding (a batch
    whose histories are all shorter than ``history_steps``). The beam search uses it."""
    real_columns = (tokens != PAD).any(dim=0)
    first = int(real_columns.int().argmax()) if bool(real_columns.any()) else tokens.shape[1] - 1
    return tokens[:, first:], first


def last_columns(x: torch.Tensor, n: int) -> torch.Tensor:
    """The last ``n`` columns of a left-padded [B, L] tensor, left-padded with 0 when L < n."""
    return F.pad(x[:, -n:], (max(0, n - x.shape[1]), 0))


def init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
