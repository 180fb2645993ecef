"""Canonical events -> cleaned, time-ordered behavior-set steps with sessions.

A *step* is one (user, item, behavior set, time): events of one user and item merged by the
dataset's rule. Everything here is vectorized polars over whole tables; order always comes from
(timestamp, event_order), never from item ids, so ties keep file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.ingest.lines import local_midnight_ms
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
    ts = events[c.TIMESTAMP]
    if ts.null_count() == events.height:
        ordered = events
    else:
        lo, hi = ts.min(), ts.max()
        # a direct offset when the time range fits 32 bits (9 days of ms does), else a dense rank
        offset = (ts - lo).cast(pl.UInt64) if hi - lo < (1 << 32) else ts.rank("dense").cast(pl.UInt64)
        key = events[c.USER_ID].cast(pl.UInt64) * (1 << 32) + offset
        ordered = events[np.argsort(key.to_numpy(), kind="stable")]
    return ordered.with_row_index(POS)


def clean(events: pl.DataFrame, cfg: DatasetConfig, opts: SequenceOptions) -> tuple[pl.DataFrame, CleaningReport]:
    """Optional time window, exposure removal and iterative k-core (counts per round)."""
    n0 = events.height
    if opts.time_from or opts.time_to:
        lo = local_midnight_ms(opts.time_from, cfg.time.utc_offset_hours) if opts.time_from else None
        hi = local_midnight_ms(opts.time_to, cfg.time.utc_offset_hours) if opts.time_to else None
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

    Events are arranged so each step's events are contiguous; the steps are then reduced with
    numpy (``bitwise_or.reduceat`` over the runs) instead of a group-by, and put back in sequence
    order by their first event's position.
    """
    ev = time_ordered(events)
    rule = opts.merge_rule
    if cfg.time.unit == "none" and rule in ("same_timestamp", "window"):
        rule = "none"  # no time: only file order exists; a rule on time cannot merge anything
    if rule == "none":
        return _steps_from_runs(ev, np.ones(ev.height, dtype=bool), opts)
    user = ev[c.USER_ID].to_numpy()
    item = ev[c.ITEM_ID].to_numpy()
    if rule == "consecutive":
        start = np.ones(ev.height, dtype=bool)
        start[1:] = (item[1:] != item[:-1]) | (user[1:] != user[:-1])
        return _steps_from_runs(ev, start, opts)
    ts = ev[c.TIMESTAMP].to_numpy()
    if rule == "same_timestamp":
        # only rows sharing (user, timestamp) with another row can merge; reorder just those by item
        # inside their (user, timestamp) block (blocks are contiguous in time order)
        tie = (user[1:] == user[:-1]) & (ts[1:] == ts[:-1])
        block = np.cumsum(np.r_[True, ~tie])
        in_tie = np.zeros(ev.height, dtype=bool)
        in_tie[1:] |= tie
        in_tie[:-1] |= tie
        idx = np.flatnonzero(in_tie)
        order = np.arange(ev.height)
        if idx.size:
            sub = (block[idx].astype(np.uint64) << np.uint64(32)) | item[idx].astype(np.uint64)
            order[idx] = idx[np.argsort(sub, kind="stable")]
            ev, block, item = ev[order], block[order], item[order]
        start = np.ones(ev.height, dtype=bool)
        start[1:] = (block[1:] != block[:-1]) | (item[1:] != item[:-1])
        return _steps_from_runs(ev, start, opts)
    # window: chains of events on one item, each within the window of the previous one
    key = user.astype(np.uint64) << np.uint64(32) | item.astype(np.uint64)
    order = np.argsort(key, kind="stable")  # time order kept inside each (user, item)
    ev, k, t = ev[order], key[order], ts[order]
    start = np.ones(ev.height, dtype=bool)
    start[1:] = (k[1:] != k[:-1]) | ((t[1:] - t[:-1]) > int(opts.merge_window_seconds * 1000))
    return _steps_from_runs(ev, start, opts)


def _steps_from_runs(ev: pl.DataFrame, start: np.ndarray, opts: SequenceOptions) -> pl.DataFrame:
    """Reduce contiguous runs (``start`` marks each run's first row) to steps in sequence order."""
    first = np.flatnonzero(start)
    last = np.r_[first[1:], ev.height] - 1
    behaviors = np.bitwise_or.reduceat(ev[c.BEHAVIORS].to_numpy(), first) if ev.height else np.zeros(0, np.uint16)
    pos = ev[POS].to_numpy()
    first_pos = np.minimum.reduceat(pos, first) if ev.height else pos  # runs keep time order: min = first
    time_rows = first if opts.step_time == "first" else last
    steps = pl.DataFrame({
        c.USER_ID: ev[c.USER_ID].gather(first),
        c.ITEM_ID: ev[c.ITEM_ID].gather(first),
        c.BEHAVIORS: pl.Series(behaviors, dtype=pl.UInt16),
        c.TIMESTAMP: ev[c.TIMESTAMP].gather(time_rows),
        c.EVENT_ORDER: ev[c.EVENT_ORDER].gather(first),
        "n_events": pl.Series((last - first + 1).astype(np.uint32)),
        POS: first_pos,
    }).sort(POS).drop(POS)
    users = steps[c.USER_ID].to_numpy()
    new_user = np.r_[True, users[1:] != users[:-1]] if len(users) else np.zeros(0, bool)
    run_start = np.maximum.accumulate(np.where(new_user, np.arange(len(users)), 0)) if len(users) else users
    step = (np.arange(len(users)) - run_start).astype(np.uint32)
    return steps.with_columns(pl.Series("step", step)).select(
        c.USER_ID, "step", c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP, c.EVENT_ORDER, "n_events")


def with_sessions(steps: pl.DataFrame, gap_minutes: float) -> pl.DataFrame:
    """Per user, a new session starts when the gap to the previous step exceeds ``gap_minutes``.

    Without timestamps (Tenrec, split releases) every user has one session.
    """
    user = steps[c.USER_ID].to_numpy()
    n = len(user)
    new_user = np.r_[True, user[1:] != user[:-1]] if n else np.zeros(0, bool)
    if steps[c.TIMESTAMP].null_count() == n:
        new_session = np.zeros(n, dtype=bool)
    else:
        ts = steps[c.TIMESTAMP].to_numpy()
        new_session = np.r_[False, (ts[1:] - ts[:-1]) > int(gap_minutes * 60_000)] & ~new_user
    count = np.cumsum(new_session)
    at_user_start = np.maximum.accumulate(np.where(new_user, count, 0)) if n else count
    return steps.with_columns(pl.Series("session", (count - at_user_start).astype(np.uint32)))


STEP_COLUMNS = (c.USER_ID, "step", c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP, c.EVENT_ORDER, "n_events", "session")


def user_digests(steps: pl.DataFrame, columns: Sequence[str] = STEP_COLUMNS) -> pl.DataFrame:
    """Per user (in the rows' order, users contiguous), a 64-bit digest of the user's rows: the
    wrapping sum of each row's hash over ``columns`` (steps: every column, the step index included;
    events: every column steps are built from, the event order included), so any change to a user's
    rows (content, order, count) changes it (but for a 2^-64 chance). Polars' hash is stable within
    one polars version; after an upgrade every digest differs, which only costs one full recompute."""
    if steps.is_empty():
        return pl.DataFrame(schema={c.USER_ID: pl.UInt32, "digest": pl.UInt64})
    # hash_rows: 0.1 s per 5M steps, where the hash of a struct of the columns took 0.4 s
    hashes = steps.select(columns).hash_rows(seed=0).to_numpy()
    user = steps[c.USER_ID].to_numpy()
    first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    return pl.DataFrame({c.USER_ID: pl.Series(user[first], dtype=pl.UInt32),
                         "digest": pl.Series(np.add.reduceat(hashes, first), dtype=pl.UInt64)})

