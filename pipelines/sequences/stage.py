"""File-level orchestration of the sequence stage (what the Dagster assets call; no Dagster here).

Layout under data/outputs/<dataset>/:
    sequences/steps.parquet                 behavior-set steps with sessions
    splits/<protocol>/roles.parquet         one role per step
    splits/<protocol>/examples.parquet      valid/test targets after the leakage filter
    splits/<protocol>/examples_unfiltered.parquet
    leakage/audit.parquet, leakage/leakage_audit.md
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from pipelines.ingest.core import EVENTS_FILE
from pipelines.registry import DatasetConfig
from pipelines.reporting import markdown_table
from pipelines.sequences import splits as sp
from pipelines.sequences.leakage import apply_filter, audit, find_leaks
from pipelines.sequences.options import SequenceOptions
from pipelines.sequences.steps import EmptyPartitionError, behavior_steps, clean, with_sessions
from pipelines.storage import DatasetPaths, write_parquet_atomic, write_text_atomic
from schemas import columns as c

Log = Callable[[str], None]
STEPS_FILE = "steps.parquet"
NO_LEAKS = pl.DataFrame(schema={"example": pl.UInt32, "step": pl.UInt32, "h_behaviors": pl.UInt16})


def steps_path(paths: DatasetPaths) -> Path:
    return paths.stage_dir("sequences") / STEPS_FILE


def split_dir(paths: DatasetPaths, protocol: str) -> Path:
    return paths.stage_dir("splits") / protocol


def materialize_steps(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print) -> dict[str, object]:
    opts = SequenceOptions.of(cfg)
    events = pl.read_parquet(paths.stage_dir("ingest") / EVENTS_FILE,
                             columns=[c.USER_ID, c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP, c.EVENT_ORDER])
    cleaned, report = clean(events, cfg, opts)
    if cleaned.is_empty():
        raise EmptyPartitionError(
            f"dataset '{cfg.name}': cleaning left no events ({report.rows_in:,} in, {report.after_window:,} after the "
            f"time window, {report.after_exposures:,} after dropping exposures, k-core rounds {report.k_core_rounds}). "
            f"Loosen datasets.{cfg.name}.stages.sequences.")
    log(f"{cfg.name}: merging {cleaned.height:,} events into behavior-set steps ({opts.merge_rule})")
    steps = with_sessions(behavior_steps(cleaned, cfg, opts), opts.session_gap_minutes)
    write_parquet_atomic(steps, steps_path(paths))
    per_user = steps.group_by(c.USER_ID).agg(pl.len().alias("steps"), (pl.col("session").max() + 1).alias("sessions"))
    sets = steps[c.BEHAVIORS].value_counts().sort("count", descending=True)
    return {
        "events_in": report.rows_in, "after_time_window": report.after_window,
        "after_exposures": report.after_exposures, "k_core_rounds": report.k_core_rounds,
        "events_kept": cleaned.height, "steps": steps.height, "users": per_user.height,
        "items": steps[c.ITEM_ID].n_unique(), "merged_events": int(cleaned.height - steps.height),
        "mean_steps_per_user": float(per_user["steps"].mean()),
        "mean_sessions_per_user": float(per_user["sessions"].mean()),
        "merge_rule": opts.merge_rule if cfg.time.unit != "none" or opts.merge_rule == "consecutive" else
                      f"{opts.merge_rule} (no time column: only consecutive merging applies)",
        "time_note": "no time column: file order is the sequence order; one session per user"
                     if cfg.time.unit == "none" else f"time granularity {cfg.time.granularity}; ties keep file order",
        "behavior_sets": [{"set": _set_name(cfg, int(m)), "steps": int(n)} for m, n in sets.head(15).iter_rows()],
    }


def _set_name(cfg: DatasetConfig, mask: int) -> str:
    return "{" + ",".join(b for i, b in enumerate(cfg.behavior_names) if mask >> i & 1) + "}"


def materialize_split(cfg: DatasetConfig, paths: DatasetPaths, protocol: str, log: Log = print) -> dict[str, object]:
    """Write one protocol's roles and examples (filtered and unfiltered); raise when it yields nothing."""
    opts = SequenceOptions.of(cfg)
    steps = pl.read_parquet(steps_path(paths))
    out = split_dir(paths, protocol)
    if protocol in ("session", "temporal") and cfg.time.unit == "none":
        return {"applicable": False, "note": f"dataset '{cfg.name}' has no time column: the {protocol} split needs "
                                             "timestamps; use leave_one_out or eidp"}
    if protocol == "leave_one_out":
        split = sp.leave_one_out(steps, cfg, opts.target_behaviors)
    elif protocol == "eidp":
        split = sp.eidp(steps, cfg)
    elif protocol == "session":
        split = sp.session(steps, cfg)
    else:
        v, t = sp.quantile_cuts(steps, opts.temporal_valid_quantile, opts.temporal_test_quantile)
        split = sp.temporal(steps, cfg, v, t, opts.target_behaviors)
    if split.examples.is_empty():
        raise EmptyPartitionError(
            f"dataset '{cfg.name}', split {protocol}: no user has enough target steps "
            f"({split.users_excluded:,} users excluded); targets are {opts.target_behaviors or cfg.targets}")
    leaks = find_leaks(steps, split.examples, cfg, opts.leakage_filter, opts.max_len)
    filtered = apply_filter(split.examples, leaks, opts.leakage_filter)
    unfiltered = apply_filter(split.examples, NO_LEAKS, "off")
    write_parquet_atomic(split.roles, out / "roles.parquet")
    write_parquet_atomic(filtered, out / "examples.parquet")
    write_parquet_atomic(unfiltered, out / "examples_unfiltered.parquet")
    roles = split.roles["role"].value_counts().sort("role")
    log(f"{cfg.name}/{protocol}: {filtered.height:,} evaluation examples; filter '{opts.leakage_filter}' "
        f"removed {leaks.height:,} history steps from {leaks['example'].n_unique():,} examples")
    return {
        "applicable": True, "note": split.note, "users_excluded": split.users_excluded,
        "roles": dict(zip(roles["role"].to_list(), roles["count"].to_list(), strict=True)),
        "examples": filtered.height, "leakage_filter": opts.leakage_filter, "max_len": opts.max_len,
        "leak_steps_removed": leaks.height, "examples_with_leak_removed": leaks["example"].n_unique(),
    }


def materialize_model_ready(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print) -> dict[str, dict[str, int]]:
    """train/valid/test arrays per materialized split: parquet (Array columns) and .npz."""
    import numpy as np

    from pipelines.sequences import model_ready

    opts = SequenceOptions.of(cfg)
    steps = pl.read_parquet(steps_path(paths))
    summary: dict[str, dict[str, int]] = {}
    for protocol in sp.PROTOCOLS:
        d = split_dir(paths, protocol)
        if not (d / "examples.parquet").is_file():
            continue
        roles = pl.read_parquet(d / "roles.parquet")
        examples = pl.read_parquet(d / "examples.parquet")
        train_steps = roles.filter(pl.col("role") == "train").select(c.USER_ID, "step")
        out = paths.stage_dir("model_ready") / protocol
        summary[protocol] = {}
        for role, ex, allowed in (("train", model_ready.training_examples(steps, roles), train_steps),
                                  ("valid", examples.filter(pl.col("role") == "valid"), None),
                                  ("test", examples.filter(pl.col("role") == "test"), None)):
            arrays = model_ready.build(steps, ex, opts.max_len, allowed)
            write_parquet_atomic(model_ready.to_frame(arrays, role), out / f"{role}.parquet")
            tmp = out / f".{role}.tmp.npz"
            np.savez(tmp, **arrays)
            tmp.replace(out / f"{role}.npz")
            summary[protocol][role] = int(len(arrays["user_ids"]))
        log(f"{cfg.name}/{protocol}: model-ready {summary[protocol]}")
    return summary


def materialize_exports(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print) -> dict[str, object]:
    from pipelines.sequences import exports

    steps = pl.read_parquet(steps_path(paths))
    out = paths.stage_dir("exports")
    result: dict[str, object] = {}
    eidp_roles = split_dir(paths, "eidp") / "roles.parquet"
    if eidp_roles.is_file():
        result["blade_split_files"] = exports.blade_split_files(steps, pl.read_parquet(eidp_roles), cfg, out / "blade")
    result["recbole_inter"] = str(exports.recbole_inter(steps, cfg, out / "recbole"))
    result["gamer_json"] = str(exports.gamer_json(steps, cfg, out / "gamer"))
    log(f"{cfg.name}: exports written to {out}")
    return result


def materialize_audit(cfg: DatasetConfig, paths: DatasetPaths, protocols: tuple[str, ...] = sp.PROTOCOLS,
                      log: Log = print) -> pl.DataFrame:
    """The leakage audit of every materialized split, before and after its filter."""
    opts = SequenceOptions.of(cfg)
    steps = pl.read_parquet(steps_path(paths))
    parts = []
    for protocol in protocols:
        d = split_dir(paths, protocol)
        if not (d / "examples.parquet").is_file():
            continue
        for label, file in (("off", "examples_unfiltered.parquet"), (opts.leakage_filter, "examples.parquet")):
            ex = pl.read_parquet(d / file)
            parts.append(audit(steps, ex, max_len=opts.max_len).select(
                pl.lit(protocol).alias("protocol"), pl.lit(label).alias("filter"), "k",
                pl.lit(ex.height, pl.Int64).alias("examples"), pl.exclude("k")))
    if not parts:
        raise EmptyPartitionError(f"dataset '{cfg.name}': no split has been materialized to audit")
    table = pl.concat(parts)
    out = paths.stage_dir("leakage")
    write_parquet_atomic(table, out / "audit.parquet")
    write_text_atomic(audit_report(cfg, table), out / "leakage_audit.md")
    return table


def audit_report(cfg: DatasetConfig, table: pl.DataFrame) -> str:
    lines = [f"# Leakage audit: {cfg.name}", "",
             "Share of evaluation targets whose item is among the last k history steps, and HR/NDCG@k of two "
             "recommenders that only exploit the history (most recent distinct items; most frequent items), "
             "before (`off`) and after the configured leakage filter. High scores before filtering measure the "
             "same-item leak, not a model.", ""]
    for (protocol,), g in table.group_by("protocol", maintain_order=True):
        lines += [f"## {protocol}", "", markdown_table(g.drop("protocol").with_columns(pl.col(pl.Float64).round(4)),
                                                       max_rows=50), ""]
    return "\n".join(lines)
