"""Model-ready sequences on the hand-worked 4-user example."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.sequences import model_ready, splits
from pipelines.sequences.leakage import apply_filter, find_leaks
from schemas import columns as c
from test_sequences_splits_leakage import BUY, CART, PV, make_steps


def test_test_histories_are_left_padded_and_skip_leaking_steps(registry):
    cfg = registry.get("taobao")
    steps = make_steps()
    ex = splits.leave_one_out(steps, cfg).examples
    filtered = apply_filter(ex, find_leaks(steps, ex, cfg, "all", 4), "all")
    arrays = model_ready.build(steps, filtered, max_len=4)
    # user 3 test (target K=7 at step 7): window steps 3..6 = M pv, M buy, K pv (leak, dropped), N pv
    i = 5
    assert arrays["items"][i].tolist() == [0, 9 + 1, 9 + 1, 10 + 1]  # items M=9, M=9, N=10, shifted by one
    assert arrays["behaviors"][i].tolist() == [0, PV, BUY, PV]
    assert arrays["lengths"][i] == 3 and arrays["target_items"][i] == 7 + 1 and arrays["target_behaviors"][i] == BUY
    # time gaps in seconds between kept steps (steps are 1e6 ms apart; step 5 dropped -> 2000 s)
    assert arrays["time_gaps"][i].tolist() == [0, 0, 1000, 2000]
    # user 0 valid: history = step 0 only, and it leaks -> empty history
    assert arrays["lengths"][0] == 0 and arrays["items"][0].tolist() == [0, 0, 0, 0]


def test_arrays_do_not_depend_on_the_order_of_users_and_skip_users_without_steps(registry):
    """The binary search for each user's first step (users ascending) and the group-by it falls back
    to (any user order) give the same arrays; an example whose user has no steps gets an empty history."""
    cfg = registry.get("taobao")
    steps = make_steps()
    ex = splits.leave_one_out(steps, cfg).examples
    filtered = apply_filter(ex, find_leaks(steps, ex, cfg, "all", 4), "all")
    ascending = model_ready.build(steps, filtered, max_len=4)
    users = steps[c.USER_ID].unique(maintain_order=True).to_list()
    shuffled = pl.concat([steps.filter(pl.col(c.USER_ID) == u) for u in reversed(users)])
    assert model_ready.first_rows(shuffled, filtered).tolist() != model_ready.first_rows(steps, filtered).tolist()
    reordered = model_ready.build(shuffled, filtered, max_len=4)
    assert all(np.array_equal(ascending[k], reordered[k]) for k in ascending)
    missing = model_ready.build(steps.filter(pl.col(c.USER_ID) != users[-1]), filtered, max_len=4)
    gone = (filtered[c.USER_ID] == users[-1]).to_numpy()
    assert gone.any() and (missing["lengths"][gone] == 0).all() and (missing["items"][gone] == 0).all()
    assert all(np.array_equal(missing[k][~gone], ascending[k][~gone]) for k in ascending)


def test_training_examples_use_train_steps_only(registry):
    cfg = registry.get("taobao")
    steps = make_steps()
    split = splits.leave_one_out(steps, cfg)
    train = model_ready.training_examples(steps, split.roles)
    assert train.select(c.USER_ID, "target_step").rows() == [(2, 1), (3, 3)]  # user 0 has one train step
    arrays = model_ready.build(steps, train, max_len=5, allowed=split.roles.filter(pl.col("role") == "train").select(c.USER_ID, "step"))
    assert arrays["items"].tolist() == [[0, 0, 0, 0, 4 + 1], [0, 0, 7 + 1, 8 + 1, 7 + 1]]
    assert arrays["behaviors"][1].tolist() == [0, 0, PV, PV, CART]
    frame = model_ready.to_frame(arrays, "train")
    assert frame.schema["items"] == pl.Array(pl.Int32, 5) and frame["length"].to_list() == [1, 3]


def test_npz_round_trip(tmp_path, registry):
    steps = make_steps()
    ex = splits.leave_one_out(steps, registry.get("taobao")).examples
    arrays = model_ready.build(steps, apply_filter(ex, find_leaks(steps, ex, registry.get("taobao"), "off", 50), "off"), 50)
    np.savez(tmp_path / "test.npz", **arrays)
    back = model_ready.load(tmp_path / "test.npz")
    assert set(back) == set(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)


def test_model_ready_check_catches_right_padding_and_disagreeing_copies(tmp_path, registry):
    from pipelines.contracts import model_ready_consistency

    steps = make_steps()
    ex = splits.leave_one_out(steps, registry.get("taobao")).examples
    arrays = model_ready.build(steps, apply_filter(ex, find_leaks(steps, ex, registry.get("taobao"), "off", 4), "off"), 4)
    d = tmp_path / "leave_one_out"
    d.mkdir()
    np.savez(d / "test.npz", **arrays)
    model_ready.to_frame(arrays, "test").write_parquet(d / "test.parquet")
    assert model_ready_consistency(tmp_path, 4).passed
    bad = dict(arrays)
    bad["items"] = np.roll(arrays["items"], 1, axis=1)  # padding moves to the right end for short rows
    np.savez(d / "test.npz", **bad)
    r = model_ready_consistency(tmp_path, 4)
    assert not r.passed and "padding is not strictly on the left" in r.message and "parquet and npz disagree" in r.message


def test_bitmasks_expand_to_multi_hot_in_registry_order(registry):
    cfg = registry.get("taobao")  # pv, fav, cart, buy
    mh = model_ready.expand_multi_hot(np.array([[0, PV | CART], [BUY, PV | BUY]]), len(cfg.behaviors))
    assert mh.shape == (2, 2, 4)
    assert mh.tolist() == [[[0, 0, 0, 0], [1, 0, 1, 0]], [[0, 0, 0, 1], [1, 0, 0, 1]]]


def test_target_behaviors_are_validated_when_options_load(registry):
    import pytest

    from pipelines.registry import RegistryError
    from pipelines.sequences.options import SequenceOptions

    cfg = registry.get("taobao").model_copy(update={"stages": {"sequences": {"target_behaviors": ["like"]}}})
    with pytest.raises(RegistryError, match=r"target_behaviors: behavior 'like' is not in the dataset's vocabulary \['pv', 'fav', 'cart', 'buy'\]"):
        SequenceOptions.of(cfg)
    cfg = registry.get("taobao").model_copy(update={"stages": {"sequences": {"merge_rul": "none"}}})
    with pytest.raises(RegistryError, match=r"stages\.sequences\.merge_rul: Extra inputs"):
        SequenceOptions.of(cfg)
