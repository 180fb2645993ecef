"""The same-item leak: filtering it out of evaluation histories, and measuring it.

A history step *leaks* the target when it is on the target's item and holds only behaviors of a
lower level than the target's highest behavior (a click or cart right before the purchase).
Modes (applied to valid/test examples, optionally to training targets):
- ``off``: nothing changes;
- ``last``: drop the most recent history step if it leaks (GAMER paper);
- ``all``: drop every leaking step within the truncation window (GAMER code);
- ``merge``: as ``all``, and fold the dropped behaviors into the target's set (behavior-set models).
"""

from __future__ import annotations

import math

from typing import Literal

import polars as pl

from pipelines.registry import DatasetConfig
from schemas import columns as c

Mode = Literal["off", "last", "all", "merge"]
AUDIT_KS = (1, 5, 10, 20, 50)


def lower_level_masks(cfg: DatasetConfig) -> dict[int, int]:
    """For each behavior bit, the mask of every behavior whose level is strictly lower."""
    out = {}
    for b in cfg.behaviors:
        out[cfg.behavior_bit(b.name)] = sum(cfg.behavior_bit(o.name) for o in cfg.behaviors if o.level < b.level)
    return out


def _target_lower_mask(cfg: DatasetConfig) -> pl.Expr:
    """Mask of behaviors strictly below the target set's highest level."""
    levels = sorted({b.level for b in cfg.behaviors}, reverse=True)
    expr = pl.lit(0, pl.UInt16)
    for level in reversed(levels):  # highest level present wins: build from low to high
        bits = sum(cfg.behavior_bit(b.name) for b in cfg.behaviors if b.level == level)
        below = sum(cfg.behavior_bit(b.name) for b in cfg.behaviors if b.level < level)
        expr = pl.when((pl.col(c.BEHAVIORS) & bits) != 0).then(pl.lit(below, pl.UInt16)).otherwise(expr)
    return expr


# examples whose history windows are expanded at once (up to max_len rows each): a protocol with an
# example per held-out step (session) has about one example per five steps, so a 5M-row chunk of
# steps would otherwise expand to tens of millions of window rows together
EXAMPLES_PER_BLOCK = 100_000


def user_starts(steps: pl.DataFrame) -> pl.DataFrame:
    """(user_id, __first): the row of each user's first step (steps are contiguous per user)."""
    return steps.with_row_index("__row").group_by(c.USER_ID).agg(pl.col("__row").min().alias("__first"))


def window_rows(steps: pl.DataFrame, examples: pl.DataFrame, max_len: int,
                starts: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (example, history step) within the last ``max_len`` steps before history_end.

    Steps are contiguous per user, so each window is a range of row offsets: no join over users.
    ``starts``: ``user_starts(steps)``, when the caller already has it.
    """
    starts = user_starts(steps) if starts is None else starts
    ex = examples.with_row_index("example").join(starts, on=c.USER_ID, how="left")
    lo = (pl.col("history_end").cast(pl.Int64) - max_len).clip(lower_bound=0)
    rows = ex.select(
        "example",
        pl.int_ranges(pl.col("__first").cast(pl.Int64) + lo, pl.col("__first").cast(pl.Int64) + pl.col("history_end"))
        .alias("__row"),
    ).explode("__row").drop_nulls("__row")
    hist = steps.select("step", pl.col(c.ITEM_ID).alias("h_item"), pl.col(c.BEHAVIORS).alias("h_behaviors"))
    return pl.concat([rows.drop("__row"), hist[rows["__row"].cast(pl.UInt32)]], how="horizontal")


def find_leaks(steps: pl.DataFrame, examples: pl.DataFrame, cfg: DatasetConfig, mode: Mode, max_len: int,
               examples_per_block: int = EXAMPLES_PER_BLOCK) -> pl.DataFrame:
    """(example, step, h_behaviors) of every history step the mode removes; ``example`` is the row of
    ``examples``. The windows are expanded ``examples_per_block`` examples at a time (bounded memory)."""
    schema = {"example": pl.UInt32, "step": pl.UInt32, "h_behaviors": pl.UInt16}
    if mode == "off" or examples.is_empty():
        return pl.DataFrame(schema=schema)
    starts = user_starts(steps)
    parts = []
    for first in range(0, examples.height, examples_per_block):
        block = examples.slice(first, examples_per_block)
        ex = block.with_row_index("example").with_columns(_target_lower_mask(cfg).alias("__lower"))
        win = window_rows(steps, block, max_len, starts).join(
            ex.select("example", pl.col(c.ITEM_ID).alias("t_item"), "__lower", "history_end"), on="example")
        leaking = (pl.col("h_item") == pl.col("t_item")) & ((pl.col("h_behaviors") & ~pl.col("__lower")) == 0)
        if mode == "last":
            leaking &= pl.col("step") == pl.col("history_end") - 1
        parts.append(win.filter(leaking).select((pl.col("example") + first).cast(pl.UInt32), "step", "h_behaviors"))
    return pl.concat(parts).cast(schema)


def apply_filter(examples: pl.DataFrame, leaks: pl.DataFrame, mode: Mode) -> pl.DataFrame:
    """Examples with the list of dropped history steps and (for merge) the widened target set."""
    dropped = leaks.group_by("example").agg(
        pl.col("step").sort().alias("dropped_steps"), pl.col("h_behaviors").bitwise_or().alias("__merged"))
    out = examples.with_row_index("example").join(dropped, on="example", how="left").sort("example")
    out = out.with_columns(pl.col("dropped_steps").fill_null(pl.lit([], pl.List(pl.UInt32))))
    if mode == "merge":
        out = out.with_columns((pl.col(c.BEHAVIORS) | pl.col("__merged").fill_null(0)).cast(pl.UInt16).alias(c.BEHAVIORS))
    return out.drop("example", "__merged")


def audit(steps: pl.DataFrame, examples: pl.DataFrame, *, max_len: int = 50, ks: tuple[int, ...] = AUDIT_KS) -> pl.DataFrame:
    """Leak exposure and the scores of two leak-exploiting recommenders, one row per k.

    For each evaluation example, over its (filtered) history window of at most ``max_len`` steps:
    - ``share_in_last_k``: the target item is among the last k history steps;
    - ``recent``: recommend distinct history items, most recent first;
    - ``frequent``: recommend history items by count, ties by recency.
    HR@k = share of examples with the target ranked within k; NDCG@k = mean of 1/log2(rank+1)
    for ranks <= k (one target). Examples whose target is not in the history count as misses.
    ``examples`` may carry ``dropped_steps`` (from ``apply_filter``): those steps are skipped.
    """
    n = examples.height
    schema = {"k": pl.Int32, "share_in_last_k": pl.Float64, "recent_hr": pl.Float64, "recent_ndcg": pl.Float64,
              "frequent_hr": pl.Float64, "frequent_ndcg": pl.Float64}
    if n == 0:
        return pl.DataFrame(schema=schema)
    win = window_rows(steps, examples.select(c.USER_ID, "history_end"), max_len)
    if "dropped_steps" in examples.columns:
        drop = examples.with_row_index("example").select("example", pl.col("dropped_steps").alias("step")).explode("step")
        win = win.join(drop.drop_nulls(), on=["example", "step"], how="anti")
    targets = examples.with_row_index("example").select("example", pl.col(c.ITEM_ID).alias("t_item"))
    # position from the end among kept history steps (1 = most recent)
    win = win.with_columns(pl.col("step").rank("ordinal", descending=True).over("example").alias("from_end"))
    last_k = win.join(targets, on="example").filter(pl.col("h_item") == pl.col("t_item")).group_by("example").agg(
        pl.col("from_end").min().alias("nearest"))
    per_item = win.group_by("example", "h_item").agg(pl.col("from_end").min().alias("recency"), pl.len().alias("count"))
    ranks = per_item.with_columns(
        pl.col("recency").rank("ordinal").over("example").alias("recent_rank"),
        pl.struct(pl.col("count") * -1, "recency").rank("ordinal").over("example").alias("frequent_rank"),
    ).join(targets, on="example").filter(pl.col("h_item") == pl.col("t_item"))
    rows = []
    for k in ks:
        row = {"k": k, "share_in_last_k": last_k.filter(pl.col("nearest") <= k).height / n}
        for name in ("recent", "frequent"):
            r = ranks[f"{name}_rank"]
            hit = r.filter(r <= k)
            row[f"{name}_hr"] = hit.len() / n
            # fsum is exactly rounded, so the group-by's arbitrary row order cannot change the last bits
            row[f"{name}_ndcg"] = math.fsum((1.0 / (hit.cast(pl.Float64) + 1).log(2)).to_list()) / n
        rows.append(row)
    return pl.DataFrame(rows, schema=schema)
