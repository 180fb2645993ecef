"""Behavior statistics per split protocol, from training steps only (what the asset calls).

Per protocol: statistics JSON, the M and T matrices and a heatmap (paths: ``pipelines.layout``).
Statistics never see valid, test, between or excluded steps: computing them before the split
would leak evaluation data into training augmentations.
"""

from __future__ import annotations

import io
import json

import numpy as np
import polars as pl

from pipelines.augmentation.statistics import BehaviorCounts, BehaviorStatistics, count_sets, statistics
from pipelines.reporting import Log
from pipelines.registry import DatasetConfig
from pipelines.sequences.splits import PROTOCOLS
from pipelines.augmentation.options import AugmentationOptions
from pipelines.sequences.stage import ROWS_PER_SHARD
from pipelines.parallel import ordered_map
from pipelines.storage import (
    DatasetPaths,
    file_identity,
    read_user_range,
    user_shards,
    write_bytes_atomic,
    write_text_atomic,
)
from schemas import columns as c



def training_counts(paths: DatasetPaths, protocol: str, n_behaviors: int, rows_per_shard: int = ROWS_PER_SHARD) -> BehaviorCounts:
    """Counts over the protocol's train-role steps, shard by shard, merged by addition."""
    return training_counts_of(paths, [protocol], n_behaviors, rows_per_shard)[protocol]


def training_counts_of(paths: DatasetPaths, protocols: list[str], n_behaviors: int,
                       rows_per_shard: int = ROWS_PER_SHARD) -> dict[str, BehaviorCounts]:
    """``training_counts`` of several protocols in one sweep: each user range's steps are read once."""
    totals = {p: BehaviorCounts(n_behaviors) for p in protocols}
    if not protocols:
        return totals

    def range_counts(bounds: tuple[int, int]) -> dict[str, BehaviorCounts]:
        steps = read_user_range(paths.steps(), bounds[0], bounds[1], [c.USER_ID, "step", c.BEHAVIORS])
        return {p: count_sets(train_steps(steps, read_user_range(paths.roles(p), *bounds)), n_behaviors)
                for p in protocols}

    # user ranges side by side; their counts are added in range order (the same sums every run)
    for counts in ordered_map(range_counts, user_shards(paths.steps(), rows_per_shard)):
        for protocol in protocols:
            totals[protocol] = totals[protocol] + counts[protocol]
    return totals


def train_steps(steps: pl.DataFrame, roles: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``steps`` whose role is ``train``, in their order.

    A roles table has one row per step; when its rows line up with ``steps`` (same users and steps
    in the same order: every protocol writes them so) the role column is a mask, else a join.
    """
    if (roles.height == steps.height and roles[c.USER_ID].equals(steps[c.USER_ID], check_names=False)
            and roles["step"].equals(steps["step"], check_names=False)):
        return steps.filter(roles["role"] == "train")
    return steps.join(roles.filter(pl.col("role") == "train"), on=[c.USER_ID, "step"], how="semi",
                      maintain_order="left")


def to_json(cfg: DatasetConfig, s: BehaviorStatistics, c_exponent: float) -> dict[str, object]:
    return {
        "behaviors": cfg.behavior_names, "training_sets": s.n_sets, "c": c_exponent,
        "m": s.m.tolist(), "M": s.M.tolist(), "M_prob": s.M_prob.round(6).tolist(),
        "P_j_given_i": s.cond_prob.round(6).tolist(), "mask_prob": s.mask_prob.round(6).tolist(),
        "set_size_counts": s.set_size_counts.tolist(), "T": s.T.tolist(), "T_prob": s.T_prob.round(6).tolist(),
    }


def heatmap(cfg: DatasetConfig, s: BehaviorStatistics, title: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = cfg.behavior_names
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    for ax, mat, label in ((axes[0], s.cond_prob, "P(column | row) in training sets"),
                           (axes[1], s.T_prob, "next-step transition (row-normalized)")):
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(label, fontsize=9)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=axes, shrink=0.7)
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def materialize_statistics(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print,
                           c_exponent: float | None = None,
                           counts: dict[str, BehaviorCounts] | None = None) -> dict[str, dict[str, object]]:
    """``counts``: per protocol, counts already added up (a sharded run's merge); others are counted here.

    A protocol whose statistics were computed from the same steps and roles files (``inputs.json``:
    their size and footer hash) with the same registry entry is not counted or written again: a
    refresh in which the split did not change leaves its statistics as they are."""

    from pipelines.sequences.state import config_hash

    c_exponent = AugmentationOptions.of(cfg).mask_exponent if c_exponent is None else c_exponent
    out: dict[str, dict[str, object]] = {}
    present = [p for p in PROTOCOLS if paths.roles(p).is_file()]

    def inputs(protocol: str) -> dict[str, object]:
        return {"config": config_hash(cfg), "c_exponent": c_exponent, "steps": file_identity(paths.steps()),
                "roles": file_identity(paths.roles(protocol))}

    def current(protocol: str) -> bool:
        try:
            return (not (counts or {}).get(protocol) and paths.statistics(protocol).is_file()
                    and json.loads(paths.statistics_inputs(protocol).read_text()) == inputs(protocol))
        except (OSError, ValueError):
            return False

    unchanged = {p for p in present if current(p)}
    for protocol in sorted(unchanged, key=PROTOCOLS.index):
        out[protocol] = json.loads(paths.statistics(protocol).read_text())
        log(f"{cfg.name}/{protocol}: statistics unchanged (the same steps and roles)")
    present = [p for p in present if p not in unchanged]
    counted = training_counts_of(paths, [p for p in present if not (counts or {}).get(p)], len(cfg.behaviors))
    for protocol in present:
        paths.statistics_inputs(protocol).unlink(missing_ok=True)  # a run that stops midway leaves none
        total = (counts or {}).get(protocol) or counted[protocol]
        s = statistics(total, c_exponent)
        doc = to_json(cfg, s, c_exponent)
        for name, arr in (("M", s.M), ("T", s.T)):
            buf = io.BytesIO()
            np.save(buf, arr)
            write_bytes_atomic(buf.getvalue(), paths.statistics_matrix(protocol, name))
        write_bytes_atomic(heatmap(cfg, s, f"{cfg.name} / {protocol}: training sets only"),
                           paths.statistics_heatmap(protocol))
        write_text_atomic(json.dumps(doc, indent=1) + "\n", paths.statistics(protocol))
        write_text_atomic(json.dumps(inputs(protocol), indent=1, sort_keys=True) + "\n",
                          paths.statistics_inputs(protocol))
        out[protocol] = doc
        log(f"{cfg.name}/{protocol}: statistics over {s.n_sets:,} training sets")
    return {p: out[p] for p in PROTOCOLS if p in out}


def materialize_sequential_views(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print,
                                 rows_per_shard: int = ROWS_PER_SHARD) -> dict[str, dict[str, int]]:
    """x augmented views of every split's training steps (``stages.augmentation.sequential_views``,
    default 3; seed ``stages.augmentation.seed``, default 0)."""
    from pipelines.augmentation.sequential import sequential_views
    from pipelines.storage import ParquetAppender

    opts = AugmentationOptions.of(cfg)
    views, seed = opts.sequential_views, opts.seed
    out: dict[str, dict[str, int]] = {}
    for protocol in PROTOCOLS:
        roles_path = paths.roles(protocol)
        if not roles_path.is_file():
            continue
        target = paths.sequential_views(protocol)
        originals = 0
        with ParquetAppender(target, {"mbrec.views": str(views), "mbrec.seed": str(seed)}) as w:
            for lo, hi in user_shards(paths.steps(), rows_per_shard):
                steps = read_user_range(paths.steps(), lo, hi)
                train = train_steps(steps, read_user_range(roles_path, lo, hi))
                originals += train.height
                w.write(sequential_views(train, cfg, views, seed))
            out[protocol] = {"training_steps": originals, "augmented_rows": w.rows, "views": views}
        log(f"{cfg.name}/{protocol}: {views} sequential views, {w.rows:,} rows from {originals:,} training steps")
    return out
