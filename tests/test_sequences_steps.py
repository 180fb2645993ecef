"""Behavior-set steps and sessions on hand-worked 3-4 user examples."""

from __future__ import annotations

import polars as pl

from pipelines.sequences.options import SequenceOptions
from pipelines.sequences.steps import behavior_steps, clean, k_core, with_sessions
from schemas import columns as c

MIN = 60_000
PV, FAV, CART, BUY = 1, 2, 4, 8


def events(rows):
    """rows: (user, item, behaviors, minute or None) in file order."""
    return pl.DataFrame(
        {c.USER_ID: [r[0] for r in rows], c.ITEM_ID: [r[1] for r in rows], c.BEHAVIORS: [r[2] for r in rows],
         c.TIMESTAMP: [None if r[3] is None else int(r[3] * MIN) for r in rows], c.EVENT_ORDER: list(range(1, len(rows) + 1))},
        schema={c.USER_ID: pl.UInt32, c.ITEM_ID: pl.UInt32, c.BEHAVIORS: pl.UInt16, c.TIMESTAMP: pl.Int64,
                c.EVENT_ORDER: pl.Int64},
    ).sort(c.USER_ID, c.EVENT_ORDER)


# user 0: pv a@0, pv b@0 (tie, file order), cart a@0, buy a@5      -> same-ts merges a@0 {pv,cart}
# user 1: pv x@10, buy x@3 (file not time-sorted), cart x@3        -> time order: buy,cart x@3 then pv x@10
# user 2: pv y@0, pv z@1, pv y@2, buy y@2.5 (window 1 min from y@2)
EXAMPLE = [
    (0, 10, PV, 0), (0, 11, PV, 0), (0, 10, CART, 0), (0, 10, BUY, 5),
    (1, 20, PV, 10), (1, 20, BUY, 3), (1, 20, CART, 3),
    (2, 30, PV, 0), (2, 31, PV, 1), (2, 30, PV, 2), (2, 30, BUY, 2.5),
]


def steps_of(rule, **kw):
    cfg_opts = SequenceOptions(merge_rule=rule, **kw)
    from pipelines.registry import load_registry
    s = behavior_steps(events(EXAMPLE), load_registry().get("taobao"), cfg_opts)
    return s.select(c.USER_ID, "step", c.ITEM_ID, c.BEHAVIORS, (pl.col(c.TIMESTAMP) / MIN).alias("min")).rows()


def test_same_timestamp_rule():
    assert steps_of("same_timestamp") == [
        (0, 0, 10, PV | CART, 0), (0, 1, 11, PV, 0), (0, 2, 10, BUY, 5),
        (1, 0, 20, BUY | CART, 3), (1, 1, 20, PV, 10),
        (2, 0, 30, PV, 0), (2, 1, 31, PV, 1), (2, 2, 30, PV, 2), (2, 3, 30, BUY, 2.5),
    ]


def test_consecutive_rule():
    # user 0 in time order: pv a@0, pv b@0, cart a@0, buy a@5 -> b interrupts a
    assert steps_of("consecutive") == [
        (0, 0, 10, PV, 0), (0, 1, 11, PV, 0), (0, 2, 10, CART | BUY, 0),
        (1, 0, 20, BUY | CART | PV, 3),
        (2, 0, 30, PV, 0), (2, 1, 31, PV, 1), (2, 2, 30, PV | BUY, 2),
    ]


def test_window_rule_and_last_time():
    assert steps_of("window", merge_window_seconds=90, step_time="last") == [
        (0, 0, 10, PV | CART, 0), (0, 1, 11, PV, 0), (0, 2, 10, BUY, 5),
        (1, 0, 20, BUY | CART, 3), (1, 1, 20, PV, 10),
        (2, 0, 30, PV, 0), (2, 1, 31, PV, 1), (2, 2, 30, PV | BUY, 2.5),
    ]


def test_no_merge_keeps_every_event_in_time_then_file_order():
    assert [r[2:4] for r in steps_of("none") if r[0] == 1] == [(20, BUY), (20, CART), (20, PV)]


def test_sessions_split_on_gap():
    from pipelines.registry import load_registry
    rows = [(0, 1, PV, 0), (0, 2, PV, 30), (0, 3, PV, 91), (0, 4, PV, 100), (1, 5, PV, 0), (1, 6, PV, 500)]
    s = behavior_steps(events(rows), load_registry().get("taobao"), SequenceOptions())
    assert with_sessions(s, 60)["session"].to_list() == [0, 0, 1, 1, 0, 1]


def test_no_time_keeps_file_order_and_one_session():
    from pipelines.registry import load_registry
    rows = [(0, 1, 1, None), (0, 1, 3, None), (0, 2, 1, None)]
    s = behavior_steps(events(rows), load_registry().get("tenrec_qk_video"), SequenceOptions())
    assert s.select(c.ITEM_ID, c.BEHAVIORS).rows() == [(1, 1), (1, 3), (2, 1)]
    assert with_sessions(s, 60)["session"].to_list() == [0, 0, 0]


def test_cleaning_drops_exposures_and_runs_k_core_to_a_fixed_point():
    from pipelines.registry import load_registry
    rows = [(0, 1, PV, 0), (0, 2, PV, 1), (0, 1, 0, 2), (1, 1, PV, 0), (1, 2, PV, 1), (2, 3, PV, 0), (2, 1, PV, 1)]
    out, rep = clean(events(rows), load_registry().get("taobao"), SequenceOptions(min_user_steps=2, min_item_steps=2))
    # exposure dropped; item 3 has 1 row -> dropped, then user 2 has 1 row -> dropped, then item 1 has 2: stable
    assert sorted(out.select(c.USER_ID, c.ITEM_ID).rows()) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert [r["rows_removed"] for r in rep.k_core_rounds] == [1, 1, 0]
    assert rep.after_exposures == 6


def test_k_core_on_nothing_left():
    out, rounds = k_core(events([(0, 1, PV, 0)]), 2, 1)
    assert out.is_empty() and rounds[0]["rows_removed"] == 1
