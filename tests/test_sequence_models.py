"""SASRec and the behavior-set model on tiny hand-built batches: shapes, padding, causality,
determinism, overfitting a deterministic rule, target-behavior conditioning and the loss weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipelines.augmentation.behavior_ops import auxiliary_flipping, cooccurrence_addition, frequency_masking
from pipelines.training.models.base import DatasetInfo, Recommender
from pipelines.training.models.behavior_set import (BehaviorSetConfig, BehaviorSetModel, default_augment,
                                                    multi_hot, richness_weights)
from pipelines.training.models.layers import TransformerEncoder, attention_mask
from pipelines.training.models.sasrec import SASRec, SASRecConfig, next_item_labels

torch.set_num_threads(1)

N_ITEMS, N_BEHAVIORS, MAX_LEN = 20, 3, 8
INFO = DatasetInfo(n_items=N_ITEMS, n_users=8, n_behaviors=N_BEHAVIORS, max_len=MAX_LEN)
MODELS = {
    "sasrec": lambda info=INFO: SASRec(info, SASRecConfig(hidden=32)),
    "sasrec_sampled_softmax": lambda info=INFO: SASRec(info, SASRecConfig(hidden=32, negatives=8)),
    "behavior_set": lambda info=INFO: BehaviorSetModel(info, BehaviorSetConfig(hidden=32, negatives=10)),
}


def tiny_batch() -> dict[str, torch.Tensor]:
    """B=4, L=6: full, partly padded, one step, and an all-padding row (items hold item_id + 1)."""
    items = torch.tensor([[3, 5, 7, 2, 9, 4],
                          [0, 0, 0, 8, 1, 6],
                          [0, 0, 0, 0, 0, 20],
                          [0, 0, 0, 0, 0, 0]])
    behaviors = torch.tensor([[1, 3, 1, 5, 7, 2],
                              [0, 0, 0, 1, 2, 3],
                              [0, 0, 0, 0, 0, 4],
                              [0, 0, 0, 0, 0, 0]])
    return {"items": items, "behaviors": behaviors, "lengths": (items > 0).sum(1),
            "target_items": torch.tensor([11, 12, 13, 14]), "target_behaviors": torch.tensor([1, 3, 7, 2]),
            "user_ids": torch.tensor([0, 1, 2, 3])}


def left_pad(batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    out = dict(batch)
    for key in ("items", "behaviors"):
        out[key] = torch.cat([torch.zeros(batch[key].shape[0], extra, dtype=batch[key].dtype), batch[key]], dim=1)
    return out


def build(name: str, seed: int = 0, info: DatasetInfo = INFO) -> Recommender:
    torch.manual_seed(seed)
    return MODELS[name](info)


@pytest.mark.parametrize("name", MODELS)
def test_loss_and_score_shapes_without_nan(name):
    model = build(name)
    batch = tiny_batch()
    loss = model.loss(batch)
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        scores = model.score(batch)
    assert scores.shape == (4, N_ITEMS) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()  # including the all-padding row
    assert model.rank(batch, 5).shape == (4, 5)


@pytest.mark.parametrize("name", MODELS)
def test_batch_of_only_padding_gives_a_finite_loss(name):
    batch = tiny_batch()
    batch = {k: v[3:] for k, v in batch.items()}
    assert torch.isfinite(build(name).loss(batch))


@pytest.mark.parametrize("name", MODELS)
def test_extra_left_padding_does_not_change_scores(name):
    model = build(name).eval()
    batch = tiny_batch()
    with torch.no_grad():
        a = model.score(batch)
        b = model.score(left_pad(batch, MAX_LEN - 6))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_padding_content_is_invisible(name):
    """What sits in padded steps' behavior column must not matter (items are 0 there)."""
    model = build(name).eval()
    batch = tiny_batch()
    noisy = dict(batch, behaviors=torch.where(batch["items"] > 0, batch["behaviors"], 7))
    with torch.no_grad():
        torch.testing.assert_close(model.score(batch), model.score(noisy), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_score_ignores_the_target_item(name):
    model = build(name).eval()
    batch = tiny_batch()
    with torch.no_grad():
        a = model.score(batch)
        b = model.score(dict(batch, target_items=torch.tensor([1, 2, 3, 4])))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_loss(name):
    losses = [build(name, seed=3).train().loss(tiny_batch()) for _ in range(2)]
    assert torch.equal(losses[0], losses[1])
    assert not torch.equal(losses[0], build(name, seed=4).train().loss(tiny_batch()))


@pytest.mark.parametrize("name", MODELS)
def test_model_survives_deepcopy(name):
    model = build(name)
    model.loss(tiny_batch())
    twin = copy.deepcopy(model)
    assert torch.equal(twin.eval().score(tiny_batch()), model.eval().score(tiny_batch()))


def chain_dataset(n_users: int = 8, length: int = 5) -> dict[str, torch.Tensor]:
    """Each user walks a chain item -> item + 1 (mod 20); histories have 2..5 steps (left-padded),
    so the next item is always a deterministic function of the last one."""
    start = torch.arange(n_users) * 2 % N_ITEMS
    lengths = 2 + torch.arange(n_users) % (length - 1)
    ids = (start[:, None] + torch.arange(length)[None, :] - (length - lengths[:, None])) % N_ITEMS
    real = torch.arange(length)[None, :] >= (length - lengths[:, None])
    items = torch.where(real, ids + 1, 0)
    g = torch.Generator().manual_seed(1)
    behaviors = torch.where(real, torch.randint(1, 2 ** N_BEHAVIORS, (n_users, length), generator=g), 0)
    return {"items": items, "behaviors": behaviors, "lengths": lengths,
            "target_items": (ids[:, -1] + 1) % N_ITEMS + 1, "target_behaviors": torch.ones(n_users, dtype=torch.long),
            "user_ids": torch.arange(n_users)}


@pytest.mark.parametrize("name", MODELS)
def test_overfits_a_deterministic_rule(name):
    model = build(name, info=DatasetInfo(N_ITEMS, 8, N_BEHAVIORS, 5))
    batch = chain_dataset()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        top = model.score(batch).argmax(dim=1)
    assert torch.equal(top, batch["target_items"] - 1)


def test_behavior_set_score_depends_on_target_behaviors():
    model = build("behavior_set").eval()
    batch = tiny_batch()
    with torch.no_grad():
        a = model.score(batch)
        b = model.score(dict(batch, target_behaviors=torch.tensor([4, 4, 4, 4])))
    assert all(not torch.allclose(a[i], b[i]) for i in range(4))  # every row's target set changed


def test_sasrec_ignores_behaviors():
    model = build("sasrec").eval()
    batch = tiny_batch()
    with torch.no_grad():
        assert torch.equal(model.score(batch), model.score(dict(batch, behaviors=batch["behaviors"] * 0 + 1,
                                                                  target_behaviors=torch.tensor([4, 4, 4, 4]))))


def test_behavior_set_history_behaviors_matter():
    model = build("behavior_set").eval()
    batch = tiny_batch()
    flipped = dict(batch, behaviors=torch.where(batch["items"] > 0, 7 - batch["behaviors"].clamp(max=6), 0))
    with torch.no_grad():
        assert not torch.allclose(model.score(batch)[:3], model.score(flipped)[:3])


def test_sasrec_labels_are_the_sequence_shifted_by_one():
    batch = tiny_batch()
    labels = next_item_labels(batch["items"], batch["target_items"])
    assert labels.tolist() == [[5, 7, 2, 9, 4, 11], [0, 0, 0, 1, 6, 12], [0, 0, 0, 0, 0, 13], [0] * 6]


def test_richness_weights_favour_richer_next_sets():
    masks = torch.tensor([1, 2, 3, 5, 7, 0])  # sizes 1, 1, 2, 2, 3, (empty)
    assert richness_weights(masks, 3, 0.5).tolist() == [1.0, 1.0, 1.5, 1.5, 2.0, 1.0]
    assert richness_weights(masks, 3, 0.0).tolist() == [1.0] * 6
    assert multi_hot(torch.tensor([5]), 3).tolist() == [[1.0, 0.0, 1.0]]


def test_loss_is_the_richness_weighted_mean_of_position_losses():
    torch.manual_seed(0)
    model = BehaviorSetModel(INFO, BehaviorSetConfig(hidden=16, negatives=5, richness_weight=0.5)).eval()
    batch = tiny_batch()
    per_position, next_masks = model.next_item_losses(batch)
    # real positions row by row: row 0 predicts 3,1,5,7,2 then the target 1; row 1: 2,3 then 3; row 2: 7
    assert next_masks.tolist() == [3, 1, 5, 7, 2, 1, 2, 3, 3, 7]
    weights = torch.tensor([1.5, 1, 1.5, 2, 1, 1, 1, 1.5, 1.5, 2])
    for richness, w in ((0.5, weights), (0.0, torch.ones(10))):
        model.cfg.richness_weight = richness
        model.reset_sampler()
        expected = (w * per_position).sum() / w.sum()
        torch.testing.assert_close(model.loss(batch), expected)
    model.cfg.richness_weight = 0.5
    model.reset_sampler()
    weighted = model.loss(batch)
    rich = weights > 1
    # the weighted mean moves from the plain mean towards the mean over rich positions
    plain, rich_mean = per_position.mean(), per_position[rich].mean()
    assert (weighted - plain) * (rich_mean - plain) > 0


def test_contrastive_loss_runs_and_is_finite():
    stats_M = np.array([[0, 5, 2], [5, 0, 1], [2, 1, 0]])
    augment = default_augment(stats_M, np.array([0.5, 0.3, 0.2]), auxiliary=[0], ratio=0.5, seed=0)
    torch.manual_seed(0)
    model = BehaviorSetModel(INFO, BehaviorSetConfig(hidden=16, negatives=5, contrastive_weight=0.5), augment=augment)
    batch = tiny_batch()
    contrastive = model.contrastive_loss(batch["items"], batch["behaviors"], model.user_emb(batch["user_ids"]))
    assert torch.isfinite(contrastive) and contrastive > 0
    total = model.loss(batch)
    assert torch.isfinite(total)
    total.backward()
    assert model.pair_bias.table.grad is not None


def test_augment_that_breaks_padding_is_rejected():
    torch.manual_seed(0)
    model = BehaviorSetModel(INFO, BehaviorSetConfig(hidden=16, contrastive_weight=1.0), augment=np.ones_like)
    with pytest.raises(ValueError, match="augment"):
        model.loss(tiny_batch())


def test_default_augment_is_seeded_and_keeps_padding():
    x = np.zeros((3, 4, 3), dtype=np.int8)
    x[:, 1:, 0] = 1
    x[0, 2, 1] = 1
    args = (np.array([[0, 3, 1], [3, 0, 1], [1, 1, 0]]), np.array([0.4, 0.4, 0.2]), [0], 1.0)
    a, b = default_augment(*args, seed=7), default_augment(*args, seed=7)
    views_a, views_b = [a(x) for _ in range(6)], [b(x) for _ in range(6)]
    assert all(np.array_equal(u, v) for u, v in zip(views_a, views_b, strict=True))
    assert all(np.array_equal(v.any(-1), x.any(-1)) for v in views_a)
    assert any(not np.array_equal(v, x) for v in views_a)
    rng = np.random.default_rng(0)  # the three operators exist with the signatures default_augment uses
    for op, extra in ((cooccurrence_addition, args[0]), (frequency_masking, args[1]), (auxiliary_flipping, args[2])):
        assert op(x, extra, 0.0, rng).shape == x.shape


def test_attention_never_mixes_padding_into_real_steps():
    keep = torch.tensor([[False, False, True, True]])
    allowed = attention_mask(keep)[0, 0]
    assert allowed.tolist() == [[True, False, False, False], [False, True, False, False],
                                [False, False, True, False], [False, False, True, True]]
    torch.manual_seed(0)
    encoder = TransformerEncoder(8, 1, 2, 0.0).eval()
    x = torch.randn(1, 4, 8)
    y = encoder(x, keep)
    y_changed = encoder(torch.cat([torch.randn(1, 2, 8), x[:, 2:]], dim=1), keep)
    torch.testing.assert_close(y[:, 2:], y_changed[:, 2:])
    bias = torch.randn(1, 2, 4, 4)
    assert torch.isfinite(encoder(x, torch.zeros(1, 4, dtype=torch.bool), bias)).all()


def states(model: Recommender, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(model, SASRec):
        return model.encode(batch["items"])
    return model.encode(batch["items"], multi_hot(batch["behaviors"], N_BEHAVIORS), model.user_emb(batch["user_ids"]))


@pytest.mark.parametrize("name", MODELS)
def test_training_states_do_not_see_later_steps(name):
    """Position t's state (which predicts step t + 1 in training) ignores steps after t."""
    model = build(name).eval()
    batch = tiny_batch()
    later = dict(batch, items=batch["items"].clone(), behaviors=batch["behaviors"].clone())
    later["items"][0, 4:] = torch.tensor([17, 18])
    later["behaviors"][0, 4:] = torch.tensor([4, 4])
    with torch.no_grad():
        a, b = states(model, batch), states(model, later)
    torch.testing.assert_close(a[0, :4], b[0, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(a[0, 4:], b[0, 4:])


def test_behavior_pair_bias_is_the_mean_over_behavior_pairs():
    from pipelines.training.models.behavior_set import BehaviorPairBias

    bias = BehaviorPairBias(n_behaviors=2, heads=1)
    with torch.no_grad():
        bias.table.copy_(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    sets = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]])  # {0, 1}, {1}, padding
    out = bias(sets)[0, 0]
    # ({0,1}, {1}): mean(table[0,1], table[1,1]) = 3; ({1}, {0,1}): mean(3, 4) = 3.5; padding: 0
    assert out.tolist() == [[2.5, 3.0, 0.0], [3.5, 4.0, 0.0], [0.0, 0.0, 0.0]]


def test_behavior_aware_attention_and_user_gates_reach_the_scores():
    model = build("behavior_set").eval()
    batch = tiny_batch()
    with torch.no_grad():
        before = model.score(batch)
        model.pair_bias.table.normal_()
        after_bias = model.score(batch)
        model.set_emb.gate.weight.normal_()
        other_users = dict(batch, user_ids=torch.tensor([4, 5, 6, 7]))
        assert not torch.allclose(model.score(batch)[:3], model.score(other_users)[:3])
    assert not torch.allclose(before[:3], after_bias[:3])


def test_sasrec_sampled_softmax_with_every_item_falls_back_to_the_full_softmax():
    torch.manual_seed(0)
    full = SASRec(INFO, SASRecConfig(hidden=32, dropout=0.0))
    torch.manual_seed(0)
    all_items = SASRec(INFO, SASRecConfig(hidden=32, dropout=0.0, negatives=N_ITEMS))
    batch = tiny_batch()
    assert torch.allclose(full.loss(batch), all_items.loss(batch))


def test_fused_full_softmax_matches_plain_cross_entropy():
    """The chunked, fused softmax gives the same loss and gradients as F.cross_entropy over full logits."""
    from pipelines.training.models.layers import full_softmax_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 50, (37,))
    plain = torch.nn.functional.cross_entropy(h @ w.T, target, reduction="sum")
    (gh, gw) = torch.autograd.grad(plain * 1.7, (h, w))
    for chunk in (1, 5, 37, 64):
        fused = full_softmax_cross_entropy(h, w, target, chunk)
        (fh, fw) = torch.autograd.grad(fused * 1.7, (h, w))
        torch.testing.assert_close(fused, plain)
        torch.testing.assert_close(fh, gh)
        torch.testing.assert_close(fw, gw)
    empty = full_softmax_cross_entropy(h[:0], w, target[:0])
    assert float(empty.detach()) == 0.0


def test_sasrec_fused_softmax_trains_like_the_plain_path():
    """Same seed, same batches: the default (fused) and plain full-softmax SASRec reach the same weights.
    (SGD, not Adam: Adam rescales gradients that are zero up to rounding, e.g. the attention key bias's,
    into full-size steps, which would compare rounding noise.)"""
    batch = tiny_batch()
    states = {}
    for chunk in (0, 32, 3):
        torch.manual_seed(0)
        model = SASRec(INFO, SASRecConfig(hidden=32, dropout=0.0, softmax_chunk=chunk))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = model.loss(batch)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        states[chunk] = (losses, model.state_dict())
    for chunk in (32, 3):
        np.testing.assert_allclose(states[chunk][0], states[0][0], rtol=1e-5)
        for key, value in states[0][1].items():
            torch.testing.assert_close(states[chunk][1][key], value, rtol=1e-4, atol=1e-5)


def test_candidate_logits_same_by_matmul_or_gather(monkeypatch):
    """Small catalogues score candidates through one matmul over every item, large ones gather the
    candidates' embeddings: the same logits and gradients either way (the behavior-set models' loss)."""
    from pipelines.training.models import layers

    torch.manual_seed(0)
    r, weight = torch.randn(7, 16), torch.randn(30, 16)
    candidates = torch.randint(0, 30, (7, 5))
    out = {}
    for ratio in (10**6, 0):
        monkeypatch.setattr(layers, "FULL_LOGITS_RATIO", ratio)
        w = weight.clone().requires_grad_(True)
        logits = layers.candidate_logits(r, w, candidates)
        (logits * torch.arange(5.0)).sum().backward()
        out[ratio] = (logits.detach(), w.grad)
    torch.testing.assert_close(out[0][0], out[10**6][0])
    torch.testing.assert_close(out[0][1], out[10**6][1])
    torch.testing.assert_close(out[0][0], (weight[candidates] * r[:, None]).sum(-1))
