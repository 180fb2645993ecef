"""File-level orchestration of the sequence stage (what the Dagster assets call; no Dagster here).

Writes, through ``pipelines.layout``: the behavior-set steps with sessions; per protocol the roles
(one per step), the valid/test examples after the leakage filter and before it, the training
examples; the leakage audit; the model-ready arrays; the exports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.parallel import ordered_map
from pipelines.registry import DatasetConfig
from pipelines.reporting import Log, audit_plot, markdown_table
from pipelines.sequences import splits as sp
from pipelines.sequences import state
from pipelines.sequences.leakage import EXAMPLES_PER_BLOCK, apply_filter, audit, find_leaks
from pipelines.sequences.options import SequenceOptions
from pipelines.sequences.steps import EmptyPartitionError, behavior_steps, clean, user_digests, with_sessions
from pipelines.storage import (
    DatasetPaths,
    file_identity,
    NpzAppender,
    ParquetAppender,
    read_user_range,
    user_shards,
    write_bytes_atomic,
    write_npz_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from schemas import columns as c

ROWS_PER_SHARD = 5_000_000  # rows of a stage's input processed together; bounds memory
# model-ready examples built together: a block's history windows hold up to max_len rows per example
MODEL_READY_EXAMPLES_PER_BLOCK = 25_000
NO_LEAKS = pl.DataFrame(schema={"example": pl.UInt32, "step": pl.UInt32, "h_behaviors": pl.UInt16})


def steps_path(paths: DatasetPaths) -> Path:
    return paths.steps()


def split_dir(paths: DatasetPaths, protocol: str) -> Path:
    return paths.split_dir(protocol)


@dataclass
class StepsSummary:
    """What the steps stage did: rows through each cleaning step, steps, users, the merge rule."""

    events_in: int
    after_time_window: int
    after_exposures: int
    k_core_rounds: list[dict[str, int]]
    events_kept: int
    steps: int
    users: int
    items: int
    merged_events: int
    mean_steps_per_user: float
    mean_sessions_per_user: float
    shards: int
    merge_rule: str
    time_note: str
    behavior_sets: list[dict[str, object]] = field(default_factory=list)  # the most common sets
    mode: str = "full"  # "incremental": only users whose events changed were recomputed; "unchanged"
    mode_reason: str = ""
    users_recomputed: int = 0


@dataclass
class SplitSummary:
    """One protocol's split: roles per step, examples, the leakage filter's work (``applicable``
    False with the reason in ``note`` when the protocol does not apply to the dataset)."""

    applicable: bool
    note: str = ""
    users_excluded: int = 0
    user_counts: dict[str, int] = field(default_factory=dict)  # e.g. users_without_valid (released)
    roles: dict[str, int] = field(default_factory=dict)
    examples: int = 0
    leakage_filter: str = ""
    max_len: int = 0
    leak_steps_removed: int = 0
    examples_with_leak_removed: int = 0
    filter_training_targets: bool = False
    training_leak_steps_removed: int = 0
    mode: str = "full"  # "incremental": only users whose steps changed were recomputed; "unchanged"
    mode_reason: str = ""
    users_recomputed: int = 0


def materialize_steps(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print,
                      rows_per_shard: int = ROWS_PER_SHARD, full: bool = False) -> StepsSummary:
    """Clean events and build steps with sessions, shard by shard of consecutive users.

    The iterative k-core needs global counts each round, so with k-core on the table is processed
    whole (one shard). Otherwise, when the published steps' state matches (``state.plan_steps``), only
    the users whose events changed (by their digest) are recomputed, and every other user's steps
    are copied from the published table: the same bytes as a full recompute (tested). ``full``
    forces a full recompute.
    """
    import json

    opts = SequenceOptions.of(cfg)
    events_path = paths.events()
    whole = bool(opts.min_user_steps or opts.min_item_steps)
    shards = [(0, 1 << 32)] if whole else user_shards(events_path, rows_per_shard)
    before, reason = state.plan_steps(cfg, paths, whole, full)
    if reason == state.UNCHANGED:  # nothing to do: the published steps stand
        summary = json.loads(paths.steps_state().read_text())["summary"]
        log(f"{cfg.name}: steps unchanged ({reason})")
        return StepsSummary(**{**summary, "mode": "unchanged", "mode_reason": reason, "users_recomputed": 0})
    events_read = file_identity(events_path)
    totals = {"rows_in": 0, "after_window": 0, "after_exposures": 0, "rows_out": 0}
    rounds: list[dict[str, int]] = []
    sets: dict[int, int] = {}
    users = sessions = recomputed = 0
    whole_ranges: list[tuple[int, int]] = []  # ranges where most users changed
    # the published steps' own per-user digests: an unchanged user's steps are copied, so is their digest
    published_digests = state.current_user_digests(paths) if before is not None else None

    def shard_steps(bounds: tuple[int, int]) -> tuple[pl.DataFrame | None, pl.DataFrame, pl.DataFrame | None,
                                                      Any, int]:
        events = read_user_range(events_path, bounds[0], bounds[1], state.STEP_INPUT_COLUMNS)
        cleaned, report = clean(events, cfg, opts)
        digests = user_digests(events, state.STEP_INPUT_COLUMNS)
        if before is None:
            changed = None
        else:  # users whose events differ from those the published steps were built from
            old = before.filter(pl.col(c.USER_ID).is_between(bounds[0], bounds[1], closed="left"))
            both = digests.join(old.rename({"digest": "before"}), on=c.USER_ID, how="full", coalesce=True)
            changed = both.filter(pl.col("digest").is_null() | pl.col("before").is_null()
                                  | (pl.col("digest") != pl.col("before")))[c.USER_ID].implode()
            if changed.list.len().item() > state.INCREMENTAL_MAX_SHARE * max(digests.height, 1):
                changed = None  # most of the range changed (renumbered users): recomputed whole, no merge
                whole_ranges.append(bounds)
            else:
                cleaned = cleaned.filter(pl.col(c.USER_ID).is_in(changed))
        steps = with_sessions(behavior_steps(cleaned, cfg, opts), opts.session_gap_minutes) \
            if not cleaned.is_empty() else None
        n = digests.height if changed is None else changed.list.len().item()
        step_digests = None  # computed from the range's steps below
        if changed is not None:  # the unchanged users' published steps, with the new ones in user order
            kept = read_user_range(steps_path(paths), bounds[0], bounds[1], where=~pl.col(c.USER_ID).is_in(changed))
            if published_digests is not None:
                step_digests = pl.concat([
                    published_digests.filter(pl.col(c.USER_ID).is_between(bounds[0], bounds[1], closed="left")
                                             & ~pl.col(c.USER_ID).is_in(changed)),
                    user_digests(steps) if steps is not None else published_digests.clear()],
                ).sort(c.USER_ID, maintain_order=True)
            steps = kept if steps is None else pl.concat([kept, steps]).sort(c.USER_ID, maintain_order=True)
            steps = steps if steps.height else None
        return steps, digests, step_digests, report, n

    step_digests, event_digests = [], []
    for stale in (paths.steps_state(), paths.user_digests()):  # never beside steps they do not describe
        stale.unlink(missing_ok=True)
    with ParquetAppender(steps_path(paths), {"mbrec.order": "user_id, step"}) as out:
        for i, (steps, digests, range_digests, report, n) in enumerate(ordered_map(shard_steps, shards)):
            for k in totals:
                totals[k] += getattr(report, k)
            rounds = report.k_core_rounds or rounds
            event_digests.append(digests)
            recomputed += n
            if steps is None:
                continue
            out.write(steps)
            step_digests.append(user_digests(steps) if range_digests is None else range_digests)
            u, sess = steps[c.USER_ID].to_numpy(), steps["session"].to_numpy()
            new_user = np.r_[True, u[1:] != u[:-1]]
            users += int(new_user.sum())
            sessions += int((new_user | np.r_[True, sess[1:] != sess[:-1]]).sum())
            for m, count in steps.group_by(c.BEHAVIORS).len().iter_rows():
                sets[int(m)] = sets.get(int(m), 0) + int(count)
            if len(shards) > 1:
                log(f"{cfg.name}: steps shard {i + 1}/{len(shards)} ({steps.height:,} steps)")
        n_steps = out.rows
    if n_steps == 0:
        steps_path(paths).unlink(missing_ok=True)
        raise EmptyPartitionError(
            f"dataset '{cfg.name}': cleaning left no events ({totals['rows_in']:,} in, {totals['after_window']:,} after "
            f"the time window, {totals['after_exposures']:,} after dropping exposures, k-core rounds {rounds}). "
            f"Loosen datasets.{cfg.name}.stages.sequences.")
    state.write_user_digests(pl.concat(step_digests), paths)
    with ParquetAppender(paths.event_digests()) as out:
        out.write(pl.concat(event_digests))
    mode = "full" if before is None else "incremental"
    if whole_ranges:
        reason += (f"; {len(whole_ranges)} of {len(shards)} user ranges recomputed whole (over "
                   f"{state.INCREMENTAL_MAX_SHARE:.0%} of their users changed)")
    log(f"{cfg.name}: {n_steps:,} steps ({mode}: {reason}; {recomputed:,} users computed)")
    items = pl.scan_parquet(steps_path(paths)).select(pl.col(c.ITEM_ID).n_unique()).collect().item()
    top = sorted(sets.items(), key=lambda kv: (-kv[1], kv[0]))[:15]  # ties by mask: the same order every run
    summary = StepsSummary(
        events_in=totals["rows_in"], after_time_window=totals["after_window"],
        after_exposures=totals["after_exposures"], k_core_rounds=rounds,
        events_kept=totals["rows_out"], steps=n_steps, users=users, items=items,
        merged_events=int(totals["rows_out"] - n_steps), mean_steps_per_user=n_steps / max(users, 1),
        mean_sessions_per_user=sessions / max(users, 1), shards=len(shards),
        merge_rule=opts.merge_rule if cfg.time.unit != "none" or opts.merge_rule in ("consecutive", "none") else
        f"{opts.merge_rule} (no time column: only consecutive merging applies)",
        time_note="no time column: file order is the sequence order; one session per user"
        if cfg.time.unit == "none" else f"time granularity {cfg.time.granularity}; ties keep file order",
        behavior_sets=[{"set": _set_name(cfg, m), "steps": n} for m, n in top],
        mode=mode, mode_reason=reason, users_recomputed=recomputed,
    )
    if not whole:  # the state last: a run that stops before this point leaves none
        write_text_atomic(json.dumps({
            "code_version": state.STEPS_CODE_VERSION, "config": state.config_hash(cfg), "events": events_read,
            "summary": dataclasses.asdict(summary),
            "tables": {"steps": steps_path(paths).stat().st_size,
                       "event_digests": paths.event_digests().stat().st_size}}, indent=1, sort_keys=True) + "\n",
            paths.steps_state())
    return summary


def _set_name(cfg: DatasetConfig, mask: int) -> str:
    return "{" + ",".join(b for i, b in enumerate(cfg.behavior_names) if mask >> i & 1) + "}"


@dataclass
class SplitParts:
    """One user range's split: the four tables, the user sets, the training-leak count."""

    split: sp.Split
    leaks: pl.DataFrame
    tables: dict[str, pl.DataFrame]  # state.SPLIT_TABLES -> frame
    train_leak_steps: int


def materialize_split(cfg: DatasetConfig, paths: DatasetPaths, protocol: str, log: Log = print,
                      rows_per_shard: int = ROWS_PER_SHARD, require_examples: bool = True,
                      examples_per_block: int = EXAMPLES_PER_BLOCK, full: bool = False) -> SplitSummary:
    """Write one protocol's roles and examples (filtered and unfiltered), shard by shard of users.

    When the published split's state matches (``state.plan_split``), only the users whose steps changed
    are recomputed and the other users' rows are copied from the published tables: the same bytes
    as a full recompute (tested). ``full`` forces a full recompute.

    ``require_examples`` False: a split without evaluation examples is written, not an error (one
    user-hash shard of a dataset may hold no evaluable user; the dataset as a whole is checked)."""
    import json

    from pipelines.sequences.model_ready import training_examples

    opts = SequenceOptions.of(cfg)
    spec = sp.PROTOCOL_TABLE[protocol]
    why = spec.not_applicable(cfg)
    if why:
        return SplitSummary(applicable=False, note=why)
    path = steps_path(paths)
    cuts: tuple[int, int] | None = None
    if spec.needs_cuts:  # a global statistic, computed once over all shards
        cuts = sp.quantile_cuts(pl.scan_parquet(path).select(c.TIMESTAMP).collect(),
                                opts.temporal_valid_quantile, opts.temporal_test_quantile)
    inputs = sp.SplitInputs(cfg, opts.target_behaviors, cuts)

    def split_of(steps: pl.DataFrame) -> SplitParts:
        split = spec.run(steps, inputs)
        leaks = find_leaks(steps, split.examples, cfg, opts.leakage_filter, opts.max_len, examples_per_block)
        train = training_examples(steps, split.roles)
        n_train_leaks = 0
        if opts.filter_training_targets:
            train_leaks = find_leaks(steps, train, cfg, opts.leakage_filter, opts.max_len, examples_per_block)
            train = apply_filter(train.drop("dropped_steps"), train_leaks, opts.leakage_filter)
            n_train_leaks = train_leaks.height
        return SplitParts(split, leaks, {
            "roles": split.roles, "examples": apply_filter(split.examples, leaks, opts.leakage_filter),
            "examples_unfiltered": apply_filter(split.examples, NO_LEAKS, "off"), "train_examples": train},
            n_train_leaks)

    changed, reason, published = state.plan_split(cfg, paths, protocol, cuts, full)
    if changed is not None and len(changed) == 0 and "summary" in published:  # the published split stands
        log(f"{cfg.name}/{protocol}: unchanged ({reason})")
        return SplitSummary(**{**published["summary"], "mode": "unchanged", "mode_reason": f"{reason}: nothing to do",
                               "users_recomputed": 0})
    files = state.split_files(paths, protocol)
    paths.split_state(protocol).unlink(missing_ok=True)  # a run that stops midway leaves no state
    bounds = user_shards(path, rows_per_shard)
    if changed is None:
        summary = _split_full(paths, path, bounds, files, split_of)
    else:
        summary = _split_changed_users(paths, path, bounds, files, split_of, changed, published)
    summary.mode, summary.mode_reason = ("full" if changed is None else "incremental"), reason
    summary.leakage_filter, summary.max_len = opts.leakage_filter, opts.max_len
    summary.filter_training_targets = opts.filter_training_targets
    if summary.examples == 0 and require_examples:
        raise EmptyPartitionError(
            f"dataset '{cfg.name}', split {protocol}: no user has enough target steps "
            f"({summary.users_excluded:,} users excluded); targets are {opts.target_behaviors or cfg.targets}")
    write_text_atomic(json.dumps({
        "code_version": state.SPLIT_CODE_VERSION, "config": state.config_hash(cfg), "cuts": list(cuts) if cuts else None,
        "note": summary.note, "count_names": sorted(summary.user_counts), "summary": dataclasses.asdict(summary),
        "tables": {k: f.stat().st_size for k, f in files.items()}}, indent=1, sort_keys=True) + "\n",
        paths.split_state(protocol))
    log(f"{cfg.name}/{protocol}: {summary.examples:,} evaluation examples; filter '{opts.leakage_filter}' "
        f"removed {summary.leak_steps_removed:,} history steps from {summary.examples_with_leak_removed:,} examples "
        f"({summary.mode}: {reason})")
    return summary


def _split_full(paths: DatasetPaths, path: Path, bounds: list[tuple[int, int]], files: dict[str, Path],
                split_of: Callable[[pl.DataFrame], SplitParts]) -> SplitSummary:
    digests = state.current_user_digests(paths)  # None: computed from each range's steps below
    s = SplitSummary(applicable=True)

    def shard(b: tuple[int, int]) -> tuple[SplitParts, pl.DataFrame]:
        steps = read_user_range(path, b[0], b[1])
        d = user_digests(steps) if digests is None else \
            digests.filter(pl.col(c.USER_ID).is_between(b[0], b[1], closed="left"))
        parts = split_of(steps)
        return parts, state.users_table(d, parts.split.flagged)

    with ExitStack() as stack:
        out = {k: stack.enter_context(ParquetAppender(files[k])) for k in (*state.SPLIT_TABLES, "users")}
        for parts, users in ordered_map(shard, bounds):
            split = parts.split
            for k, v in split.counts.items():
                s.user_counts[k] = s.user_counts.get(k, 0) + v
            for k in state.SPLIT_TABLES:
                out[k].write(parts.tables[k])
            out["users"].write(users)
            for role, n in split.roles.group_by("role").len().iter_rows():
                s.roles[role] = s.roles.get(role, 0) + int(n)
            s.users_excluded += split.users_excluded
            s.leak_steps_removed += parts.leaks.height
            s.examples_with_leak_removed += parts.leaks["example"].n_unique()
            s.examples += split.examples.height
            s.training_leak_steps_removed += parts.train_leak_steps
            s.note = split.note
    s.roles = dict(sorted(s.roles.items()))
    s.users_recomputed = pl.scan_parquet(files["users"]).select(pl.len()).collect().item()
    return s


def _split_changed_users(paths: DatasetPaths, path: Path, bounds: list[tuple[int, int]], files: dict[str, Path],
                         split_of: Callable[[pl.DataFrame], SplitParts], changed: np.ndarray,
                         published: dict) -> SplitSummary:
    """Recompute the ``changed`` users only; every other user's rows are copied from the published
    tables. Range by range (the full recompute's ranges, so the row groups and bytes are the same),
    each table is the published rows of unchanged users and the new rows of changed ones, merged
    by user (a user's rows all come from one side, in their order)."""
    ids = pl.Series(c.USER_ID, changed, dtype=pl.UInt32).implode()
    digests = state.current_user_digests(paths)
    if digests is None:  # state.plan_split found them; only another writer in between removes them
        raise RuntimeError(f"{paths.user_digests()} disappeared while the split was being refreshed")
    s = SplitSummary(applicable=True, users_recomputed=len(changed), note=published.get("note", ""))

    def in_range(b: tuple[int, int]) -> pl.Expr:
        return pl.col(c.USER_ID).is_between(b[0], b[1], closed="left")

    def shard(b: tuple[int, int]) -> tuple[dict[str, pl.DataFrame], str | None]:
        # the range's changed users' steps (a range at a time: memory holds one range, as a full run)
        steps = read_user_range(path, b[0], b[1], where=pl.col(c.USER_ID).is_in(ids))
        keep = in_range(b) & ~pl.col(c.USER_ID).is_in(ids)
        new: dict[str, pl.DataFrame] = {}
        note = None
        if steps.height:
            parts = split_of(steps)
            note = parts.split.note
            new = dict(parts.tables)
            new["users"] = state.users_table(digests.filter(pl.col(c.USER_ID).is_in(ids) & in_range(b)),
                                       parts.split.flagged)
        merged = {}
        for k in (*state.SPLIT_TABLES, "users"):
            old = pl.scan_parquet(files[k]).filter(keep).collect()
            merged[k] = old if k not in new else \
                pl.concat([old, new[k]], how="vertical").sort(c.USER_ID, maintain_order=True)
        return merged, note

    with ExitStack() as stack:
        # the published files stay readable until each appender replaces its file on leaving
        out = {k: stack.enter_context(ParquetAppender(files[k])) for k in (*state.SPLIT_TABLES, "users")}
        for merged, note in ordered_map(shard, bounds):
            s.note = note if note is not None else s.note  # the protocol's note (temporal: the new cuts)
            for k, frame in merged.items():
                out[k].write(frame)
            for role, n in merged["roles"].group_by("role").len().iter_rows():
                s.roles[role] = s.roles.get(role, 0) + int(n)
            dropped = merged["examples"]["dropped_steps"].list.len()
            s.examples += merged["examples"].height
            s.leak_steps_removed += int(dropped.sum())
            s.examples_with_leak_removed += int((dropped > 0).sum())
            s.training_leak_steps_removed += int(merged["train_examples"]["dropped_steps"].list.len().sum())
    s.roles = dict(sorted(s.roles.items()))
    # the report's user counts: the user sets over every user, those the protocol reported before
    flags = pl.read_parquet(files["users"])["flags"].to_numpy()
    for bit, name in enumerate(sp.USER_FLAGS):
        n = int(((flags >> bit) & 1).sum())
        if name == "excluded":
            s.users_excluded = n
        elif name in published.get("count_names", []):
            s.user_counts[name] = n
    return s


def materialize_model_ready(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print,
                            rows_per_shard: int = ROWS_PER_SHARD,
                            protocols: tuple[str, ...] = sp.PROTOCOLS,
                            examples_per_block: int = MODEL_READY_EXAMPLES_PER_BLOCK,
                            tables: bool = True) -> dict[str, dict[str, int]]:
    """train/valid/test arrays per materialized split: parquet (Array columns) and .npz.

    One user range (about ``rows_per_shard`` steps) at a time; its examples are built
    ``examples_per_block`` at a time, blocks side by side (``ordered_map``), and each block is
    written as soon as it is built, so memory holds the range's steps and a few blocks, not the
    range's arrays (the session protocol has about one valid/test example per 5 steps: holding a
    5M-step range's arrays took 3.9 GB at 20M Taobao rows). ``tables=False`` writes the .npz only
    (a shard run: the merge writes the dataset's tables from the shards' arrays). The arrays' bytes
    do not depend on the ranges or the blocks; each table is written from its role's arrays once
    they are (``model_ready.write_table``), in row groups of a fixed number of rows."""
    import json

    from pipelines.sequences import model_ready

    opts = SequenceOptions.of(cfg)
    path = steps_path(paths)
    ranges = user_shards(path, rows_per_shard)
    summary: dict[str, dict[str, int]] = {}
    for protocol in protocols:
        if not paths.examples(protocol).is_file():
            continue
        # the same steps and examples (and options) give the same arrays: a refresh in which this
        # split did not change keeps them (38 s for the four protocols at 20M Taobao rows)
        inputs = {"config": state.config_hash(cfg), "tables": tables, "examples_per_block": examples_per_block,
                  **{k: file_identity(f) for k, f in (("steps", path), ("examples", paths.examples(protocol)),
                                                      ("train_examples", paths.train_examples(protocol)))}}
        record = paths.model_ready_inputs(protocol)
        outputs = [paths.model_ready(protocol, role, kind) for role in ("train", "valid", "test")
                   for kind in (("npz", "parquet") if tables else ("npz",))]
        try:
            published = json.loads(record.read_text())
        except (OSError, ValueError):
            published = {}
        if published.get("inputs") == inputs and all(f.is_file() for f in outputs):
            summary[protocol] = {role: published["summary"][role] for role in ("train", "valid", "test")}
            log(f"{cfg.name}/{protocol}: model-ready unchanged (the same steps and examples)")
            continue
        record.unlink(missing_ok=True)  # a run that stops midway leaves none
        # the arrays stream to their .npz files block by block (at 100M Taobao events the session
        # protocol's arrays alone are about 15 GB)
        # each role's rows, known up front, let the arrays be written straight into place
        rows = _model_ready_rows(paths, protocol, ranges)
        with (NpzAppender(paths.model_ready(protocol, "train"), rows["train"]) as a_train,
              NpzAppender(paths.model_ready(protocol, "valid"), rows["valid"]) as a_valid,
              NpzAppender(paths.model_ready(protocol, "test"), rows["test"]) as a_test):
            arrays = {"train": a_train, "valid": a_valid, "test": a_test}
            for lo, hi in ranges:
                steps = read_user_range(path, lo, hi)
                examples = read_user_range(paths.examples(protocol), lo, hi)
                parts = (("train", read_user_range(paths.train_examples(protocol), lo, hi)),
                         ("valid", examples.filter(pl.col("role") == "valid")),
                         ("test", examples.filter(pl.col("role") == "test")))
                del examples
                blocks = [(role, ex.slice(start, examples_per_block)) for role, ex in parts
                          for start in range(0, max(ex.height, 1), examples_per_block)]

                def build(block: tuple[str, pl.DataFrame], steps: pl.DataFrame = steps) -> tuple[str, dict]:
                    role, ex = block
                    return role, model_ready.build(steps, ex, opts.max_len)

                for role, a in ordered_map(build, blocks):
                    arrays[role].append(a)
                del steps, parts, blocks
        if tables:  # the tables from the arrays just written
            for role in ("train", "valid", "test"):
                model_ready.write_table(paths.model_ready(protocol, role), paths.model_ready(protocol, role, "parquet"),
                                        role)
        summary[protocol] = {role: a.rows.get("user_ids", 0) for role, a in arrays.items()}
        write_text_atomic(json.dumps({"inputs": inputs, "summary": summary[protocol]}, indent=1, sort_keys=True)
                          + "\n", record)
        log(f"{cfg.name}/{protocol}: model-ready {summary[protocol]}")
    return summary


def _model_ready_rows(paths: DatasetPaths, protocol: str, ranges: list[tuple[int, int]]) -> dict[str, int]:
    """The examples each role's arrays get: one row per example of a user in ``ranges``."""
    if not ranges:
        return dict.fromkeys(("train", "valid", "test"), 0)
    in_ranges = pl.col(c.USER_ID).is_between(ranges[0][0], ranges[-1][1], closed="left")
    rows = dict(pl.scan_parquet(paths.examples(protocol)).filter(in_ranges).group_by("role").len()
                .collect().iter_rows())
    train = pl.scan_parquet(paths.train_examples(protocol)).filter(in_ranges).select(pl.len()).collect().item()
    return {"train": int(train), "valid": int(rows.get("valid", 0)), "test": int(rows.get("test", 0))}


def materialize_exports(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print) -> dict[str, object]:
    from pipelines.sequences import exports

    steps = pl.read_parquet(steps_path(paths))
    result: dict[str, object] = {}
    # a release exports its own roles (export -> re-import gives the same split); raw logs the eidp rule's
    for protocol in ("released", "eidp"):
        roles = paths.roles(protocol)
        if roles.is_file() and not sp.PROTOCOL_TABLE[protocol].not_applicable(cfg):
            result["blade_split_files"] = exports.blade_split_files(steps, pl.read_parquet(roles), cfg,
                                                                    paths.blade_exports_dir())
            result["blade_split_protocol"] = protocol
            break
    result["recbole_inter"] = str(exports.recbole_inter(steps, cfg, paths.recbole_inter()))
    opts = SequenceOptions.of(cfg)
    protocol = opts.recbole_protocol or sp.default_protocol(cfg)
    if opts.recbole_benchmark and paths.examples(protocol).is_file():
        result["recbole_benchmark"] = exports.recbole_benchmark(
            steps, pl.read_parquet(paths.roles(protocol)), pl.read_parquet(paths.examples(protocol)),
            cfg, opts.max_len, paths.recbole_benchmark)
        result["recbole_benchmark_protocol"] = protocol
    result["gamer_json"] = str(exports.gamer_json(steps, cfg, paths.gamer_json()))
    log(f"{cfg.name}: exports written to {paths.exports_dir()}")
    return result


def materialize_audit(cfg: DatasetConfig, paths: DatasetPaths, protocols: tuple[str, ...] = sp.PROTOCOLS,
                      log: Log = print) -> pl.DataFrame:
    """The leakage audit of every materialized split, before and after its filter."""
    opts = SequenceOptions.of(cfg)
    steps = pl.read_parquet(steps_path(paths))
    parts = []
    for protocol in protocols:
        if not paths.examples(protocol).is_file():
            continue
        for label, file in (("off", paths.examples(protocol, filtered=False)),
                            (opts.leakage_filter, paths.examples(protocol))):
            ex = pl.read_parquet(file)
            parts.append(audit(steps, ex, max_len=opts.max_len).select(
                pl.lit(protocol).alias("protocol"), pl.lit(label).alias("filter"), "k",
                pl.lit(ex.height, pl.Int64).alias("examples"), pl.exclude("k")))
    if not parts:
        raise EmptyPartitionError(f"dataset '{cfg.name}': no split has been materialized to audit")
    table = pl.concat(parts)
    write_parquet_atomic(table, paths.leakage_audit())
    write_bytes_atomic(audit_plot(table, f"Same-item leak: {cfg.name}"), paths.leakage_plot())
    write_text_atomic(audit_report(cfg, table, paths.leakage_plot().name), paths.leakage_report())
    return table


def audit_report(cfg: DatasetConfig, table: pl.DataFrame, plot_name: str) -> str:
    lines = [f"# Leakage audit: {cfg.name}", "",
             "Share of evaluation targets whose item is among the last k history steps, and HR/NDCG@k of two "
             "recommenders that only exploit the history (most recent distinct items; most frequent items), "
             "before (`off`) and after the configured leakage filter. High scores before filtering measure the "
             "same-item leak, not a model.", "", f"![leakage audit]({plot_name})", ""]
    for (protocol,), g in table.group_by("protocol", maintain_order=True):
        lines += [f"## {protocol}", "", markdown_table(g.drop("protocol").with_columns(pl.col(pl.Float64).round(4)),
                                                       max_rows=50), ""]
    return "\n".join(lines)
