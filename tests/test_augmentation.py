"""Behavior statistics on hand-worked sets; augmentation operators exactly and in distribution."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from conftest import ingested
from pipelines.augmentation.behavior_ops import auxiliary_flipping, cooccurrence_addition, frequency_masking
from pipelines.augmentation.statistics import count_sets, statistics
from schemas import columns as c

# vocabulary click(0), like(1), share(2), follow(3); five training sets of one user, in order
SETS = [0b0011, 0b0001, 0b0111, 0b1011, 0b0001]  # {c,l} {c} {c,l,s} {c,l,f} {c}


def train_steps(sets, users=None):
    """Steps of users in sequence order (users contiguous); step = position within the user."""
    users = users or [0] * len(sets)
    df = pl.DataFrame({c.USER_ID: users, c.BEHAVIORS: sets}, schema={c.USER_ID: pl.UInt32, c.BEHAVIORS: pl.UInt16})
    return df.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over(c.USER_ID).alias("step")).select(
        c.USER_ID, "step", c.BEHAVIORS)


def test_m_and_M_on_five_sets():
    s = statistics(count_sets(train_steps(SETS), 4))
    assert s.m.tolist() == [5, 3, 1, 1]
    # pairs: {c,l}: c-l; {c,l,s}: c-l, c-s, l-s; {c,l,f}: c-l, c-f, l-f
    assert s.M.tolist() == [[0, 3, 1, 1], [3, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert (s.M == s.M.T).all() and (np.diag(s.M) == 0).all()
    assert s.cond_prob[1].tolist() == pytest.approx([1.0, 0.0, 1 / 3, 1 / 3])  # P(. | like)
    assert s.M_prob[0].tolist() == pytest.approx([0, 0.6, 0.2, 0.2])
    powered = np.array([5, 3, 1, 1], dtype=float) ** 0.7
    assert s.mask_prob == pytest.approx(powered / powered.sum())
    assert s.set_size_counts.tolist() == [0, 2, 1, 2, 0]
    # transitions between consecutive sets: T[i, j] counts i in set t and j in set t+1
    assert s.T[0].tolist() == [4, 2, 1, 1] and s.T[3].tolist() == [1, 0, 0, 0]
    assert s.n_sets == 5


def test_counts_merge_across_shards():
    users = [0, 0, 0, 1, 1]
    whole = statistics(count_sets(train_steps(SETS, users), 4))
    a, b = train_steps(SETS[:3], users[:3]), train_steps(SETS[3:], users[3:])
    merged = statistics(count_sets(a, 4) + count_sets(b, 4))
    assert (whole.M == merged.M).all() and (whole.m == merged.m).all() and (whole.T == merged.T).all()


def multi_hot(rows):
    return np.array([[[int(ch) for ch in s] for s in row] for row in rows], dtype=np.int8)


def test_addition_adds_the_only_co_occurring_behavior():
    M = np.array([[0, 3, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    x = multi_hot([["1000", "0000", "0010"]])  # click, padding, share
    out = cooccurrence_addition(x, M, 1.0, np.random.default_rng(0))
    assert out.tolist() == multi_hot([["1100", "0000", "0010"]]).tolist()  # share has no co-occurrence: unchanged
    assert x.tolist() == multi_hot([["1000", "0000", "0010"]]).tolist()  # input untouched


def test_addition_samples_in_proportion_to_b_dot_M():
    M = np.array([[0, 6, 3, 1], [6, 0, 0, 0], [3, 0, 0, 0], [1, 0, 0, 0]])
    x = np.tile(multi_hot([["1000"]]), (20_000, 1, 1))
    out = cooccurrence_addition(x, M, 1.0, np.random.default_rng(1))
    added = (out - x).reshape(-1, 4).mean(axis=0)
    assert added == pytest.approx([0, 0.6, 0.3, 0.1], abs=0.015)


def test_masking_exact_and_in_distribution():
    x = multi_hot([["1100", "1000"]])
    out = frequency_masking(x, np.array([0.0, 1.0, 0.0, 0.0]), 1.0, np.random.default_rng(0))
    assert out.tolist() == multi_hot([["1000", "1000"]]).tolist()
    # a mask that would empty a set leaves it alone (click only, click always dropped)
    assert frequency_masking(multi_hot([["1000"]]), np.array([1.0, 0, 0, 0]), 1.0, np.random.default_rng(0)).tolist() == [[[1, 0, 0, 0]]]
    big = np.tile(multi_hot([["1111"]]), (20_000, 1, 1))
    q = np.array([0.4, 0.3, 0.2, 0.1])
    kept = frequency_masking(big, q, 0.5, np.random.default_rng(2)).reshape(-1, 4).mean(axis=0)
    assert kept == pytest.approx(1 - 0.5 * q, abs=0.015)


def test_flipping_exact_and_ratio():
    x = multi_hot([["1100", "0100", "1000", "0000"]])
    out = auxiliary_flipping(x, [0], 1.0, np.random.default_rng(0))
    # click flips; a click-only set would become empty, so it stays; padding stays padding
    assert out.tolist() == multi_hot([["0100", "1100", "1000", "0000"]]).tolist()
    big = np.tile(multi_hot([["0100"]]), (20_000, 1, 1))
    rate = auxiliary_flipping(big, [0], 0.3, np.random.default_rng(3))[..., 0].mean()
    assert rate == pytest.approx(0.3, abs=0.015)


@pytest.mark.parametrize("op", ["add", "mask", "flip"])
def test_seeded_and_never_touching_padding(op):
    rng_x = np.random.default_rng(9)
    x = (rng_x.random((50, 10, 4)) < 0.4).astype(np.int8)
    x[:, :3] = 0  # left padding
    M = np.ones((4, 4)) - np.eye(4)
    run = {"add": lambda r: cooccurrence_addition(x, M, 0.5, r),
           "mask": lambda r: frequency_masking(x, np.full(4, 0.3), 0.5, r),
           "flip": lambda r: auxiliary_flipping(x, [0], 0.5, r)}[op]
    a, b, other = run(np.random.default_rng(5)), run(np.random.default_rng(5)), run(np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    assert (a[:, :3] == 0).all()  # padding untouched
    assert (a.any(axis=-1) == x.any(axis=-1)).all()  # no set emptied, none created


def test_reimported_blade_split_gives_the_same_M_and_m_as_its_train_file(tmp_path, registry):
    """Generated release files -> ingest -> steps -> released split -> statistics over the train role,
    against counting straight over train.txt (users' lines interleave in blocks: group them stably)."""
    from pipelines.augmentation.stage import materialize_statistics
    from pipelines.sequences.stage import materialize_split, materialize_steps

    cfg = registry.get("blade_qk_video")
    paths = ingested(cfg, tmp_path)
    materialize_steps(cfg, paths, log=lambda _: None)
    materialize_split(cfg, paths, "released", log=lambda _: None)
    doc = materialize_statistics(cfg, paths, log=lambda _: None)["released"]

    raw = np.loadtxt(paths.generated_dir / "train.txt", delimiter=",", dtype=np.int64, ndmin=2)
    raw = raw[np.argsort(raw[:, 0], kind="stable")]
    masks = (raw[:, 2:] << np.arange(raw.shape[1] - 2)).sum(axis=1)
    keep = masks > 0
    users = raw[keep, 0]
    direct = statistics(count_sets(train_steps(masks[keep].tolist(), (users - users.min()).tolist()), 4))
    assert doc["m"] == direct.m.tolist() and doc["M"] == direct.M.tolist() and doc["T"] == direct.T.tolist()
    assert doc["training_sets"] == int(keep.sum())
    assert (paths.stage_dir("statistics") / "released" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_statistics_check_catches_asymmetric_M_and_non_training_counts(tmp_path, registry):
    import json

    from pipelines.augmentation.stage import materialize_statistics
    from pipelines.contracts import statistics_consistency
    from pipelines.sequences.stage import materialize_split, materialize_steps, split_dir, steps_path

    cfg = registry.get("tenrec_qk_video")
    paths = ingested(cfg, tmp_path)
    materialize_steps(cfg, paths, log=lambda _: None)
    materialize_split(cfg, paths, "leave_one_out", log=lambda _: None)
    materialize_statistics(cfg, paths, log=lambda _: None)
    stats = paths.stage_dir("statistics") / "leave_one_out" / "statistics.json"
    roles, steps = split_dir(paths, "leave_one_out") / "roles.parquet", steps_path(paths)
    assert statistics_consistency(stats, roles, steps).passed
    doc = json.loads(stats.read_text())
    bad = tmp_path / "bad.json"
    doc_asym = {**doc, "M": [row[:] for row in doc["M"]]}
    doc_asym["M"][0][1] += 1
    bad.write_text(json.dumps(doc_asym))
    r = statistics_consistency(bad, roles, steps)
    assert not r.passed and "M is not symmetric" in r.message
    # statistics counted over all steps (as if computed before the split) are caught
    leaky = {**doc, "training_sets": doc["training_sets"] + 5, "set_size_counts": [doc["set_size_counts"][0] + 5, *doc["set_size_counts"][1:]]}
    bad.write_text(json.dumps(leaky))
    r = statistics_consistency(bad, roles, steps)
    assert not r.passed and "training steps" in r.message


def test_training_steps_by_mask_equal_the_join_in_any_row_order():
    """Roles that line up with the steps are read as a mask; any other order falls back to the join;
    both give the train steps in the steps' order."""
    from pipelines.augmentation.stage import train_steps

    rng = np.random.default_rng(0)
    steps = pl.DataFrame({c.USER_ID: np.repeat(np.arange(50), 6), "step": np.tile(np.arange(6), 50),
                          c.BEHAVIORS: rng.integers(1, 16, 300)})
    roles = steps.select(c.USER_ID, "step").with_columns(
        pl.Series("role", rng.choice(["train", "valid", "test", "excluded"], 300)))
    expected = steps.join(roles.filter(pl.col("role") == "train"), on=[c.USER_ID, "step"], how="semi",
                          maintain_order="left")
    assert 0 < expected.height < steps.height
    for shuffled in (roles, roles.sample(fraction=1.0, shuffle=True, seed=1), roles.reverse()):
        assert train_steps(steps, shuffled).equals(expected)
    # one step fewer in the roles (a table of another version): the join, not a misaligned mask
    assert train_steps(steps, roles.slice(1)).equals(expected.filter(
        ~((pl.col(c.USER_ID) == 0) & (pl.col("step") == 0))))
