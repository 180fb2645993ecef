"""Split protocols over behavior-set steps.

Every protocol returns the same two tables:
- roles: one row per step (user_id, step, role), role in train / valid / between / test /
  excluded, so every kept step lands in exactly one role;
- examples: one row per evaluation target (user_id, role, target_step, history_end,
  item_id, behaviors); the target's history is the user's steps [0, history_end).

Protocols:
- ``leave_one_out``: the last step holding a target behavior is test, the previous such step
  valid; steps between them are "between" (test history only); steps after test are excluded;
  users with fewer than two target steps are excluded (and counted).
- ``eidp``: EIDP/BLADE: as above with "target" = any non-auxiliary behavior, so the steps
  between valid and test are auxiliary-only (the release's between_val_test); as in those
  releases, users without two non-auxiliary steps stay in training (train only).
- ``session``: GAMER: the last session is test, the one before valid; every step of a held-out
  session is a target whose history ends at the session start; users need three sessions.
- ``temporal``: a global cut: steps before ``valid_from`` train; the first target step in
  [valid_from, test_from) of each user is valid, the first at or after test_from is test; other
  steps at or after valid_from are history only ("between") up to a user's last target, later
  ones excluded. Nothing after a cut reaches training (no cross-user future leak).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.registry import DatasetConfig
from schemas import columns as c

ROLES = ("train", "valid", "between", "test", "excluded")
PROTOCOLS = ("leave_one_out", "eidp", "session", "temporal")


@dataclass
class Split:
    protocol: str
    roles: pl.DataFrame
    examples: pl.DataFrame
    users_excluded: int
    note: str = ""


def mask_of(cfg: DatasetConfig, names: list[str]) -> int:
    """Bitmask of the named behaviors; a clear error names an unknown behavior and the vocabulary."""
    m = 0
    for n in names:
        m |= cfg.behavior_bit(n)
    return m


def _two_last(steps: pl.DataFrame, is_target: pl.Expr, protocol: str, short_users_train: bool = False) -> Split:
    """Shared by leave_one_out and eidp: last target step = test, previous target step = valid.

    Steps are contiguous per user and user ids are dense, so per-user values broadcast to rows by
    numpy indexing instead of joins.
    """
    targets = steps.select(c.USER_ID, "step", is_target.alias("__t")).filter(pl.col("__t"))
    last2 = (
        targets.group_by(c.USER_ID)
        .agg(pl.col("step").tail(2).alias("__s"))
        .filter(pl.col("__s").list.len() == 2)
        .select(c.USER_ID, pl.col("__s").list.get(0).alias("valid"), pl.col("__s").list.get(1).alias("test"))
    )
    user = steps[c.USER_ID].to_numpy()
    step = steps["step"].to_numpy().astype(np.int64)
    size = int(user.max()) + 1 if len(user) else 0
    valid_of = np.full(size, -1, dtype=np.int64)
    test_of = np.full(size, -1, dtype=np.int64)
    valid_of[last2[c.USER_ID].to_numpy()] = last2["valid"].to_numpy()
    test_of[last2[c.USER_ID].to_numpy()] = last2["test"].to_numpy()
    v, t = valid_of[user], test_of[user]
    code = np.select([t < 0, step < v, step == v, step < t, step == t], [0 if short_users_train else 4, 0, 1, 2, 3],
                     default=4)
    roles = steps.select(c.USER_ID, "step").with_columns(
        pl.Series("role", np.array(ROLES, dtype=object)[code], dtype=pl.String))
    picked = np.flatnonzero((code == 1) | (code == 3))
    examples = _examples_at(steps, picked, np.where(code[picked] == 1, "valid", "test"), step[picked])
    short = int(steps[c.USER_ID].n_unique() - last2.height)
    return Split(protocol, roles, examples, 0 if short_users_train else short,
                 note=f"{short} users without two target steps are training-only" if short_users_train else "")


def _examples_at(steps: pl.DataFrame, rows: np.ndarray, roles: np.ndarray, history_end: np.ndarray) -> pl.DataFrame:
    """Examples for target steps given by row positions in ``steps``."""
    picked = steps[rows]
    return picked.select(
        c.USER_ID, pl.Series("role", roles.astype(object), dtype=pl.String), pl.col("step").alias("target_step"),
        pl.Series("history_end", history_end.astype(np.uint32)), c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP,
    ).sort(c.USER_ID, "role", "target_step", descending=[False, True, False])


def _examples(steps: pl.DataFrame, targets: pl.DataFrame, history_end: pl.Expr) -> pl.DataFrame:
    """Examples for target (user_id, step, role) rows, joined to their steps."""
    return (
        targets.join(steps, on=[c.USER_ID, "step"], how="left")
        .select(
            c.USER_ID, "role", pl.col("step").alias("target_step"), history_end.cast(pl.UInt32).alias("history_end"),
            c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP,
        )
        .sort(c.USER_ID, "role", "target_step", descending=[False, True, False])
    )


def leave_one_out(steps: pl.DataFrame, cfg: DatasetConfig, targets: list[str] | None = None) -> Split:
    t = mask_of(cfg, targets or cfg.targets)
    return _two_last(steps, (pl.col(c.BEHAVIORS) & t) != 0, "leave_one_out")


def eidp(steps: pl.DataFrame, cfg: DatasetConfig) -> Split:
    aux = mask_of(cfg, cfg.auxiliary)
    return _two_last(steps, (pl.col(c.BEHAVIORS) & ~pl.lit(aux, pl.UInt16)) != 0, "eidp", short_users_train=True)


def session(steps: pl.DataFrame, cfg: DatasetConfig) -> Split:
    if cfg.time.unit == "none":
        raise ValueError(f"dataset '{cfg.name}' has no time column, so it has no sessions: "
                         "use the leave_one_out, eidp or temporal-free protocols")
    last = steps.group_by(c.USER_ID).agg(pl.col("session").max().alias("__last"))
    joined = steps.join(last, on=c.USER_ID, how="left", maintain_order="left")
    enough = pl.col("__last") >= 2
    role = (
        pl.when(~enough).then(pl.lit("excluded"))
        .when(pl.col("session") == pl.col("__last")).then(pl.lit("test"))
        .when(pl.col("session") == pl.col("__last") - 1).then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    roles = joined.select(c.USER_ID, "step", role.alias("role"))
    start = steps.group_by(c.USER_ID, "session").agg(pl.col("step").min().alias("__start"))
    held = roles.filter(pl.col("role").is_in(["valid", "test"])).join(
        steps.select(c.USER_ID, "step", "session"), on=[c.USER_ID, "step"]).join(start, on=[c.USER_ID, "session"])
    examples = _examples(steps, held.select(c.USER_ID, "step", "role", "__start"), history_end=pl.col("__start"))
    return Split("session", roles, examples, int((last["__last"] < 2).sum()))


def temporal(steps: pl.DataFrame, cfg: DatasetConfig, valid_from_ms: int, test_from_ms: int,
             targets: list[str] | None = None) -> Split:
    if cfg.time.unit == "none":
        raise ValueError(f"dataset '{cfg.name}' has no time column: a temporal split needs timestamps")
    if not valid_from_ms < test_from_ms:
        raise ValueError("temporal split: valid_from must be before test_from")
    t = mask_of(cfg, targets or cfg.targets)
    ts, is_t = pl.col(c.TIMESTAMP), (pl.col(c.BEHAVIORS) & t) != 0
    firsts = steps.group_by(c.USER_ID).agg(
        pl.col("step").filter(is_t & (ts >= valid_from_ms) & (ts < test_from_ms)).min().alias("__valid"),
        pl.col("step").filter(is_t & (ts >= test_from_ms)).min().alias("__test"),
    )
    j = steps.join(firsts, on=c.USER_ID, how="left", maintain_order="left")
    last_target = pl.max_horizontal(pl.col("__valid").fill_null(-1), pl.col("__test").fill_null(-1))
    role = (
        pl.when(ts < valid_from_ms).then(pl.lit("train"))
        .when(pl.col("step") == pl.col("__valid")).then(pl.lit("valid"))
        .when(pl.col("step") == pl.col("__test")).then(pl.lit("test"))
        .when(pl.col("step") < last_target).then(pl.lit("between"))
        .otherwise(pl.lit("excluded"))
    )
    roles = j.select(c.USER_ID, "step", role.alias("role"))
    examples = _examples(steps, roles.filter(pl.col("role").is_in(["valid", "test"])), history_end=pl.col("step"))
    no_eval = int(firsts.filter(pl.col("__valid").is_null() & pl.col("__test").is_null()).height)
    return Split("temporal", roles, examples, no_eval,
                 note=f"cut: valid from {valid_from_ms} ms, test from {test_from_ms} ms (UTC)")


def quantile_cuts(steps: pl.DataFrame, valid_q: float = 0.8, test_q: float = 0.9) -> tuple[int, int]:
    """Default temporal cuts: quantiles of step times."""
    q = steps.select(pl.col(c.TIMESTAMP).quantile(valid_q, "lower").alias("v"),
                     pl.col(c.TIMESTAMP).quantile(test_q, "lower").alias("t")).row(0)
    return int(q[0]), int(q[1])
