"""Canonical events -> cleaned, time-ordered behavior-set steps with sessions.

A *step* is one (user, item, behavior set, time): events of one user and item merged by the
dataset's rule. Everything here is vectorized polars over whole tables; order always comes from
(timestamp, event_order), never from item ids, so ties keep file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np
import polars as pl

from pipelines.registry import DatasetConfig
from pipelines.sequences.options import SequenceOptions
from schemas import columns as c

POS = "__pos"


class EmptyPartitionError(ValueError):
    """Filtering left nothing: a clear error instead of an empty file."""


@dataclass
class CleaningReport:
    rows_in: int
    after_window: int
    after_exposures: int
    k_core_rounds: list[dict[str, int]]
    rows_out: int


def _local_midnight_ms(d: date, utc_offset_hours: float) -> int:
    t = datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() - utc_offset_hours * 3600
    return int(round(t * 1000))


def time_ordered(events: pl.DataFrame) -> pl.DataFrame:
    """Events ordered by (user, timestamp), ties in file order (event_order); adds a position column.

    Input from ingest is already ordered by (user, event_order), so one *stable* sort on a packed
    (user, dense time rank) key gives the full order without a multi-key sort.
    """
    in_file_order = events.select(
        ((pl.col(c.USER_ID).diff() > 0) | ((pl.col(c.USER_ID).diff() == 0) & (pl.col(c.EVENT_ORDER).diff() > 0)))
        .fill_null(True).all()
    ).item()
    if not in_file_order:
        events = events.sort(c.USER_ID, c.EVENT_ORDER)
    if events[c.TIMESTAMP].null_count() == events.height:
        ordered = events
    else:
        rank = events[c.TIMESTAMP].rank("dense").cast(pl.UInt64)
        key = events[c.USER_ID].cast(pl.UInt64) * (1 << 32) + rank
        ordered = events.with_columns(key.alias("__key")).sort("__key", maintain_order=True).drop("__key")
    return ordered.with_row_index(POS)


def clean(events: pl.DataFrame, cfg: DatasetConfig, opts: SequenceOptions) -> tuple[pl.DataFrame, CleaningReport]:
    """Optional time window, exposure removal and iterative k-core (counts per round)."""
    n0 = events.height
    if opts.time_from or opts.time_to:
        lo = _local_midnight_ms(opts.time_from, cfg.time.utc_offset_hours) if opts.time_from else None
        hi = _local_midnight_ms(opts.time_to, cfg.time.utc_offset_hours) if opts.time_to else None
        cond = pl.lit(True)
        if lo is not None:
            cond &= pl.col(c.TIMESTAMP) >= lo
        if hi is not None:
            cond &= pl.col(c.TIMESTAMP) < hi
        events = events.filter(cond)
    n1 = events.height
    if opts.drop_exposures:
        events = events.filter(pl.col(c.BEHAVIORS) != 0)
    n2 = events.height
    rounds = []
    if opts.min_user_steps or opts.min_item_steps:
        events, rounds = k_core(events, opts.min_user_steps, opts.min_item_steps)
    return events, CleaningReport(n0, n1, n2, rounds, events.height)


def k_core(events: pl.DataFrame, min_user: int, min_item: int, max_rounds: int = 100) -> tuple[pl.DataFrame, list[dict[str, int]]]:
    """Drop users with < min_user rows and items with < min_item rows, repeated until stable.

    Counting uses numpy.bincount over the dense ids (fast); only the final mask touches polars.
    """
    users = events[c.USER_ID].to_numpy()
    items = events[c.ITEM_ID].to_numpy()
    keep = np.ones(len(users), dtype=bool)
    rounds = []
    for r in range(1, max_rounds + 1):
        u_counts = np.bincount(users[keep], minlength=int(users.max(initial=0)) + 1)
        i_counts = np.bincount(items[keep], minlength=int(items.max(initial=0)) + 1)
        bad = keep & ((u_counts[users] < min_user) | (i_counts[items] < min_item))
        removed = int(bad.sum())
        keep &= ~bad
        rounds.append({"round": r, "rows_removed": removed, "rows_left": int(keep.sum()),
                       "users_left": int(np.unique(users[keep]).size), "items_left": int(np.unique(items[keep]).size)})
        if removed == 0:
            break
    return events.filter(pl.Series(keep)), rounds


def behavior_steps(events: pl.DataFrame, cfg: DatasetConfig, opts: SequenceOptions) -> pl.DataFrame:
    """Merge a user's events on one item into steps by ``opts.merge_rule``.

    Returns one row per step, in sequence order: user_id, step (0-based per user), item_id,
    behaviors (bitmask OR of the merged events), timestamp (first or last merged event's),
    event_order (the step's first event's), n_events.
    """
    ev = time_ordered(events)
    rule = opts.merge_rule
    if rule != "none" and cfg.time.unit == "none" and rule in ("same_timestamp", "window"):
        rule = "none"  # no time: only file order exists; a rule on time cannot merge anything
    if rule == "none":
        step_of = pl.col(POS)
    elif rule == "consecutive":
        change = (pl.col(c.ITEM_ID) != pl.col(c.ITEM_ID).shift()) | (pl.col(c.USER_ID) != pl.col(c.USER_ID).shift())
        step_of = change.fill_null(True).cum_sum()
    else:
        # order by (user, item) keeping time order inside, then cut where the rule says a new step begins
        pair = pl.col(c.USER_ID).cast(pl.UInt64) * (1 << 32) + pl.col(c.ITEM_ID).cast(pl.UInt64)
        ev = ev.with_columns(pair.alias("__pair")).sort("__pair", maintain_order=True)
        new_pair = pl.col("__pair") != pl.col("__pair").shift()
        if rule == "same_timestamp":
            cut = new_pair | (pl.col(c.TIMESTAMP) != pl.col(c.TIMESTAMP).shift())
        else:
            gap = pl.col(c.TIMESTAMP) - pl.col(c.TIMESTAMP).shift()
            cut = new_pair | (gap > int(opts.merge_window_seconds * 1000))
        step_of = cut.fill_null(True).cum_sum()
    ev = ev.with_columns(step_of.alias("__step"))
    time_pick = pl.col(c.TIMESTAMP).first() if opts.step_time == "first" else pl.col(c.TIMESTAMP).last()
    steps = (
        ev.group_by("__step", maintain_order=True)
        .agg(
            pl.col(c.USER_ID).first(),
            pl.col(c.ITEM_ID).first(),
            pl.col(c.BEHAVIORS).bitwise_or().cast(pl.UInt16),
            time_pick,
            pl.col(c.EVENT_ORDER).first(),
            pl.col(POS).first().alias(POS),
            pl.len().cast(pl.UInt32).alias("n_events"),
        )
        .sort(POS)
        .drop("__step", POS)
    )
    return steps.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over(c.USER_ID).alias("step")).select(
        c.USER_ID, "step", c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP, c.EVENT_ORDER, "n_events"
    )


def with_sessions(steps: pl.DataFrame, gap_minutes: float) -> pl.DataFrame:
    """Per user, a new session starts when the gap to the previous step exceeds ``gap_minutes``.

    Without timestamps (Tenrec, split releases) every user has one session.
    """
    gap = pl.col(c.TIMESTAMP) - pl.col(c.TIMESTAMP).shift().over(c.USER_ID)
    new = (gap > int(gap_minutes * 60_000)).fill_null(False)
    return steps.with_columns(new.cast(pl.UInt32).cum_sum().over(c.USER_ID).alias("session"))
