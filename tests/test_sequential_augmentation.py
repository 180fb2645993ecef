"""GAMER-style sequential augmentation: exact at the extremes, in distribution, and untouching."""

from __future__ import annotations

import polars as pl
import pytest

from conftest import ingested
from pipelines.augmentation.sequential import drop_probabilities, sequential_views
from schemas import columns as c

PV, FAV, CART, BUY = 1, 2, 4, 8


def steps(sets, n_users=1):
    n = len(sets)
    return pl.DataFrame({c.USER_ID: [i % n_users for i in range(n)], "step": list(range(n)),
                         c.ITEM_ID: list(range(100, 100 + n)), c.BEHAVIORS: sets},
                        schema={c.USER_ID: pl.UInt32, "step": pl.UInt32, c.ITEM_ID: pl.UInt32, c.BEHAVIORS: pl.UInt16})


def test_drop_probabilities_follow_levels(registry):
    # taobao: pv level 0, fav/cart level 1, buy level 2 (top)
    assert drop_probabilities(registry.get("taobao"), 1.0).tolist() == [1.0, 0.5, 0.5, 0.0]
    assert drop_probabilities(registry.get("taobao"), 0.5).tolist() == [0.5, 0.25, 0.25, 0.0]


def test_last_view_removes_every_level_zero_behavior_and_never_the_top(registry):
    cfg = registry.get("taobao")
    out = sequential_views(steps([PV, PV | BUY, BUY, PV]), cfg, views=2, seed=0)
    last = out.filter(pl.col("view") == 2)
    assert last["ratio"].to_list() == [1.0, 1.0]
    # pv-only steps vanish (p = 1), buy stays, items of kept steps are unchanged
    assert last.select(c.ITEM_ID, c.BEHAVIORS).rows() == [(101, BUY), (102, BUY)]


def test_views_drop_in_distribution_and_are_seeded(registry):
    cfg = registry.get("taobao")
    base = steps([CART | BUY] * 20_000)
    out = sequential_views(base, cfg, views=4, seed=3)
    for k in (1, 2, 3, 4):
        v = out.filter(pl.col("view") == k)
        kept_cart = ((v[c.BEHAVIORS] & CART) != 0).mean()
        assert kept_cart == pytest.approx(1 - (k / 4) / 2, abs=0.015)
        assert (v[c.BEHAVIORS] & BUY == BUY).all() and v.height == base.height
    assert out.equals(sequential_views(base, cfg, views=4, seed=3))
    assert not out.equals(sequential_views(base, cfg, views=4, seed=4))
    with pytest.raises(ValueError, match="at least one view"):
        sequential_views(base, cfg, views=0, seed=0)


def test_stage_augments_training_steps_only(tmp_path, registry):
    from pipelines.augmentation.stage import materialize_sequential_views
    from pipelines.sequences.stage import materialize_split, materialize_steps, split_dir

    cfg = registry.get("taobao")
    paths = ingested(cfg, tmp_path)
    materialize_steps(cfg, paths, log=lambda _: None)
    materialize_split(cfg, paths, "leave_one_out", log=lambda _: None)
    before = (split_dir(paths, "leave_one_out") / "examples.parquet").read_bytes()
    summary = materialize_sequential_views(cfg, paths, log=lambda _: None, rows_per_shard=20_000)
    views = pl.read_parquet(paths.stage_dir("augmentation") / "leave_one_out" / "sequential_views.parquet")
    roles = pl.read_parquet(split_dir(paths, "leave_one_out") / "roles.parquet")
    roles_of_rows = views.join(roles, on=[c.USER_ID, "step"])
    assert roles_of_rows["role"].unique().to_list() == ["train"] and roles_of_rows.height == views.height
    assert sorted(views["view"].unique().to_list()) == [1, 2, 3] and summary["leave_one_out"]["views"] == 3
    assert (split_dir(paths, "leave_one_out") / "examples.parquet").read_bytes() == before
    # each step's draws depend on the step alone: any user ranges give the same views
    materialize_sequential_views(cfg, paths, log=lambda _: None, rows_per_shard=10**9)
    assert pl.read_parquet(paths.sequential_views("leave_one_out")).equals(views)


def test_a_steps_views_do_not_depend_on_the_other_rows(registry):
    cfg = registry.get("taobao")
    base = steps([PV | CART | BUY, PV | FAV, CART, PV | CART] * 500, n_users=7)
    whole = sequential_views(base, cfg, views=3, seed=5)
    parts = pl.concat([sequential_views(base.slice(0, 900), cfg, views=3, seed=5),
                       sequential_views(base.slice(900), cfg, views=3, seed=5)])
    assert whole.sort("view", c.USER_ID, "step").equals(parts.sort("view", c.USER_ID, "step"))
