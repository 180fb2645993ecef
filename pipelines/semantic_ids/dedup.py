"""The dedup level: a counter that makes every item's code tuple unique.

Items sharing a tuple get 0, 1, 2, ... in item order (GRID / TIGER style: every item gets the
level, so all SIDs have the same length). On a refresh, items that already have a counter keep it
and new items in a group continue after the group's largest counter.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def dedup_counter(codes: np.ndarray, order_key: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """Counter [n] for ``codes`` [n, L]; ``order_key`` orders items inside a group (e.g. raw item id);
    ``previous`` holds kept counters (-1 = new item)."""
    n, levels = codes.shape
    prev = np.full(n, -1, dtype=np.int64) if previous is None else np.asarray(previous, dtype=np.int64)
    group = [f"c{i}" for i in range(levels)]
    df = pl.DataFrame({g: codes[:, i] for i, g in enumerate(group)} | {"key": order_key, "prev": prev})
    new = pl.col("prev") < 0
    counter = (pl.when(new)
               .then(pl.col("prev").max().over(group).clip(lower_bound=-1)
                     + pl.col("key").rank("ordinal").over([*group, "__new"]))
               .otherwise(pl.col("prev")))
    return df.with_columns(new.alias("__new")).select(counter.cast(pl.Int64).alias("counter"))["counter"].to_numpy()
