"""User-hash shards: one dataset's per-user stages as N independent shard runs, merged back.

A dataset with ``shards: N`` (N > 1) in the registry can run as many small runs instead of one big
one (the ``shards`` asset group; Dagster partitions dataset x shard, any Dagster executor):

1. ``map_to_shards`` (one run per dataset): the only pass over the raw bytes. Lines are parsed and
   checked exactly as ingest does (same quarantine, same threshold), and every good row goes to the
   bucket of its shard, ``shard_of(raw user id)``: FNV-1a 64-bit over the id's UTF-8 bytes, mod N.
   A user's rows all land in one bucket, in file order.
2. ``shard_raw_ids`` (one run per shard): the shard's distinct raw users and items with the first
   file each occurs in (and each item's smallest side attribute seen on events).
3. ``merge_dense_ids`` (one run per dataset): dense ids from the merged distinct ids, by the same
   rule as ingest, (first file, raw id), so they do not depend on N; item side info.
4. ``shard_sequences`` (one run per shard): the shard's canonical events (ids joined, exact
   duplicates dropped, ordered by user), behavior-set steps and sessions, every split whose rule is
   per user (leave-one-out, EIDP, session) with the leakage filter, model-ready arrays, and the
   additive behavior counts over training steps. It runs the same stage functions as the
   single-machine pipeline on the shard's own folder: a shard never reads another shard's rows.
5. ``merge_shards`` (one run per dataset): checks that every shard finished on the current map,
   writes the dataset-level tables in user order (the folders every later stage reads), runs the
   splits that need a global statistic (the temporal split's time cuts) on the merged steps, and
   adds up the counts into the behavior statistics.

Every dataset-level output is written by the merge whatever N is, so N = 1 and N = 4 give the
same bytes (tested), and the same contents as the single-machine pipeline.

Not sharded, and said so at registry load: split releases (their roles come from their files) and
the iterative k-core (it needs global counts every round).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from pipelines.augmentation.statistics import BehaviorCounts
from pipelines.ingest import core
from pipelines.ingest.errors import IngestError
from pipelines.ingest.incremental import append_only
from pipelines.layout import INGEST_FILES, DatasetLayout
from pipelines.locks import dataset_lock
from pipelines.registry import DatasetConfig
from pipelines.reporting import Log
from pipelines.sequences import splits as sp
from pipelines.parallel import ordered_map
from pipelines.sequences.steps import EmptyPartitionError
from pipelines.storage import (ArrayBlocks, NpzMember, ParquetAppender, VersionedOutputs, npz_members,
                               write_frame, write_npz_atomic, write_text_atomic)
from schemas import columns as c
from schemas.columns import EVENT_COLUMNS

SHARD_HASH = "FNV-1a 64-bit over the raw user id's UTF-8 bytes, mod shards"
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
ROWS_PER_BLOCK = 5_000_000  # rows the merge holds in memory at once (user-id blocks, independent of N)


class ShardError(RuntimeError):
    """A sharded run cannot go on (a shard missing or built from an older map)."""


# ------------------------------------------------------------------------------------------ hash
def fnv1a64(values: pl.Series) -> np.ndarray:
    """FNV-1a 64-bit of each string's UTF-8 bytes (vectorized: one numpy pass per byte position)."""
    arr = values.cast(pl.String).to_arrow()
    arr = (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr).cast(pa.large_string())
    n = len(arr)
    out = np.full(n, FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return out
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(1, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    idx = np.arange(n)
    for j in range(int(lengths.max())):
        idx = idx[lengths[idx] > j]
        out[idx] = (out[idx] ^ data[starts[idx] + j].astype(np.uint64)) * FNV_PRIME
    return out


def shard_of(raw_user_ids: pl.Series, n_shards: int) -> pl.Series:
    """The shard of each raw user id: ``fnv1a64(id) mod n_shards`` (UInt32)."""
    return pl.Series(raw_user_ids.name, (fnv1a64(raw_user_ids) % np.uint64(n_shards)).astype(np.uint32))


# ------------------------------------------------------------------------------------------ 1. map
@dataclass
class MapSummary:
    dataset: str
    shards: int
    hash: str
    rows_read: int
    rows_quarantined: int
    rows_per_shard: list[int]
    per_file: dict[str, dict[str, int]]
    quarantine_reasons: dict[str, int]
    extras: list[str]
    files: list[str]
    map_version: str = ""
    seconds: float = 0.0


def map_to_shards(cfg: DatasetConfig, raw_dir: Path, paths: DatasetLayout, n_shards: int | None = None,
                  log: Log = print, examples: int = 5) -> MapSummary:
    """Parse every raw line once; write the good rows into one bucket per shard, the quarantine beside."""
    started = time.perf_counter()
    n = n_shards or cfg.shards
    if why := cfg.not_shardable(n):
        raise ShardError(f"dataset '{cfg.name}': {why}")
    files = core.resolve_files(cfg, raw_dir, log)
    out_dir = paths.shard_map_dir()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with dataset_lock(paths.outputs_dir, f"shard map of {cfg.name}", log=log), VersionedOutputs(out_dir) as staged:
        parsed = core.parse_raw(cfg, files, files, staged, prev_dir=None, prev_report=None, out_dir=out_dir,
                                log=log, examples=examples)
        keep = [c.SOURCE_FILE, c.SOURCE_LINE, c.EVENT_ORDER, c.RAW_USER_ID, c.RAW_ITEM_ID, c.BEHAVIORS, c.TIMESTAMP,
                *parsed.source.extras]
        scratch = staged.path("_buckets")
        log(f"{cfg.name}: writing {n} user-hash buckets ({SHARD_HASH})")
        (parsed.good.select(keep)
         .with_columns(pl.col(c.RAW_USER_ID).map_batches(lambda s: shard_of(s, n), return_dtype=pl.UInt32,
                                                         is_elementwise=True).alias("__shard"))
         .sink_parquet(pl.PartitionBy(scratch, key="__shard", include_key=False, approximate_bytes_per_file=None),
                       engine="streaming"))
        counts = []
        for k in range(n):
            parts = sorted((scratch / f"__shard={k}").glob("*.parquet"), key=lambda p: int(p.stem))
            target = staged.path(paths.shard_bucket(k).name)
            if not parts:
                counts.append(0)
                continue
            if len(parts) == 1:
                parts[0].rename(target)
            else:  # the sink split a large bucket: one file, rows in file order
                pl.scan_parquet(parts).sink_parquet(target)
            counts.append(pl.scan_parquet(target).select(pl.len()).collect().item())
        shutil.rmtree(scratch, ignore_errors=True)
        summary = MapSummary(
            dataset=cfg.name, shards=n, hash=SHARD_HASH, rows_read=parsed.rows_read,
            rows_quarantined=parsed.rows_quarantined, rows_per_shard=counts, per_file=parsed.per_file,
            quarantine_reasons=parsed.reasons, extras=list(parsed.source.extras),
            files=[f.name for f in core.event_files(cfg, files)], map_version=staged.version)
        staged.path(paths.shard_map_report().name).write_text(json.dumps(asdict(summary), indent=1) + "\n")
        staged.publish()
    summary.seconds = round(time.perf_counter() - started, 3)
    log(f"{cfg.name}: {summary.rows_read:,} rows read, {summary.rows_quarantined:,} quarantined; rows per shard "
        f"{counts} ({summary.seconds:.1f} s)")
    return summary


def read_map(paths: DatasetLayout) -> MapSummary:
    report = paths.shard_map_report()
    if not report.is_file():
        raise ShardError(f"dataset '{paths.dataset}': no shard map in {paths.shard_map_dir()}; materialize "
                         f"'event_shards' for this dataset first")
    return MapSummary(**json.loads(report.read_text()))


def _bucket(paths: DatasetLayout, k: int, m: MapSummary) -> pl.LazyFrame | None:
    if not 0 <= k < m.shards:
        raise ShardError(f"dataset '{paths.dataset}' has {m.shards} shards (registry key shards); no shard {k}")
    path = paths.shard_bucket(k)
    return pl.scan_parquet(path) if path.is_file() else None


# ------------------------------------------------------------------------------------------ 2. raw ids
def shard_raw_ids(cfg: DatasetConfig, paths: DatasetLayout, k: int, log: Log = print) -> dict[str, int]:
    """Shard ``k``'s distinct raw users and items, each with the first file it occurs in."""
    m = read_map(paths)
    shard = paths.of_shard(k)
    bucket = _bucket(paths, k, m)
    by_file = append_only(cfg)
    out = {}
    for kind, raw in (("users", c.RAW_USER_ID), ("items", c.RAW_ITEM_ID)):
        if bucket is None:
            frame = pl.DataFrame(schema={raw: pl.String, core.FIRST_FILE: pl.Int64})
        else:
            # items also take their smallest attribute values seen on this shard's events
            first = core._first_seen(bucket, raw, by_file, m.extras if kind == "items" else ())
            frame = first.sort(raw).collect()
        from pipelines.storage import write_parquet_atomic

        write_parquet_atomic(frame, shard.raw_ids(kind))
        out[kind] = frame.height
    write_text_atomic(json.dumps({"map_version": m.map_version, "raw_ids": out}) + "\n",
                      shard.stage_dir("raw_ids") / "done.json")
    log(f"{cfg.name} shard {k}: {out['users']:,} users, {out['items']:,} items")
    return out


# ------------------------------------------------------------------------------------------ 3. dense ids
def merge_dense_ids(cfg: DatasetConfig, raw_dir: Path, paths: DatasetLayout, log: Log = print) -> dict[str, int]:
    """Dense user and item ids from every shard's distinct raw ids, by (first file, raw id)."""
    m = read_map(paths)
    _require_shards(paths, m, lambda s: s.stage_dir("raw_ids") / "done.json", "event_shard_ids")
    users = pl.concat([pl.scan_parquet(paths.of_shard(k).raw_ids("users")) for k in range(m.shards)])
    items = pl.concat([pl.scan_parquet(paths.of_shard(k).raw_ids("items")) for k in range(m.shards)])
    items = items.group_by(c.RAW_ITEM_ID).agg(pl.col(core.FIRST_FILE).min(), *[pl.col(e).min() for e in m.extras])

    def dense(seen: pl.LazyFrame, raw: str, name: str) -> pl.DataFrame:
        return (seen.sort(core.FIRST_FILE, raw).with_row_index(name)
                .select(pl.col(name).cast(pl.UInt32), pl.col(raw)).collect(engine="streaming"))

    user_map = dense(users, c.RAW_USER_ID, c.USER_ID)
    item_map = dense(items, c.RAW_ITEM_ID, c.ITEM_ID)
    if user_map.is_empty():
        raise IngestError(f"dataset '{cfg.name}': no valid rows in {raw_dir} (all {m.rows_read:,} rows quarantined)")
    files = core.resolve_files(cfg, raw_dir, log)
    side = core._side_info(cfg, files, items.select(c.RAW_ITEM_ID, *m.extras) if m.extras else None, item_map)
    with VersionedOutputs(paths.shard_ids_dir()) as staged:
        write_frame(user_map, staged.path(INGEST_FILES["user_id_map"]))
        write_frame(item_map, staged.path(INGEST_FILES["item_id_map"]))
        write_frame(side, staged.path(INGEST_FILES["item_side_info"]))
        staged.path("ids.json").write_text(json.dumps({"map_version": m.map_version, "users": user_map.height,
                                                       "items": item_map.height}) + "\n")
        staged.publish()
    log(f"{cfg.name}: {user_map.height:,} users, {item_map.height:,} items over {m.shards} shards")
    return {"users": user_map.height, "items": item_map.height}


# ------------------------------------------------------------------------------------------ 4. per shard
@dataclass
class ShardSummary:
    shard: int
    map_version: str
    ids_version: str
    rows_in: int
    rows_kept: int
    exposures: int
    steps: int
    users: int
    protocols: dict[str, dict[str, object]] = field(default_factory=dict)
    counts: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def _ids_version(paths: DatasetLayout) -> str:
    ids = paths.shard_ids_dir()
    if not (ids / "ids.json").is_file():
        raise ShardError(f"dataset '{paths.dataset}': no merged dense ids in {ids}; materialize 'dense_ids' first")
    return json.loads((ids / "ids.json").read_text())["map_version"] + "/" + Path(ids.resolve()).name


def shard_sequences(cfg: DatasetConfig, paths: DatasetLayout, k: int, log: Log = print) -> ShardSummary:
    """Shard ``k``: canonical events, steps and sessions, per-user splits, model-ready arrays, counts."""
    from pipelines.augmentation.stage import training_counts
    from pipelines.sequences import stage

    started = time.perf_counter()
    m = read_map(paths)
    ids_version = _ids_version(paths)
    shard = paths.of_shard(k)
    for d in ("ingest", "sequences", "splits", "model_ready", "statistics"):  # a rerun starts clean
        shutil.rmtree(shard.stage_dir(d), ignore_errors=True)
    shard.shard_summary().unlink(missing_ok=True)
    bucket = _bucket(paths, k, m)
    rows_in = 0 if bucket is None else m.rows_per_shard[k]
    ids = paths.shard_ids_dir()
    rows_kept = exposures = 0
    with ParquetAppender(shard.events(), _events_metadata(cfg)) as out:
        if bucket is not None:
            df = (bucket.join(pl.scan_parquet(ids / INGEST_FILES["user_id_map"]), on=c.RAW_USER_ID, how="left",
                              maintain_order="left")
                  .join(pl.scan_parquet(ids / INGEST_FILES["item_id_map"]), on=c.RAW_ITEM_ID, how="left",
                        maintain_order="left")
                  .select(*EVENT_COLUMNS).collect())
            df = core.in_user_order(df, dedup=cfg.ingest.drop_exact_duplicates and cfg.time.unit != "none")
            out.write(df)
            rows_kept, exposures = df.height, int((df[c.BEHAVIORS] == 0).sum())
            del df
    summary = ShardSummary(k, m.map_version, ids_version, rows_in, rows_kept, exposures, 0, 0)
    quiet = lambda _msg: None  # noqa: E731  (the stage functions' per-protocol lines, once per shard)
    if rows_kept:
        try:
            steps = stage.materialize_steps(cfg, shard, log=quiet)
            summary.steps, summary.users = steps.steps, steps.users
        except EmptyPartitionError:  # cleaning left nothing in this shard: an empty shard, not an error
            pass
    if summary.steps:
        for protocol, spec in sp.PROTOCOL_TABLE.items():
            if spec.needs_cuts:
                continue  # a global statistic: the merge runs this split on the merged steps
            split = stage.materialize_split(cfg, shard, protocol, log=quiet, require_examples=False)
            if split.applicable:
                summary.protocols[protocol] = asdict(split)
                summary.counts[protocol] = training_counts(shard, protocol, len(cfg.behaviors)).to_dict()
        stage.materialize_model_ready(cfg, shard, log=quiet, tables=False)  # the merge writes the tables
    summary.seconds = round(time.perf_counter() - started, 3)
    write_text_atomic(json.dumps(asdict(summary), indent=1) + "\n", shard.shard_summary())
    log(f"{cfg.name} shard {k}: {rows_kept:,} events, {summary.steps:,} steps, {summary.users:,} users "
        f"({summary.seconds:.1f} s)")
    return summary


def _events_metadata(cfg: DatasetConfig) -> dict[str, str]:
    return {"mbrec.dataset": cfg.name, "mbrec.time_granularity": cfg.time.granularity,
            "mbrec.behaviors": ",".join(cfg.behavior_names), "mbrec.order": "user_id, event_order"}


def _require_shards(paths: DatasetLayout, m: MapSummary, marker, asset: str) -> list[dict]:
    """Every shard's completion record, built from the current map; else a ShardError naming the shards."""
    missing, stale, records = [], [], []
    for k in range(m.shards):
        f = marker(paths.of_shard(k))
        if not f.is_file():
            missing.append(k)
            continue
        rec = json.loads(f.read_text())
        if rec.get("map_version") != m.map_version:
            stale.append(k)
        records.append(rec)
    if missing or stale:
        raise ShardError(
            f"dataset '{paths.dataset}': {len(missing)} of {m.shards} shard(s) not materialized by '{asset}' "
            f"{missing[:20]}, {len(stale)} built from an older shard map {stale[:20]}; materialize those "
            f"partitions of '{asset}' (every shard must finish before the dataset-level step)")
    return records


# ------------------------------------------------------------------------------------------ 5. merge
@dataclass
class MergeSummary:
    dataset: str
    shards: int
    rows_read: int
    rows_kept: int
    rows_quarantined: int
    duplicates_dropped: int
    users: int
    items: int
    steps: int
    protocols: list[str]
    seconds: float = 0.0


def merge_shards(cfg: DatasetConfig, raw_dir: Path, paths: DatasetLayout, log: Log = print,
                 extra_files: dict[str, str] | None = None, rows_per_block: int = ROWS_PER_BLOCK) -> MergeSummary:
    """Write the dataset-level outputs from every shard's, in user order (the same bytes for any N)."""
    from pipelines.augmentation.stage import materialize_statistics
    from pipelines.sequences import stage, state

    started = time.perf_counter()
    m = read_map(paths)
    records = _require_shards(paths, m, DatasetLayout.shard_summary, "shard_sequences")
    ids_version = _ids_version(paths)
    if stale := [r["shard"] for r in records if r["ids_version"] != ids_version]:
        raise ShardError(f"dataset '{cfg.name}': shard(s) {stale[:20]} were built with older dense ids; "
                         f"materialize those partitions of 'shard_sequences' again")
    shards = [paths.of_shard(k) for k in range(m.shards)]
    ids = paths.shard_ids_dir()
    n_users = pl.scan_parquet(ids / INGEST_FILES["user_id_map"]).select(pl.len()).collect().item()
    rows_kept = sum(r["rows_kept"] for r in records)
    users_per_block = max(1, math.ceil(n_users / max(1, math.ceil(rows_kept / rows_per_block))))

    protocols = sorted({p for r in records for p in r["protocols"]}, key=sp.PROTOCOLS.index)
    with dataset_lock(paths.outputs_dir, f"shard merge of {cfg.name}", log=log):
        paths.steps_state().unlink(missing_ok=True)  # the merged steps are not a single-machine build
        for protocol in protocols:
            shutil.rmtree(paths.split_dir(protocol), ignore_errors=True)
        # ingest: one version with the same files a single-machine ingest publishes
        with VersionedOutputs(paths.ingest_dir()) as staged:
            # every per-user table is merged on its own: two at a time (polars decoding and the zstd
            # writes release the GIL), each writing its own file, so the bytes do not depend on it
            jobs: dict[tuple[str, str], Callable[[], int]] = {
                ("ingest", "events"): lambda: merge_table([s.events() for s in shards],
                                                          staged.path(INGEST_FILES["events"]), users_per_block,
                                                          n_users, _events_metadata(cfg)),
                ("sequences", "steps"): lambda: merge_table([s.steps() for s in shards], paths.steps(),
                                                            users_per_block, n_users, {"mbrec.order": "user_id, step"})}
            for protocol in protocols:
                for role in ("train", "valid", "test"):  # the largest files first
                    jobs[(protocol, role)] = lambda protocol=protocol, role=role: merge_model_ready(
                        [s.model_ready(protocol, role) for s in shards],
                        paths.model_ready(protocol, role, "parquet"), paths.model_ready(protocol, role),
                        role, users_per_block, n_users)
                for name, target, part in (
                        ("users", paths.split_users(protocol), lambda s, p=protocol: s.split_users(p)),
                        ("roles", paths.roles(protocol), lambda s, p=protocol: s.roles(p)),
                        ("examples", paths.examples(protocol), lambda s, p=protocol: s.examples(p)),
                        ("examples_unfiltered", paths.examples(protocol, filtered=False),
                         lambda s, p=protocol: s.examples(p, False)),
                        ("train_examples", paths.train_examples(protocol), lambda s, p=protocol: s.train_examples(p))):
                    jobs[(protocol, name)] = lambda target=target, part=part: merge_table(
                        [part(s) for s in shards], target, users_per_block, n_users)
            rows = dict(zip(jobs, ordered_map(lambda job: job(), list(jobs.values())), strict=True))
            for key in ("user_id_map", "item_id_map", "item_side_info"):
                shutil.copyfile(ids / INGEST_FILES[key], staged.path(INGEST_FILES[key]))
            shutil.copyfile(paths.shard_map_dir() / INGEST_FILES["quarantine"], staged.path(INGEST_FILES["quarantine"]))
            n_items = pl.scan_parquet(ids / INGEST_FILES["item_id_map"]).select(pl.len()).collect().item()
            report = core.IngestSummary(
                dataset=cfg.name, format=cfg.format, rows_read=m.rows_read, rows_kept=rows_kept,
                rows_quarantined=m.rows_quarantined, duplicates_dropped=m.rows_read - m.rows_quarantined - rows_kept,
                users=n_users, items=n_items, exposures=sum(r["exposures"] for r in records),
                time_granularity=cfg.time.granularity, time_note=core._time_note(cfg), per_file=m.per_file,
                quarantine_reasons=m.quarantine_reasons, mode="full",
                reason=f"merged from user-hash shards ({SHARD_HASH}; their number is in shards/map)",
                files_parsed=m.files)
            staged.path(INGEST_FILES["ingest_report"]).write_text(core._report_json(report))
            for name, text in (extra_files or {}).items():
                staged.path(name).write_text(text)
            staged.publish()
        log(f"{cfg.name}: merged {rows_kept:,} events from {m.shards} shards")
        # the steps' per-user digests, stamped with the merged steps table. The merged splits have no
        # state (split_state.json): a refresh of this dataset on one machine recomputes them in full,
        # while each shard's own state lets a shard run recompute only its changed users.
        digests = [s.user_digests() for s in shards if s.user_digests().is_file()]
        if digests:
            state.write_user_digests(pl.concat([pl.read_parquet(d) for d in digests]).sort(c.USER_ID), paths)
        events = [s.event_digests() for s in shards if s.event_digests().is_file()]
        if events:
            with ParquetAppender(paths.event_digests()) as out:
                out.write(pl.concat([pl.read_parquet(d) for d in events]).sort(c.USER_ID))
        n_steps = rows[("sequences", "steps")]
        if n_steps == 0:
            raise EmptyPartitionError(f"dataset '{cfg.name}': cleaning left no events in any shard; loosen "
                                      f"datasets.{cfg.name}.stages.sequences")
        counts: dict[str, BehaviorCounts] = {}
        for protocol in protocols:
            if rows[(protocol, "examples")] == 0:
                raise EmptyPartitionError(f"dataset '{cfg.name}', split {protocol}: no user has enough target steps")
            counts[protocol] = sum((BehaviorCounts.from_dict(r["counts"][protocol]) for r in records
                                    if protocol in r["counts"]), BehaviorCounts(len(cfg.behaviors)))
        # splits with a global statistic run on the merged steps (user-range shards, as in one process)
        for protocol, spec in sp.PROTOCOL_TABLE.items():
            if spec.needs_cuts and not spec.not_applicable(cfg):
                stage.materialize_split(cfg, paths, protocol, log=log)
                stage.materialize_model_ready(cfg, paths, log=log, protocols=(protocol,))
                protocols.append(protocol)
        for protocol in sp.PROTOCOLS:  # a split this run did not write must not linger from an older one
            if protocol not in protocols:
                shutil.rmtree(paths.split_dir(protocol), ignore_errors=True)
                shutil.rmtree(paths.model_ready_dir(protocol), ignore_errors=True)
        materialize_statistics(cfg, paths, log=log, counts=counts)
    summary = MergeSummary(cfg.name, m.shards, m.rows_read, rows_kept, m.rows_quarantined,
                           m.rows_read - m.rows_quarantined - rows_kept, n_users, n_items, n_steps, protocols,
                           round(time.perf_counter() - started, 3))
    log(f"{cfg.name}: merged {m.shards} shards: {n_steps:,} steps, splits {protocols} ({summary.seconds:.1f} s)")
    return summary


def merge_table(parts: list[Path], target: Path, users_per_block: int, n_users: int,
                metadata: dict[str, str] | None = None,
                on_block: Callable[[pl.DataFrame], None] | None = None) -> int:
    """Concatenate user-ordered tables of disjoint users into one user-ordered table.

    Rows are read in blocks of consecutive user ids (``users_per_block``, derived from dataset totals,
    not from N), each block stably sorted by user: a user's rows keep their order, and the row groups
    (one per block) are the same whatever the number of shards. ``on_block`` sees every non-empty
    block after it is written, in order.
    """
    files = [p for p in parts if p.is_file() and pl.scan_parquet(p).select(pl.len()).collect().item() > 0]
    with ParquetAppender(target, metadata) as out:
        if not files:
            empty = [p for p in parts if p.is_file()]
            if empty:
                out.write(pl.read_parquet(empty[0]).clear())
            return 0
        scan = pl.concat([pl.scan_parquet(f) for f in files], how="vertical")
        for lo in range(0, n_users, users_per_block):
            block = (scan.filter((pl.col(c.USER_ID) >= lo) & (pl.col(c.USER_ID) < lo + users_per_block))
                     .collect().sort(c.USER_ID, maintain_order=True))
            out.write(block)
            if on_block is not None and block.height:
                on_block(block)
        return out.rows


def merge_model_ready(arrays: list[Path], table_target: Path, arrays_target: Path, role: str,
                      users_per_block: int, n_users: int) -> int:
    """Merge one role's model-ready arrays, and write its table, from the shards' ``.npz`` arrays
    (a shard run writes no model-ready tables).

    A block of consecutive user ids is a contiguous row range of every shard's arrays (one
    positioned read each), interleaved by a stable sort on the user id; each array is written from
    those blocks straight into the archive (the bytes of ordering the concatenated arrays by user),
    so no array is held whole or copied twice. The table is then written from the archive as the
    single-machine stage writes it (``model_ready.write_table``): the same bytes for the same arrays.
    """
    from pipelines.sequences import model_ready

    sources: list[dict[str, NpzMember]] = []
    user_id_arrays: list[np.ndarray] = []
    empty: dict[str, np.ndarray] | None = None  # a shard's arrays without rows: their dtypes and shapes
    for path in arrays:
        if not path.is_file():
            continue
        shard = npz_members(path)
        if shard and sorted(shard) != sorted(model_ready.FRAME_ARRAYS):
            raise ShardError(f"{path}: arrays {list(shard)}, expected {list(model_ready.FRAME_ARRAYS)}")
        rows = len(shard["user_ids"]) if shard else 0
        if shard and not rows and empty is None:
            empty = {k: member.rows(0, 0) for k, member in shard.items()}
        if rows:
            user_ids = shard["user_ids"].rows(0, rows)
            if (user_ids[1:] < user_ids[:-1]).any() or user_ids[0] < 0 or user_ids[-1] >= n_users:
                raise ShardError(f"{path}: user ids are not ordered within 0..{n_users - 1}")
            sources.append(shard)
            user_id_arrays.append(user_ids)
    if not sources:  # empty arrays (as a shard wrote them, when one did) and their empty table
        write_npz_atomic(empty or {}, arrays_target)
        model_ready.write_table(arrays_target, table_target, role)
        return 0

    keys = list(sources[0])  # the arrays' order in the file, as the shards wrote it
    # per block of users: each shard's row range and where its rows go in the block (a stable sort on
    # the user id: a user's rows come from one shard and keep their order)
    blocks: list[tuple[int, list[tuple[int, int, np.ndarray]]]] = []
    for lo in range(0, n_users, users_per_block):
        ranges = [(int(np.searchsorted(u, lo)), int(np.searchsorted(u, lo + users_per_block))) for u in user_id_arrays]
        users = np.concatenate([u[a:b] for u, (a, b) in zip(user_id_arrays, ranges)])
        where = np.empty(len(users), np.intp)
        where[np.argsort(users, kind="stable")] = np.arange(len(users))
        starts = np.cumsum([0] + [b - a for a, b in ranges])
        blocks.append((len(users), [(a, b, where[starts[k]:starts[k + 1]]) for k, (a, b) in enumerate(ranges)]))

    # one buffer per array: reused, they spare faulting in fresh pages for every block, which was a
    # third of the merge's CPU time at 100M rows
    largest = max(rows for rows, _ in blocks)
    pool: dict[tuple, np.ndarray] = {}

    def buffer(name: tuple, member: NpzMember) -> np.ndarray:
        if name not in pool:
            pool[name] = np.empty(largest * int(np.prod(member.shape[1:], dtype=np.int64)), member.dtype)
        return pool[name]

    def block_of(key: str, rows: int, parts: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
        first = sources[0][key]
        filled = [(k, part) for k, part in enumerate(parts) if part[1] > part[0]]
        if len(filled) == 1:  # one shard holds the block: its rows are already in user order
            k, (a, b, _) = filled[0]
            return sources[k][key].rows(a, b, buffer(("out", key), first))
        out = buffer(("out", key), first)[:rows * int(np.prod(first.shape[1:], dtype=np.int64))]
        out = out.reshape(rows, *first.shape[1:])
        for k, (a, b, where) in filled:
            out[where] = sources[k][key].rows(a, b, buffer(("in", key), first))
        return out

    total = sum(len(u) for u in user_id_arrays)
    write_npz_atomic({k: ArrayBlocks(sources[0][k].dtype, (total, *sources[0][k].shape[1:]),
                                     lambda k=k: (block_of(k, *b) for b in blocks)) for k in keys}, arrays_target)
    return model_ready.write_table(arrays_target, table_target, role)
