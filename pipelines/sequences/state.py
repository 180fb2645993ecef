"""What the published steps and splits were built from, and which users changed since.

A stage that can refresh only the users whose data changed keeps, beside its tables:
- per user, a digest of the rows it was built from (``steps.user_digests``): the steps stage of
  the events it read (``event_digests.parquet``) and of the steps it wrote (``user_digests.parquet``,
  stamped with the steps table's rows and bytes); each split the steps digests it read, with the
  user sets its report counts (``users.parquet``);
- a state file written last (``steps_state.json``, ``split_state.json``): code version, a hash of
  the registry entry, the files' sizes, the inputs' identity, the last summary.

``plan_steps`` and ``plan_split`` compare them with the current inputs and say what to recompute:
the changed users, nothing (the same inputs), or everything (and why). No Dagster here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipelines.registry import DatasetConfig
from pipelines.sequences import splits as sp
from pipelines.storage import DatasetPaths, ParquetAppender, file_identity
from schemas import columns as c


def config_hash(cfg: DatasetConfig) -> str:
    """A hash of the whole registry entry: any change to it makes a stage recompute in full."""
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


STEPS_CODE_VERSION = 1  # bump when a change alters the steps written for the same events
STEP_INPUT_COLUMNS = [c.USER_ID, c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP, c.EVENT_ORDER]


def plan_steps(cfg: DatasetConfig, paths: DatasetPaths, whole: bool, full: bool) -> tuple[pl.DataFrame | None, str]:
    """The per-user event digests the published steps were built from, or None for a full
    recompute; and why (``UNCHANGED``: the same events file, nothing to do). Reused when the state
    says the steps were built by this code from this registry entry, and the files are the ones
    the state describes."""
    if full:
        return None, "a full recompute was asked for"
    if whole:
        return None, "the k-core needs every user's steps"
    try:
        state = json.loads(paths.steps_state().read_text())
    except (OSError, ValueError):
        return None, "no previous steps state"
    if state.get("code_version") != STEPS_CODE_VERSION or state.get("config") != config_hash(cfg):
        return None, "the registry entry or the steps code changed"
    files = {"steps": paths.steps(), "event_digests": paths.event_digests()}
    if any(not f.is_file() or f.stat().st_size != state.get("tables", {}).get(k) for k, f in files.items()):
        return None, "the published steps files differ from their state"
    if state.get("events") == file_identity(paths.events()) and "summary" in state:
        return pl.DataFrame(), UNCHANGED
    return pl.read_parquet(paths.event_digests()), "users whose events changed"


UNCHANGED = "the input is the one the published tables were built from"


def write_user_digests(digests: pl.DataFrame, paths: DatasetPaths) -> None:
    """The steps' per-user digests, stamped with the steps table's rows and bytes (a reader checks
    them: digests beside a steps table that another writer replaced are never used)."""
    steps = paths.steps()
    with ParquetAppender(paths.user_digests(), {"mbrec.steps_rows": str(pq_rows(steps)),
                                                "mbrec.steps_bytes": str(steps.stat().st_size)}) as out:
        out.write(digests)


def current_user_digests(paths: DatasetPaths) -> pl.DataFrame | None:
    """The per-user digests of the current steps table, or None when there are none for it."""
    path, steps = paths.user_digests(), paths.steps()
    if not path.is_file() or not steps.is_file():
        return None
    meta = pq.read_schema(path).metadata or {}
    if (meta.get(b"mbrec.steps_rows") != str(pq_rows(steps)).encode()
            or meta.get(b"mbrec.steps_bytes") != str(steps.stat().st_size).encode()):
        return None
    return pl.read_parquet(path)


def pq_rows(path: Path) -> int:
    """A parquet file's rows, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


SPLIT_CODE_VERSION = 1  # bump when a change alters what a split writes for the same steps
# a refresh recomputes the changed users only while they are at most this share of all users (a
# split) or of a range's users (steps); past it, recomputing everyone is cheaper than merging
INCREMENTAL_MAX_SHARE = 0.5
SPLIT_TABLES = ("roles", "examples", "examples_unfiltered", "train_examples")


def split_files(paths: DatasetPaths, protocol: str) -> dict[str, Path]:
    return {"roles": paths.roles(protocol), "examples": paths.examples(protocol),
            "examples_unfiltered": paths.examples(protocol, filtered=False),
            "train_examples": paths.train_examples(protocol), "users": paths.split_users(protocol)}


def users_table(digests: pl.DataFrame, flagged: dict[str, np.ndarray]) -> pl.DataFrame:
    """``digests`` (user_id, digest) with the bitmask of the user sets each user is in."""
    unknown = set(flagged) - set(sp.USER_FLAGS)
    if unknown:
        raise ValueError(f"split user sets {sorted(unknown)} are not in USER_FLAGS {sp.USER_FLAGS}")
    user = digests[c.USER_ID].to_numpy()
    flags = np.zeros(len(user), dtype=np.uint8)
    for bit, name in enumerate(sp.USER_FLAGS):
        ids = flagged.get(name)
        if ids is not None and len(ids):
            flags[np.isin(user, ids)] |= np.uint8(1 << bit)
    return digests.with_columns(pl.Series("flags", flags, dtype=pl.UInt8))


def plan_split(cfg: DatasetConfig, paths: DatasetPaths, protocol: str, cuts: tuple[int, int] | None,
                full: bool) -> tuple[np.ndarray | None, str, dict]:
    """The users to recompute (sorted dense ids), or None for a full recompute; why; the state.

    The published split is reused for every user whose steps digest equals the one it was built
    from, when its state says it was built by this code, from this registry entry, and its files are
    the ones the state describes. A temporal split's cuts move with new data: a user with a step
    between an old and a new cut changes role too, so is recomputed as well."""
    if full:
        return None, "a full recompute was asked for", {}
    if sp.PROTOCOL_TABLE[protocol].split_files_only:
        return None, "a published release's split is recomputed in full", {}
    try:
        state = json.loads(paths.split_state(protocol).read_text())
    except (OSError, ValueError):
        return None, "no previous split state", {}
    if state.get("code_version") != SPLIT_CODE_VERSION or state.get("config") != config_hash(cfg):
        return None, "the registry entry or the split code changed", {}
    files = split_files(paths, protocol)
    if any(not f.is_file() or f.stat().st_size != state.get("tables", {}).get(k) for k, f in files.items()):
        return None, "the published split files differ from its state", {}
    now = current_user_digests(paths)
    if now is None:
        return None, "the steps table has no digests of its own", {}
    before = pl.read_parquet(files["users"]).select(c.USER_ID, pl.col("digest").alias("before"))
    both = now.join(before, on=c.USER_ID, how="full", coalesce=True)
    changed = both.filter(pl.col("digest").is_null() | pl.col("before").is_null()
                          | (pl.col("digest") != pl.col("before")))[c.USER_ID]
    why = f"{changed.len():,} of {now.height:,} users' steps changed"
    old_cuts = tuple(state["cuts"]) if state.get("cuts") is not None else None
    if cuts is not None and old_cuts != cuts:
        ts = pl.col(c.TIMESTAMP)
        between = pl.lit(False)
        for a, b in zip(old_cuts or cuts, cuts, strict=True):
            between = between | ((ts >= min(a, b)) & (ts < max(a, b)))
        moved = pl.scan_parquet(paths.steps()).filter(between).select(c.USER_ID).unique().collect()[c.USER_ID]
        changed = pl.concat([changed, moved])
        why += f"; the cuts moved from {list(old_cuts or ())} to {list(cuts)}: {moved.len():,} users have steps between"
    users = np.unique(changed.to_numpy()).astype(np.uint32)
    if cuts is not None and old_cuts != cuts and len(users) == 0:  # the note would keep the old cuts
        return None, f"{why}; no user to recompute says the new cuts", state
    if len(users) > INCREMENTAL_MAX_SHARE * max(now.height, 1):
        return None, f"{why}: {len(users):,} users, over {INCREMENTAL_MAX_SHARE:.0%}", state
    return users, why, state
