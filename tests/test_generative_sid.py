"""GenerativeSID: vocabulary, sequence layout, constrained beam search, learning and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.training.models.base import Batch, DatasetInfo
from pipelines.training.models.generative_sid import GenerativeSID, GenerativeSIDConfig

torch.set_num_threads(1)

# 4 items with 2-level codes; level a has 3 codes, level b has 2
SMALL_CODES = np.array([[0, 0], [0, 1], [1, 0], [2, 1]])
SMALL_SIZES = [3, 2]


def make_model(codes: np.ndarray, sizes: list[int], n_behaviors: int = 2, seed: int = 0, **cfg) -> GenerativeSID:
    torch.manual_seed(seed)
    info = DatasetInfo(n_items=len(codes), n_users=10, n_behaviors=n_behaviors, max_len=8)
    return GenerativeSID(info, codes, sizes, GenerativeSIDConfig(**cfg))


def make_batch(items: list[list[int]], behaviors: list[list[int]], target_items: list[int],
               target_behaviors: list[int]) -> Batch:
    """``items`` as item_id + 1 (0 = padding), left-padded, like the model-ready arrays."""
    items_t = torch.tensor(items)
    return {"items": items_t, "behaviors": torch.tensor(behaviors), "lengths": (items_t > 0).sum(1),
            "target_items": torch.tensor(target_items), "target_behaviors": torch.tensor(target_behaviors),
            "user_ids": torch.arange(len(items))}


def unique_codes(rng: np.random.Generator, n: int, sizes: list[int]) -> tuple[np.ndarray, list[int]]:
    """Random codes for the first levels plus a dedup counter level (as the semantic-ID stage does)."""
    head = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    _, group = np.unique(head, axis=0, return_inverse=True)
    group = group.reshape(-1)
    counter = np.zeros(n, dtype=np.int64)
    for g in np.unique(group):
        counter[group == g] = np.arange((group == g).sum())
    return np.column_stack([head, counter]), [*sizes, int(counter.max()) + 1]


def random_batch(rng: np.random.Generator, n_rows: int, n_items: int, length: int, n_behaviors: int) -> Batch:
    lengths = rng.integers(0, length + 1, n_rows)
    items = rng.integers(1, n_items + 1, (n_rows, length))
    behaviors = rng.integers(1, 2 ** n_behaviors, (n_rows, length))
    pad = np.arange(length)[None, :] < (length - lengths)[:, None]
    items[pad], behaviors[pad] = 0, 0
    return make_batch(items.tolist(), behaviors.tolist(), rng.integers(1, n_items + 1, n_rows).tolist(),
                      rng.integers(1, 2 ** n_behaviors, n_rows).tolist())


def brute_force_log_probs(model: GenerativeSID, batch: Batch) -> torch.Tensor:
    """[B, n_items] log-probability of each item's whole code tuple, by teacher forcing."""
    D = model.levels
    out = []
    with torch.no_grad():
        for item in range(model.info.n_items):
            forced = {**batch, "target_items": torch.full_like(batch["target_items"], item + 1)}
            tokens = model.sequence(forced)
            log_probs = F.log_softmax(model(tokens[:, :-1]), dim=-1)[:, -D:]
            out.append(log_probs.gather(2, tokens[:, -D:, None]).squeeze(2).sum(1))
    return torch.stack(out, dim=1)


def test_vocabulary_spelling():
    model = make_model(SMALL_CODES, SMALL_SIZES, n_behaviors=2)
    assert model.vocabulary() == ["<pad>", "<bos>", "<beh_0>", "<beh_1>", "<beh_2>", "<beh_3>",
                                  "<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>"]
    assert model.token_emb.num_embeddings == 11


def test_sequence_layout_on_one_row():
    model = make_model(SMALL_CODES, SMALL_SIZES, n_behaviors=2, history_steps=3)
    # window of 4 steps: padding, padding, item 2 (behaviors 1), item 0 (behaviors 3); target item 3 as behavior 2
    batch = make_batch([[0, 0, 3, 1]], [[0, 0, 1, 3]], target_items=[4], target_behaviors=[2])
    names = model.vocabulary()
    assert [names[t] for t in model.sequence(batch)[0].tolist()] == [
        "<pad>", "<pad>", "<pad>", "<bos>",
        "<beh_1>", "<a_1>", "<b_0>",
        "<beh_3>", "<a_0>", "<b_0>",
        "<beh_2>", "<a_2>", "<b_1>"]
    assert model.sequence(batch).shape[1] == model.block_size
    assert torch.equal(model.prompt(batch), model.sequence(batch)[:, :-2])


def test_sequence_keeps_the_last_history_steps():
    model = make_model(SMALL_CODES, SMALL_SIZES, n_behaviors=2, history_steps=2)
    batch = make_batch([[2, 3, 4]], [[1, 2, 3]], target_items=[1], target_behaviors=[1])
    names = model.vocabulary()
    assert [names[t] for t in model.sequence(batch)[0].tolist()] == [
        "<bos>", "<beh_2>", "<a_1>", "<b_0>", "<beh_3>", "<a_2>", "<b_1>", "<beh_1>", "<a_0>", "<b_0>"]


def test_rejects_duplicate_tuples_and_out_of_range_codes():
    with pytest.raises(ValueError, match="share a code tuple"):
        make_model(np.array([[0, 1], [0, 1]]), [2, 2])
    with pytest.raises(ValueError, match="item 1 has code 2 at level 1"):
        make_model(np.array([[0, 1], [1, 2]]), [2, 2])


def test_beam_search_with_random_weights_returns_distinct_valid_items():
    rng = np.random.default_rng(0)
    codes, sizes = unique_codes(rng, 40, [4, 3])
    model = make_model(codes, sizes, n_behaviors=3, beam_size=10, dropout=0.0).eval()
    batch = random_batch(rng, 16, 40, 6, 3)
    ranked = model.rank(batch, 10)
    assert ranked.shape == (16, 10)
    assert ((ranked >= 0) & (ranked < 40)).all()
    assert all(len(set(row)) == 10 for row in ranked.tolist())
    # the reported log-probabilities are the teacher-forced ones of the returned items
    items, log_probs = model.beam_search(batch, 10)
    exact = brute_force_log_probs(model, batch).gather(1, items)
    torch.testing.assert_close(log_probs, exact, rtol=1e-5, atol=1e-5)


class FixedLogits(torch.nn.Module):
    """An output head that ignores the hidden state: the same logits everywhere."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*hidden.shape[:-1], -1)


def test_beam_never_follows_invalid_codes_the_model_prefers():
    # items: (0,0) (0,1) (1,2) (2,3); code a_3 and the pairs (0,3), (0,2), (1,3) ... are no item
    codes = np.array([[0, 0], [0, 1], [1, 2], [2, 3]])
    model = make_model(codes, [4, 4], n_behaviors=1, beam_size=2).eval()
    bias = torch.zeros(model.vocab.size)
    a, b = model.vocab.code_offsets
    bias[[a + 3, a + 0, a + 1]] = torch.tensor([50.0, 10.0, 5.0])
    bias[[b + 3, b + 2, b + 1]] = torch.tensor([50.0, 20.0, 3.0])
    bias[:a] = 100.0  # special and behavior tokens are never codes
    model.lm_head = FixedLogits(bias)
    batch = make_batch([[1, 2]], [[1, 1]], target_items=[1], target_behaviors=[1])
    # level a keeps a_0 (10) and a_1 (5); then (1,2) = 5 + 20 beats (0,1) = 10 + 3 beats (0,0) = 10
    assert model.rank(batch, 2).tolist() == [[2, 1]]


def test_wide_beam_returns_every_item_once_in_exact_order():
    rng = np.random.default_rng(1)
    codes, sizes = unique_codes(rng, 12, [3, 2])
    model = make_model(codes, sizes, n_behaviors=2, beam_size=16, dropout=0.0).eval()
    batch = random_batch(rng, 5, 12, 4, 2)
    ranked = model.rank(batch, 16)
    assert (ranked[:, 12:] == -1).all()
    assert all(sorted(row) == list(range(12)) for row in ranked[:, :12].tolist())
    exact = brute_force_log_probs(model, batch)
    assert torch.equal(ranked[:, :12], exact.argsort(dim=1, descending=True))


def test_fewer_items_than_k_pads_with_minus_one():
    model = make_model(SMALL_CODES, SMALL_SIZES, beam_size=3).eval()
    batch = make_batch([[1, 2]], [[1, 2]], target_items=[3], target_behaviors=[1])
    ranked = model.rank(batch, 6)  # k above beam_size widens the beam to k
    assert sorted(ranked[0, :4].tolist()) == [0, 1, 2, 3] and ranked[0, 4:].tolist() == [-1, -1]


def test_overfits_a_deterministic_next_item_rule():
    # 12 items, 3-level codes; the next item is always (5 * last + 1) % 12 and an item's behaviors are
    # 1 + item % 3 (history and target); every chain of 1-4 history steps from every start item
    codes = np.array([[i // 4, (i // 2) % 2, i % 2] for i in range(12)])
    items, behaviors, targets = [], [], []
    for start in range(12):
        for length in range(1, 5):
            chain = [start]
            for _ in range(length):
                chain.append((5 * chain[-1] + 1) % 12)
            items.append([0] * (4 - length) + [i + 1 for i in chain[:-1]])
            behaviors.append([0] * (4 - length) + [1 + i % 3 for i in chain[:-1]])
            targets.append(chain[-1])
    batch = make_batch(items, behaviors, [i + 1 for i in targets], [1 + i % 3 for i in targets])
    model = make_model(codes, [3, 2, 2], n_behaviors=2, dropout=0.0, history_steps=4, beam_size=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
    # the floor is above 0: a chain's first item is known only up to its behavior (4 candidates),
    # log(4) nats over 3 codes in 504 code tokens: 48 * log(4) / 504 = 0.132
    assert loss.item() < 0.14
    assert torch.equal(model.eval().rank(batch, 5)[:, 0], batch["target_items"] - 1)


def test_same_seed_same_loss_and_ranking():
    rng = np.random.default_rng(2)
    codes, sizes = unique_codes(rng, 30, [4, 4])
    batch = random_batch(rng, 8, 30, 5, 2)

    def run() -> tuple[float, torch.Tensor]:
        model = make_model(codes, sizes, seed=7)  # dropout 0.1: training uses the torch RNG too
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(3):
            optimizer.zero_grad()
            loss = model.loss(batch)
            loss.backward()
            optimizer.step()
        return loss.item(), model.eval().rank(batch, 10)

    (loss_a, ranked_a), (loss_b, ranked_b) = run(), run()
    assert loss_a == loss_b
    assert torch.equal(ranked_a, ranked_b)


def test_all_padding_history_row():
    model = make_model(SMALL_CODES, SMALL_SIZES, history_steps=3, beam_size=4)
    batch = make_batch([[0, 0, 0], [0, 2, 3]], [[0, 0, 0], [0, 1, 2]], target_items=[2, 4], target_behaviors=[1, 3])
    names = model.vocabulary()
    expected = ["<pad>"] * 9 + ["<bos>", "<beh_1>", "<a_0>", "<b_1>"]
    assert [names[t] for t in model.sequence(batch)[0].tolist()] == expected
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    ranked = model.eval().rank(batch, 4)
    assert all(sorted(row) == [0, 1, 2, 3] for row in ranked.tolist())


def test_cutting_the_padding_all_rows_share_does_not_change_the_beams(monkeypatch):
    """Histories all shorter than ``history_steps``: the beam search drops the shared leading
    padding; with the cut switched off it gives the same items and log-probabilities."""
    from pipelines.training.models import generative_sid

    rng = np.random.default_rng(4)
    codes, sizes = unique_codes(rng, 30, [4, 4])
    batch = random_batch(rng, 12, 30, 4, 2)  # at most 4 steps, history_steps 10
    model = make_model(codes, sizes, history_steps=10, beam_size=12).eval()
    prompt = model.prompt(batch)
    cut, first = generative_sid.cut_leading_padding(prompt)
    assert first >= 5 * 3 and torch.equal(cut, prompt[:, first:])  # at least 6 steps of 3 tokens cut
    with torch.no_grad():
        items, log_probs = model.beam_search(batch, 12)
        monkeypatch.setattr(generative_sid, "cut_leading_padding", lambda tokens: (tokens, 0))
        full_items, full_log_probs = model.beam_search(batch, 12)
    assert torch.equal(items, full_items)
    assert torch.allclose(log_probs, full_log_probs, atol=1e-5)


def test_loss_is_the_weighted_mean_of_code_token_cross_entropies_over_the_whole_vocabulary():
    """The loss scores only positions whose label is a code; it equals the weighted mean of the
    full-vocabulary cross-entropy at every position (zero weight on behavior tokens and padding)."""
    rng = np.random.default_rng(5)
    codes, sizes = unique_codes(rng, 30, [4, 4])
    batch = random_batch(rng, 10, 30, 6, 2)
    model = make_model(codes, sizes, history_steps=4, target_weight=2.0).eval()
    tokens = model.sequence(batch)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    weight = (labels >= model.vocab.code_offsets[0]).float()
    weight[:, -model.levels:] *= 2.0
    with torch.no_grad():
        ce = F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten(), reduction="none").view_as(weight)
        expected = (ce * weight).sum() / weight.sum()
        assert (weight == 0).any() and (weight == 2.0).any()
        assert torch.allclose(model.loss(batch), expected, rtol=1e-6)


def test_score_points_to_rank():
    model = make_model(SMALL_CODES, SMALL_SIZES)
    with pytest.raises(NotImplementedError, match="rank"):
        model.score(make_batch([[1]], [[1]], [2], [1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    rng = np.random.default_rng(3)
    codes, sizes = unique_codes(rng, 30, [4, 4])
    model = make_model(codes, sizes).to("cuda")
    batch = {k: v.to("cuda") for k, v in random_batch(rng, 8, 30, 5, 2).items()}
    model.loss(batch).backward()
    ranked = model.eval().rank(batch, 10)
    assert ranked.device.type == "cuda" and ((ranked >= 0) & (ranked < 30)).all()
