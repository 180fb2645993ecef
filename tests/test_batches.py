"""Batches grouped by history length and trimmed to their longest history: every row exactly once,
the same batches for the same seed, and, for every model, the same losses and ranks as the padded
full-width batches (trimming skips only padding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.training.batches import BATCH_KEYS, batch_rows, iterate, to_batch
from pipelines.training.configs import BehaviorSetConfig, BladeConfig, GenerativeSIDConfig, SASRecConfig, TrainConfig
from pipelines.training.evaluate import _batch_ranks, evaluate
from pipelines.training.models.base import DatasetInfo
from pipelines.training.models.behavior_set import BehaviorSetModel
from pipelines.training.models.blade import Blade
from pipelines.training.models.generative_sid import GenerativeSID
from pipelines.training.models.popularity import Popularity
from pipelines.training.models.recent_history import RecentHistory
from pipelines.training.models.sasrec import SASRec

torch.set_num_threads(1)

N_ITEMS, N_BEHAVIORS, MAX_LEN, N_ROWS = 30, 3, 12, 40
INFO = DatasetInfo(n_items=N_ITEMS, n_users=N_ROWS, n_behaviors=N_BEHAVIORS, max_len=MAX_LEN)
BEHAVIORS = ["click", "cart", "buy"]


def arrays(seed: int = 0, max_history: int = MAX_LEN) -> dict[str, np.ndarray]:
    """Model-ready arrays with histories of 0..max_history steps, left-padded to MAX_LEN."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_history + 1, N_ROWS)
    items = rng.integers(1, N_ITEMS + 1, (N_ROWS, MAX_LEN))
    behaviors = rng.integers(1, 2 ** N_BEHAVIORS, (N_ROWS, MAX_LEN))
    pad = np.arange(MAX_LEN)[None, :] < (MAX_LEN - lengths)[:, None]
    items[pad], behaviors[pad] = 0, 0
    return {"items": items.astype(np.int32), "behaviors": behaviors.astype(np.int32),
            "lengths": lengths.astype(np.int32), "target_items": rng.integers(1, N_ITEMS + 1, N_ROWS).astype(np.int32),
            "target_behaviors": rng.integers(1, 2 ** N_BEHAVIORS, N_ROWS).astype(np.int32),
            "user_ids": np.arange(N_ROWS, dtype=np.int32)}


def sid_codes() -> tuple[np.ndarray, list[int]]:
    """Distinct 3-level codes for the items (the last level is a counter, as the SID stage makes)."""
    head = np.stack([np.arange(N_ITEMS) % 4, (np.arange(N_ITEMS) // 4) % 3], axis=1)
    _, group = np.unique(head, axis=0, return_inverse=True)
    counter = np.zeros(N_ITEMS, dtype=np.int64)
    for g in np.unique(group):
        counter[group.reshape(-1) == g] = np.arange((group.reshape(-1) == g).sum())
    return np.column_stack([head, counter]), [4, 3, int(counter.max()) + 1]


MODELS = {
    "sasrec": lambda: SASRec(INFO, SASRecConfig(hidden=16)),
    "behavior_set": lambda: BehaviorSetModel(INFO, BehaviorSetConfig(hidden=16, negatives=5)),
    "blade": lambda: Blade(INFO, BladeConfig(hidden=16, negatives=5, contrastive_weight=0.0)),
    "generative_sid": lambda: GenerativeSID(INFO, *sid_codes(), GenerativeSIDConfig(hidden=16, history_steps=8, beam_size=8)),
}


def build(name: str):
    torch.manual_seed(0)
    if name == "popularity":
        model = Popularity(INFO)
        model.fit_statistics(arrays(1))
        return model
    if name == "recent_history":
        return RecentHistory(INFO)
    return MODELS[name]()


def test_batch_rows_cover_every_row_once_and_repeat_with_the_seed():
    lengths = np.random.default_rng(3).integers(0, 50, 1000)
    for pools in (0, 1, 4, 100):
        batches = batch_rows(1000, 64, shuffle=True, seed=5, lengths=lengths, length_pools=pools)
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
        assert all(len(b) <= 64 for b in batches)
        again = batch_rows(1000, 64, shuffle=True, seed=5, lengths=lengths, length_pools=pools)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
        other = batch_rows(1000, 64, shuffle=True, seed=6, lengths=lengths, length_pools=pools)
        assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


def test_without_pools_the_batches_are_the_shuffled_order_cut_in_pieces():
    order = np.random.default_rng(7).permutation(10)
    batches = batch_rows(10, 4, shuffle=True, seed=7)
    assert [b.tolist() for b in batches] == [order[:4].tolist(), order[4:8].tolist(), order[8:].tolist()]
    assert [b.tolist() for b in batch_rows(5, 2, shuffle=False, seed=0)] == [[0, 1], [2, 3], [4]]


def test_pools_group_rows_of_similar_length():
    lengths = np.random.default_rng(3).integers(0, 50, 1024)
    plain = batch_rows(1024, 32, shuffle=True, seed=1, lengths=lengths)
    pooled = batch_rows(1024, 32, shuffle=True, seed=1, lengths=lengths, length_pools=8)
    # within a pool of 8 batches the rows are sorted by length, so a batch spans a narrow range
    spread = lambda batches: np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread(pooled) < spread(plain) / 4
    # and the padded width the batches need shrinks
    assert sum(lengths[b].max() for b in pooled) < 0.75 * sum(lengths[b].max() for b in plain)
    # each pool holds the same rows as the plain order's pool: sorting stays inside a pool
    order = np.random.default_rng(1).permutation(1024)
    pools = {frozenset(order[i:i + 256].tolist()) for i in range(0, 1024, 256)}
    for b in pooled:
        assert any(set(b.tolist()) <= pool for pool in pools)
    with pytest.raises(ValueError, match="lengths"):
        batch_rows(10, 2, shuffle=True, seed=0, length_pools=2)
    with pytest.raises(ValueError, match="length_pools"):
        TrainConfig(length_pools=-1)


def test_trimmed_batch_keeps_every_real_step():
    data = arrays()
    rows = np.argsort(data["lengths"])[:10]
    full, trimmed = to_batch(data, rows, "cpu"), to_batch(data, rows, "cpu", trim=True)
    width = max(1, int(data["lengths"][rows].max()))
    assert trimmed["items"].shape == (10, width) and trimmed["behaviors"].shape == (10, width)
    assert torch.equal(trimmed["items"], full["items"][:, -width:])
    assert (full["items"][:, :-width] == 0).all() if width < MAX_LEN else True
    for key in set(BATCH_KEYS) - {"items", "behaviors"}:
        assert torch.equal(trimmed[key], full[key])
    empty = {k: v[data["lengths"] == 0][:3] if v.ndim else v for k, v in data.items()}
    assert to_batch(empty, slice(None), "cpu", trim=True)["items"].shape[1] == 1  # all padding: one column left


@pytest.mark.parametrize("name", [*MODELS, "popularity", "recent_history"])
def test_evaluation_in_length_order_gives_the_padded_batches_ranks(name):
    model = build(name)
    model.eval()
    data = arrays()
    with torch.no_grad():
        padded = torch.cat([_batch_ranks(model, to_batch(data, slice(s, s + 8), "cpu"), 0, 20)
                            for s in range(0, N_ROWS, 8)]).numpy()
        masked = torch.cat([_batch_ranks(model, to_batch(data, slice(s, s + 8), "cpu"), 5, 20)
                            for s in range(0, N_ROWS, 8)]).numpy()
    assert np.array_equal(evaluate(model, data, BEHAVIORS, batch_size=8, beam_k=20).ranks, padded)
    assert np.array_equal(evaluate(model, data, BEHAVIORS, batch_size=8, mask_history=5, beam_k=20).ranks, masked)


@pytest.mark.parametrize("name", MODELS)
def test_training_loss_of_a_trimmed_batch_is_the_padded_batch_loss(name):
    data = arrays(max_history=6)  # every batch has padding columns to trim
    model = build(name)
    model.eval()  # no dropout: the two forward passes must see the same network
    rows = np.arange(16)
    losses = []
    for trim in (False, True):
        if hasattr(model, "_sampler"):
            model._sampler = None  # the negatives' stream restarts: the same negatives for both passes
        torch.manual_seed(1)
        losses.append(model.loss(to_batch(data, rows, "cpu", trim=trim)))
    assert to_batch(data, rows, "cpu", trim=True)["items"].shape[1] <= 6
    assert torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)


def test_training_trims_only_with_length_pools(monkeypatch):
    """Plain training batches keep max_len columns (a narrower batch would draw other dropout masks
    and so change the run); with length pools they are trimmed."""
    from pipelines.training import trainer

    seen: list[tuple[int, bool]] = []
    real_iterate = trainer.iterate

    def spy(*args, **kwargs):
        seen.append((kwargs["length_pools"], kwargs["trim"]))
        return real_iterate(*args, **kwargs)

    monkeypatch.setattr(trainer, "iterate", spy)
    data = arrays(max_history=6)
    for pools in (0, 2):
        cfg = TrainConfig(epochs=1, batch_size=8, length_pools=pools)
        trainer.train(build("sasrec"), data, data, BEHAVIORS, cfg, log=lambda _: None)
    assert seen == [(0, False), (2, True)]


def test_training_iterates_trimmed_batches():
    data = arrays(max_history=6)
    widths = [b["items"].shape[1] for b in iterate(data, 8, shuffle=True, seed=0, device="cpu", trim=True)]
    assert max(widths) <= 6
    assert [b["items"].shape[1] for b in iterate(data, 8, shuffle=True, seed=0, device="cpu")] == [MAX_LEN] * 5
