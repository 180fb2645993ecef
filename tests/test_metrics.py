"""Ranking metrics on hand-worked examples: pessimistic ties, history masking, ranked lists."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.training.metrics import MISS, hit_rate, mrr, ndcg, pessimistic_ranks, ranks_from_lists, summarize

LOG2_3 = 1.584962500721156  # log2(3): gain of rank 2 is 1/log2(3) = 0.6309297535714575
LOG2_4 = 2.0                # rank 3
LOG2_6 = 2.584962500721156  # rank 5


def test_ties_count_against_the_target():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2]]).repeat(4, 1)
    # target 1 (0.5): item 2 ties -> rank 2; target 3 (0.2): items 1, 2 ahead -> 3;
    # target 0 (0.1): all three ahead -> 4; target 2 (0.5): item 1 ties -> 2
    ranks = pessimistic_ranks(scores, torch.tensor([1, 3, 0, 2]))
    assert ranks.dtype == torch.int64
    assert ranks.tolist() == [2, 3, 4, 2]
    # a constant scorer puts every target last
    assert pessimistic_ranks(torch.zeros(2, 7), torch.tensor([0, 6])).tolist() == [7, 7]


def test_metrics_by_hand():
    ranks = np.array([2, 3, 4, 2])
    assert hit_rate(ranks, 3) == 0.75
    assert hit_rate(ranks, 1) == 0.0
    assert ndcg(ranks, 3) == pytest.approx((2 / LOG2_3 + 1 / LOG2_4 + 0.0) / 4)  # 0.44046487678572877
    assert ndcg(ranks, 4) == pytest.approx((2 / LOG2_3 + 1 / LOG2_4 + 1 / math.log2(5)) / 4)
    assert mrr(ranks) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 2) / 4)  # 19/48
    assert ndcg(np.array([1]), 10) == 1.0
    # tensors are accepted as well
    assert ndcg(torch.tensor(ranks), 3) == pytest.approx(0.44046487678572877)


def test_summarize_keys_and_values():
    out = summarize(torch.tensor([1, 5, 30]), ks=(5, 10))
    assert list(out) == ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr", "n"]
    assert out["hr@5"] == pytest.approx(2 / 3) and out["hr@10"] == pytest.approx(2 / 3)
    assert out["ndcg@5"] == pytest.approx((1.0 + 1 / LOG2_6) / 3)  # 1/log2(6) = 0.38685280723454163
    assert out["mrr"] == pytest.approx((1 + 1 / 5 + 1 / 30) / 3)
    assert out["n"] == 3


def test_history_masking_removes_items_ahead_but_never_the_target():
    scores = torch.tensor([[0.9, 0.5, 0.8, 0.7, 0.1]])
    target = torch.tensor([1])  # items 0, 2, 3 ahead
    assert pessimistic_ranks(scores, target).tolist() == [4]
    # item 0 removed; -1 = nothing; the target 1 in the list stays ranked
    assert pessimistic_ranks(scores, target, torch.tensor([[0, -1, 1]])).tolist() == [3]
    # duplicates are harmless; an excluded item behind the target (4) changes nothing
    assert pessimistic_ranks(scores, target, torch.tensor([[2, 0, 2, 4]])).tolist() == [2]
    assert pessimistic_ranks(scores, target, torch.full((1, 3), -1)).tolist() == [4]


def test_masking_is_per_row():
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    ranks = pessimistic_ranks(scores, torch.tensor([2, 2]), torch.tensor([[0, 1], [-1, -1]]))
    assert ranks.tolist() == [1, 3]


def test_ranks_match_sorting_when_scores_are_distinct():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 40, generator=g)
    targets = torch.randint(0, 40, (6,), generator=g)
    order = torch.argsort(scores, dim=1, descending=True)
    expected = (order == targets[:, None]).int().argmax(dim=1) + 1
    assert torch.equal(pessimistic_ranks(scores, targets), expected)


def test_nan_scores_and_bad_targets_raise():
    with pytest.raises(ValueError, match="NaN scores in 1 of 2 rows"):
        pessimistic_ranks(torch.tensor([[0.1, 0.2], [float("nan"), 0.3]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        pessimistic_ranks(torch.zeros(1, 3), torch.tensor([3]))
    with pytest.raises(ValueError, match="ranks start at 1"):
        hit_rate(np.array([0, 1]), 5)


def test_empty_input():
    assert pessimistic_ranks(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)).shape == (0,)
    assert ranks_from_lists(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)).shape == (0,)
    assert summarize(np.zeros(0, dtype=np.int64), ks=(10,)) == {"hr@10": 0.0, "ndcg@10": 0.0, "mrr": 0.0, "n": 0}


def test_ranked_lists_with_misses():
    ranked = torch.tensor([[3, 1, 2], [0, -1, -1], [5, 4, 3]])
    targets = torch.tensor([1, 2, 3])
    ranks = ranks_from_lists(ranked, targets)
    assert ranks.tolist() == [2, MISS, 3]
    assert hit_rate(ranks, 2) == pytest.approx(1 / 3)
    assert ndcg(ranks, 3) == pytest.approx((1 / LOG2_3 + 0.0 + 1 / LOG2_4) / 3)
    assert mrr(ranks) == pytest.approx((1 / 2 + 0.0 + 1 / 3) / 3)  # truncated at k = 3: the miss adds 0


def test_ranked_lists_masking_and_repeats():
    ranked = torch.tensor([[3, 1, 2], [5, 4, 3], [4, 4, 1]])
    targets = torch.tensor([1, 3, 1])
    exclude = torch.tensor([[3, -1], [5, 3], [-1, -1]])
    # row 0: 3 excluded -> 1 moves to the front; row 1: 5 excluded, 3 is the target and stays -> 2;
    # row 2: the repeated 4 counts once -> 2
    assert ranks_from_lists(ranked, targets, exclude).tolist() == [1, 2, 2]


def test_default_rank_pads_with_minus_one_beyond_the_catalogue():
    from pipelines.training.models.base import DatasetInfo
    from pipelines.training.models.popularity import Popularity

    model = Popularity(DatasetInfo(n_items=3, n_users=1, n_behaviors=1, max_len=2))
    ranked = model.rank({"items": torch.zeros(1, 2, dtype=torch.long)}, 5)
    assert ranked.shape == (1, 5) and ranked[0, 3:].tolist() == [-1, -1]
