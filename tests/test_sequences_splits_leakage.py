"""Split protocols, leakage modes and the leakage audit on a hand-worked 4-user example."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipelines.sequences import splits
from pipelines.sequences.leakage import apply_filter, audit, find_leaks
from schemas import columns as c

PV, FAV, CART, BUY = 1, 2, 4, 8
A, B, C_, D, X, Y, Z, K, L, M, N = range(11)
SEQS = {  # user -> [(item, behaviors)] in sequence order
    0: [(A, PV), (A, BUY), (B, PV), (C_, CART), (C_, BUY), (D, PV)],
    1: [(A, PV), (A, BUY)],
    2: [(X, BUY), (Y, PV), (Y, BUY), (Z, BUY)],
    3: [(K, PV), (L, PV), (K, CART), (M, PV), (M, BUY), (K, PV), (N, PV), (K, BUY)],
}


def make_steps(sessions=None):
    rows = [(u, s, i, b, 1_000_000 * (s + 1)) for u, seq in SEQS.items() for s, (i, b) in enumerate(seq)]
    df = pl.DataFrame(rows, schema={c.USER_ID: pl.UInt32, "step": pl.UInt32, c.ITEM_ID: pl.UInt32,
                                    c.BEHAVIORS: pl.UInt16, c.TIMESTAMP: pl.Int64}, orient="row")
    return df.with_columns(pl.lit(0, pl.UInt32).alias("session") if sessions is None else sessions)


def roles_by_user(split):
    return {u: g.sort("step")["role"].to_list() for (u,), g in split.roles.group_by(c.USER_ID)}


def test_leave_one_out(registry):
    s = splits.leave_one_out(make_steps(), registry.get("taobao"))
    assert roles_by_user(s) == {
        0: ["train", "valid", "between", "between", "test", "excluded"],
        1: ["excluded"] * 2,
        2: ["train", "train", "valid", "test"],
        3: ["train", "train", "train", "train", "valid", "between", "between", "test"],
    }
    assert s.users_excluded == 1
    assert s.examples.select(c.USER_ID, "role", "target_step", "history_end", c.ITEM_ID).rows() == [
        (0, "valid", 1, 1, A), (0, "test", 4, 4, C_), (2, "valid", 2, 2, Y), (2, "test", 3, 3, Z),
        (3, "valid", 4, 4, M), (3, "test", 7, 7, K)]


def test_eidp_uses_any_non_auxiliary_step(registry):
    cfg = registry.get("taobao").model_copy(update={"auxiliary": ["pv"]})  # fav, cart, buy are non-auxiliary
    s = splits.eidp(make_steps(), cfg)
    assert roles_by_user(s)[0] == ["train", "train", "train", "valid", "test", "excluded"]
    assert roles_by_user(s)[1] == ["train", "train"]  # as in the releases: training-only, not excluded
    assert s.users_excluded == 0 and s.counts == {"users_training_only": 1} and "training-only" in s.note
    # user 3: non-auxiliary steps 2 (cart), 4 (buy), 7 (buy) -> valid 4, test 7; the pv steps between are "between"
    assert roles_by_user(s)[3] == ["train", "train", "train", "train", "valid", "between", "between", "test"]


def test_session_split_history_ends_at_session_start(registry):
    sess = pl.Series("session", [0, 0, 1, 1, 2, 2, 0, 1, 0, 1, 2, 3, 0, 0, 1, 1, 1, 2, 2, 2], dtype=pl.UInt32)
    s = splits.session(make_steps(sess), registry.get("taobao"))
    assert roles_by_user(s) == {
        0: ["train", "train", "valid", "valid", "test", "test"], 1: ["excluded"] * 2,
        2: ["train", "train", "valid", "test"], 3: ["train", "train", "valid", "valid", "valid", "test", "test", "test"]}
    assert s.examples.filter(pl.col(c.USER_ID) == 3).select("role", "target_step", "history_end").rows() == [
        ("valid", 2, 2), ("valid", 3, 2), ("valid", 4, 2), ("test", 5, 5), ("test", 6, 5), ("test", 7, 5)]
    with pytest.raises(ValueError, match="no time column"):
        splits.session(make_steps(sess), registry.get("tenrec_qk_video"))


def test_session_split_equals_its_definition_by_group_by_and_join(registry):
    """The session split reads per-user and per-session values at run boundaries; on random
    histories it equals the definition written with group-bys and joins. Out-of-order steps are
    refused, and no steps give an empty split."""
    rng = np.random.default_rng(3)
    n_steps = rng.integers(1, 9, 400)
    user = np.repeat(np.arange(400), n_steps)
    step = np.concatenate([np.arange(k) for k in n_steps])
    new_session = (rng.random(user.size) < 0.3) & (step > 0)
    session = np.concatenate([np.cumsum(new_session[user == u]) for u in range(400)])
    steps = pl.DataFrame({c.USER_ID: user.astype(np.uint32), "step": step.astype(np.uint32),
                          c.ITEM_ID: rng.integers(0, 50, user.size).astype(np.uint32),
                          c.BEHAVIORS: rng.integers(1, 16, user.size).astype(np.uint16),
                          c.TIMESTAMP: np.arange(user.size, dtype=np.int64), "session": session.astype(np.uint32)})
    s = splits.session(steps, registry.get("taobao"))

    last = steps.group_by(c.USER_ID).agg(pl.col("session").max().alias("last"))
    start = steps.group_by(c.USER_ID, "session").agg(pl.col("step").min().alias("start"))
    expected = steps.join(last, on=c.USER_ID, maintain_order="left").join(
        start, on=[c.USER_ID, "session"], maintain_order="left").with_columns(
        pl.when(pl.col("last") < 2).then(pl.lit("excluded")).when(pl.col("session") == pl.col("last"))
        .then(pl.lit("test")).when(pl.col("session") == pl.col("last") - 1).then(pl.lit("valid"))
        .otherwise(pl.lit("train")).alias("role"))
    assert s.roles.equals(expected.select(c.USER_ID, "step", "role"))
    held = expected.filter(pl.col("role").is_in(["valid", "test"])).sort(
        c.USER_ID, "role", "step", descending=[False, True, False])
    assert s.examples.select(c.USER_ID, "role", "target_step", "history_end").rows() == held.select(
        c.USER_ID, "role", "step", "start").rows()
    assert s.users_excluded == int((last["last"] < 2).sum()) > 0
    with pytest.raises(ValueError, match=r"\(user_id, step\) order"):
        splits.session(steps.reverse(), registry.get("taobao"))
    empty = splits.session(steps.head(0), registry.get("taobao"))
    assert empty.roles.height == empty.examples.height == 0 and empty.roles.schema == s.roles.schema


def test_temporal_split_equals_its_definition_by_group_by_and_join(registry):
    """The temporal split keeps per-user first target steps in arrays; on random histories (users
    not in order, some ids missing) it equals the definition written with a group-by and a join."""
    rng = np.random.default_rng(5)
    n_steps = rng.integers(1, 12, 300)
    ids = rng.permutation(np.arange(0, 600, 2))[:300]  # every other id, in no order
    user = np.repeat(ids, n_steps)
    step = np.concatenate([np.arange(k) for k in n_steps])
    ts = np.concatenate([np.sort(rng.integers(0, 10_000, k)) for k in n_steps])
    steps = pl.DataFrame({c.USER_ID: user.astype(np.uint32), "step": step.astype(np.uint32),
                          c.ITEM_ID: rng.integers(0, 50, user.size).astype(np.uint32),
                          c.BEHAVIORS: rng.integers(1, 16, user.size).astype(np.uint16),
                          c.TIMESTAMP: ts.astype(np.int64), "session": np.zeros(user.size, np.uint32)})
    cfg = registry.get("taobao")
    s = splits.temporal(steps, cfg, valid_from_ms=6_000, test_from_ms=8_000)

    is_t = (pl.col(c.BEHAVIORS) & splits.mask_of(cfg, cfg.targets)) != 0
    t = pl.col(c.TIMESTAMP)
    firsts = steps.group_by(c.USER_ID).agg(
        pl.col("step").filter(is_t & (t >= 6_000) & (t < 8_000)).min().alias("v"),
        pl.col("step").filter(is_t & (t >= 8_000)).min().alias("t"))
    j = steps.join(firsts, on=c.USER_ID, maintain_order="left")
    last = pl.max_horizontal(pl.col("v").fill_null(-1), pl.col("t").fill_null(-1))
    role = (pl.when(t < 6_000).then(pl.lit("train")).when(pl.col("step") == pl.col("v")).then(pl.lit("valid"))
            .when(pl.col("step") == pl.col("t")).then(pl.lit("test")).when(pl.col("step") < last)
            .then(pl.lit("between")).otherwise(pl.lit("excluded")))
    expected = j.select(c.USER_ID, "step", role.alias("role"))
    assert s.roles.equals(expected) and set(expected["role"]) == set(splits.ROLES)  # every role occurs
    held = expected.filter(pl.col("role").is_in(["valid", "test"])).sort(
        c.USER_ID, "role", "step", descending=[False, True, False])
    assert s.examples.select(c.USER_ID, "role", "target_step", "history_end").rows() == held.select(
        c.USER_ID, "role", "step", pl.col("step").alias("end")).rows()
    assert s.users_excluded == firsts.filter(pl.col("v").is_null() & pl.col("t").is_null()).height > 0


def test_temporal_split_keeps_everything_after_the_cut_out_of_training(registry):
    s = splits.temporal(make_steps(), registry.get("taobao"), valid_from_ms=3_000_000, test_from_ms=5_000_000)
    r = roles_by_user(s)
    # user 0 times 1..6 (x1e6 ms): buy at 2 (train), buy at 5 -> test (no buy in [3,5) -> no valid)
    assert r[0] == ["train", "train", "between", "between", "test", "excluded"]
    # user 2 times 1..4: buy at 3 is the first target in [3, 5) -> valid; no target after 5 -> no test,
    # and the later buy at 4 is neither training nor history of any target
    assert r[2] == ["train", "train", "valid", "excluded"]
    steps = make_steps().join(s.roles, on=[c.USER_ID, "step"])
    assert steps.filter(pl.col("role") == "train")[c.TIMESTAMP].max() < 3_000_000


def test_unknown_target_behavior_is_one_clear_error(registry):
    with pytest.raises(KeyError, match=r"behavior 'like' is not in its vocabulary \['pv', 'fav', 'cart', 'buy'\]"):
        splits.leave_one_out(make_steps(), registry.get("taobao"), targets=["like"])


def test_every_step_has_exactly_one_role(registry):
    steps = make_steps()
    for s in (splits.leave_one_out(steps, registry.get("taobao")), splits.eidp(steps, registry.get("taobao")),
              splits.temporal(steps, registry.get("taobao"), 3_000_000, 5_000_000)):
        assert s.roles.height == steps.height and s.roles.select(c.USER_ID, "step").is_unique().all()
        assert set(s.roles["role"]) <= set(splits.ROLES)


@pytest.fixture
def loo(registry):
    return make_steps(), splits.leave_one_out(make_steps(), registry.get("taobao")).examples


@pytest.mark.parametrize(("mode", "max_len", "expected"), [
    ("off", 50, [[], [], [], [], [], []]),
    ("last", 50, [[0], [3], [1], [], [3], []]),          # user 3 test: step 6 is on N, so nothing
    ("all", 50, [[0], [3], [1], [], [3], [0, 2, 5]]),    # every lower-level K step before the buy of K
    ("all", 3, [[0], [3], [1], [], [3], [5]]),           # window = steps 4..6 only
])
def test_leakage_modes(registry, loo, mode, max_len, expected):
    steps, examples = loo
    leaks = find_leaks(steps, examples, registry.get("taobao"), mode, max_len)
    out = apply_filter(examples, leaks, mode)
    assert out["dropped_steps"].to_list() == expected
    assert out[c.BEHAVIORS].to_list() == [BUY] * 6


def test_merge_folds_dropped_behaviors_into_the_target(registry, loo):
    steps, examples = loo
    out = apply_filter(examples, find_leaks(steps, examples, registry.get("taobao"), "merge", 50), "merge")
    assert out[c.BEHAVIORS].to_list() == [BUY | PV, BUY | CART, BUY | PV, BUY, BUY | PV, BUY | PV | CART]


def test_a_same_level_repeat_is_not_a_leak(registry):
    steps = make_steps().with_columns(
        pl.when((pl.col(c.USER_ID) == 3) & (pl.col("step") == 5)).then(BUY).otherwise(pl.col(c.BEHAVIORS))
        .cast(pl.UInt16).alias(c.BEHAVIORS))
    ex = splits.leave_one_out(steps, registry.get("taobao")).examples
    out = apply_filter(ex, find_leaks(steps, ex, registry.get("taobao"), "all", 50), "all")
    # user 3 now buys K at step 5 (valid) and step 7 (test): for the test, the buy at 5 is the same
    # level as the target and stays in the history; the pv at 0 and the cart at 2 are dropped
    test = out.filter((pl.col(c.USER_ID) == 3) & (pl.col("role") == "test"))
    assert test["dropped_steps"].to_list() == [[0, 2]]


def test_audit_before_and_after_filtering(registry, loo):
    steps, examples = loo
    before = audit(steps, examples).filter(pl.col("k").is_in([1, 5])).rows(named=True)
    assert before[0]["share_in_last_k"] == pytest.approx(4 / 6) and before[1]["share_in_last_k"] == pytest.approx(5 / 6)
    assert before[0]["recent_hr"] == pytest.approx(4 / 6) and before[1]["recent_hr"] == pytest.approx(5 / 6)
    assert before[0]["frequent_hr"] == pytest.approx(3 / 6) and before[1]["frequent_hr"] == pytest.approx(5 / 6)
    assert before[1]["recent_ndcg"] == pytest.approx((4 + 1 / math.log2(3)) / 6)
    assert before[1]["frequent_ndcg"] == pytest.approx((3 + 2 / math.log2(3)) / 6)
    filtered = apply_filter(examples, find_leaks(steps, examples, registry.get("taobao"), "all", 50), "all")
    after = audit(steps, filtered)
    assert after["share_in_last_k"].max() == 0 and after["recent_hr"].max() == 0 and after["frequent_hr"].max() == 0
