"""Invariants of steps, splits and the leakage filter on random event logs (hypothesis)."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.registry import load_registry
from pipelines.sequences import splits
from pipelines.sequences.leakage import apply_filter, find_leaks, window_rows
from pipelines.sequences.options import SequenceOptions
from pipelines.sequences.steps import behavior_steps, with_sessions
from schemas import columns as c

CFG = load_registry().get("taobao")
event = st.tuples(st.integers(0, 3), st.integers(0, 5), st.sampled_from([1, 2, 4, 8]), st.integers(0, 40))
logs = st.lists(event, min_size=1, max_size=60)


def to_events(rows):
    df = pl.DataFrame(rows, schema={c.USER_ID: pl.UInt32, c.ITEM_ID: pl.UInt32, c.BEHAVIORS: pl.UInt16,
                                    c.TIMESTAMP: pl.Int64}, orient="row")
    return df.with_columns((pl.col(c.TIMESTAMP) * 600_000), pl.int_range(1, pl.len() + 1, dtype=pl.Int64)
                           .alias(c.EVENT_ORDER)).sort(c.USER_ID, c.EVENT_ORDER)


def build_splits(steps):
    v, t = splits.quantile_cuts(steps, 0.5, 0.75)
    out = [splits.leave_one_out(steps, CFG), splits.eidp(steps, CFG), splits.session(steps, CFG)]
    if v < t:
        out.append(splits.temporal(steps, CFG, v, t))
    return out


@settings(max_examples=60, deadline=None)
@given(rows=logs, rule=st.sampled_from(["same_timestamp", "consecutive", "window", "none"]),
       mode=st.sampled_from(["off", "last", "all", "merge"]), max_len=st.integers(1, 8))
def test_split_and_leakage_invariants(rows, rule, mode, max_len):
    events = to_events(rows)
    steps = with_sessions(behavior_steps(events, CFG, SequenceOptions(merge_rule=rule)), 60)
    # steps keep every event's behaviors: OR per (user, item) is preserved
    per_pair = lambda df: df.group_by(c.USER_ID, c.ITEM_ID).agg(pl.col(c.BEHAVIORS).bitwise_or()).sort(c.USER_ID, c.ITEM_ID)
    assert per_pair(steps).equals(per_pair(events))
    # steps are in time order per user
    assert steps.group_by(c.USER_ID).agg(pl.col(c.TIMESTAMP).is_sorted())[c.TIMESTAMP].all()
    for split in build_splits(steps):
        # every step lands in exactly one role
        assert split.roles.height == steps.height and split.roles.select(c.USER_ID, "step").is_unique().all()
        ex = split.examples
        if ex.is_empty():
            continue
        # histories end strictly before their targets (in sequence and in time)
        assert (ex["history_end"] <= ex["target_step"]).all()
        win = window_rows(steps, ex, 10_000).join(ex.with_row_index("example").select("example", "target_step"), on="example")
        assert (win["step"] < win["target_step"]).all()
        leaks = find_leaks(steps, ex, CFG, mode, max_len)
        filtered = apply_filter(ex, leaks, mode)
        if mode in ("all", "merge"):
            # no evaluation target's item remains in its window as a lower-level step
            remaining = find_leaks(steps, ex, CFG, "all", max_len)
            dropped = filtered.with_row_index("example").select("example", pl.col("dropped_steps").alias("step")).explode("step")
            assert remaining.join(dropped.drop_nulls(), on=["example", "step"], how="anti").is_empty()
        if mode == "merge":
            assert ((filtered[c.BEHAVIORS] & ex[c.BEHAVIORS]) == ex[c.BEHAVIORS]).all()
        else:
            assert filtered[c.BEHAVIORS].equals(ex[c.BEHAVIORS])


@settings(max_examples=20, deadline=None)
@given(rows=logs)
def test_rerunning_gives_identical_bytes(rows, tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    for run in ("a", "b"):
        steps = with_sessions(behavior_steps(to_events(rows), CFG, SequenceOptions()), 60)
        s = splits.leave_one_out(steps, CFG)
        steps.write_parquet(d / f"steps_{run}.parquet")
        s.roles.write_parquet(d / f"roles_{run}.parquet")
        s.examples.write_parquet(d / f"ex_{run}.parquet")
    for name in ("steps", "roles", "ex"):
        assert (d / f"{name}_a.parquet").read_bytes() == (d / f"{name}_b.parquet").read_bytes()
