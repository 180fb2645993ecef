"""User-hash shards as Dagster partitions: dataset x shard runs of the per-user stages, then the merge.

Thin Dagster wrappers; the logic is ``pipelines.shards``. The ``shards`` group is opt-in: a dataset
with ``shards: N`` in the registry starts it with a run of ``event_shards`` (the raw-data sensor asks
for it instead of ``ingest``); declarative automation carries it on, each layer only when every
partition of the layer above for that dataset is materialized and none failed:

    event_shards [dataset]  ->  event_shard_ids [dataset|shard]  ->  dense_ids [dataset]
        ->  shard_sequences [dataset|shard]  ->  sharded_dataset [dataset]

``sharded_dataset`` writes the dataset-level tables the single-machine stages write (ingest,
steps, splits, model-ready arrays, statistics); the ``sharded_downstream`` sensor then requests the
dataset-level assets that read them (leakage audit, exports, augmentation, semantic IDs, training,
evaluation, card). Shard keys run 0..max(shards)-1 over the registry; a dataset with fewer shards
materializes its extra shard keys as empty no-ops.
"""


import dataclasses
import warnings

import dagster as dg

from assets.checks import check_result
from assets.executors import run_tags, shard_step_tags
from assets.object_store import synced
from assets.partitions import dataset_partitions
from pipelines import shards
from pipelines.contracts import combined, ingest_consistency, validate_parquet
from pipelines.parallel import threads_used
from pipelines.process import peak_rss_mb, reset_peak_rss
from pipelines.registry import load_registry
from pipelines.resources import PipelineSettings
from pipelines.sources import SOURCE_FILE, resolve_raw_source
from pipelines.storage import VersionedOutputs
from schemas.shards import ShardBucket, ShardRawItems, ShardRawUsers

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)
GROUP = "shards"

_registry = load_registry(strict=False)
MAX_SHARDS = max([cfg.shards for cfg in _registry.datasets.values()] or [1])
shard_partitions = dg.MultiPartitionsDefinition({
    "dataset": dataset_partitions,
    "shard": dg.StaticPartitionsDefinition([str(k) for k in range(MAX_SHARDS)]),
})
ALL_SHARDS_OF_DATASET = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")
# Run-level tags: the queue's limit of one run per dataset applies to dataset-level runs (tag
# dagster/partition); shard runs of one dataset run side by side, bounded by the run queue.


def _keys(context) -> tuple[str, int]:
    key = context.partition_key.keys_by_dimension
    return key["dataset"], int(key["shard"])


def _shard_scopes(context, settings: PipelineSettings) -> list[str]:
    """What a shard run reads and writes (an object-store data root): its own bucket of the map, the
    merged dense ids and its own folder, not the other shards' rows."""
    name, k = _keys(context)
    paths = settings.paths(name)
    rel = lambda p: p.relative_to(paths.root).as_posix()  # noqa: E731
    wanted = (paths.shard_bucket(k).name, paths.shard_map_report().name, VersionedOutputs.MANIFEST)
    return [f"{rel(paths.shard_map_dir())}:{','.join(wanted)}", rel(paths.shard_ids_dir()),
            rel(paths.of_shard(k).outputs_dir)]


# The shard layers' blocking checks run inside their asset's step (``check_specs``), not as steps of
# their own: on Celery every step is a task, and a check step was a second task per run (a worker
# round trip, a process start with --max-tasks-per-child=1) for a check that reads the files the
# step just wrote. Failing, they fail the step, so the next layer does not run.
def _spec(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, blocking=True, description=description)


def _named(name: str, result: dg.AssetCheckResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=result.passed, metadata=result.metadata,
                               description=result.description)


def event_shards_contract(paths) -> dg.AssetCheckResult:
    """pandera ShardBucket on every bucket; bucket rows add up to the good rows."""
    m = shards.read_map(paths)
    results = [validate_parquet(paths.shard_bucket(k), ShardBucket) for k in range(m.shards)
               if paths.shard_bucket(k).is_file()]
    result = combined(results) if results else None
    if result is not None and not result.passed:
        return check_result(result)
    good = m.rows_read - m.rows_quarantined
    if sum(m.rows_per_shard) != good:
        return dg.AssetCheckResult(passed=False, description=f"buckets hold {sum(m.rows_per_shard):,} rows, "
                                                             f"expected {good:,} good rows")
    return check_result(result) if result else dg.AssetCheckResult(passed=True, description="no good rows")


def event_shard_ids_contract(shard) -> dg.AssetCheckResult:
    """pandera ShardRawUsers / ShardRawItems on the shard's distinct ids."""
    return check_result(combined([validate_parquet(shard.raw_ids("users"), ShardRawUsers),
                                  validate_parquet(shard.raw_ids("items"), ShardRawItems)]))


@dg.asset(partitions_def=dataset_partitions, group_name=GROUP, kinds={"polars", "parquet"},
          description=f"The map step of a sharded run: every raw line parsed once (ingest's checks and quarantine), "
                      f"good rows bucketed by user shard ({shards.SHARD_HASH}).",
          check_specs=[_spec("event_shards_contract", "event_shards", "pandera ShardBucket (schemas/shards.py) on "
                             "every bucket; bucket rows add up to the good rows.")])
@synced
def event_shards(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    reset_peak_rss()
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    source = resolve_raw_source(cfg, paths, log=context.log.info)
    summary = shards.map_to_shards(cfg, source.directory, paths, log=context.log.info)
    return dg.MaterializeResult(metadata={
        "shards": summary.shards, "hash": summary.hash, "rows_read": summary.rows_read,
        "rows_quarantined": summary.rows_quarantined, "rows_per_shard": dg.MetadataValue.json(summary.rows_per_shard),
        "dagster/row_count": summary.rows_read - summary.rows_quarantined, "seconds": summary.seconds,
        "peak_rss_mb": peak_rss_mb(), "path": dg.MetadataValue.path(str(paths.shard_map_dir())),
    }, check_results=[_named("event_shards_contract", event_shards_contract(paths))])


def _not_a_shard(cfg, k: int) -> dg.MaterializeResult | None:
    if k < cfg.shards:
        return None
    return dg.MaterializeResult(metadata={"skipped": f"dataset '{cfg.name}' has {cfg.shards} shard(s); key {k} is "
                                                     f"empty (another dataset has more shards)"})


@dg.asset(partitions_def=shard_partitions, group_name=GROUP, op_tags=shard_step_tags(), kinds={"polars", "parquet"},
          deps=[dg.AssetDep(event_shards, partition_mapping=ALL_SHARDS_OF_DATASET)],
          description="One shard's distinct raw users and items, each with the first file it occurs in.",
          check_specs=[_spec("event_shard_ids_contract", "event_shard_ids", "pandera ShardRawUsers / ShardRawItems "
                             "(schemas/shards.py) on the shard's distinct ids.")])
@synced(scopes=_shard_scopes)
def event_shard_ids(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    reset_peak_rss()
    name, k = _keys(context)
    cfg = settings.dataset(name)
    check = "event_shard_ids_contract"
    if skipped := _not_a_shard(cfg, k):
        return dg.MaterializeResult(metadata=skipped.metadata, check_results=[
            dg.AssetCheckResult(check_name=check, passed=True, description="not a shard of this dataset")])
    counts = shards.shard_raw_ids(cfg, settings.paths(name), k, log=context.log.info)
    return dg.MaterializeResult(metadata={**counts, "peak_rss_mb": peak_rss_mb()}, check_results=[
        _named(check, event_shard_ids_contract(settings.paths(name).of_shard(k)))])


@dg.asset(partitions_def=dataset_partitions, group_name=GROUP, kinds={"polars", "parquet"},
          deps=[dg.AssetDep(event_shard_ids, partition_mapping=ALL_SHARDS_OF_DATASET)],
          description="Dense user and item ids from every shard's distinct raw ids, by (first file, raw id): the "
                      "ids a single-machine ingest assigns. Item side info.")
@synced
def dense_ids(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    reset_peak_rss()
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    raw = resolve_raw_source(cfg, paths, log=context.log.info).directory
    counts = shards.merge_dense_ids(cfg, raw, paths, log=context.log.info)
    return dg.MaterializeResult(metadata={**counts, "peak_rss_mb": peak_rss_mb(),
                                          "path": dg.MetadataValue.path(str(paths.shard_ids_dir()))})


@dg.asset(partitions_def=shard_partitions, group_name=GROUP, op_tags=shard_step_tags(),
          kinds={"polars", "parquet", "numpy"},
          deps=[dg.AssetDep(dense_ids, partition_mapping=ALL_SHARDS_OF_DATASET)],
          description="One shard's canonical events, behavior-set steps and sessions, per-user splits with the "
                      "leakage filter, model-ready arrays and training behavior counts.")
@synced(scopes=_shard_scopes)
def shard_sequences(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    reset_peak_rss()
    name, k = _keys(context)
    cfg = settings.dataset(name)
    if skipped := _not_a_shard(cfg, k):
        return skipped
    summary = shards.shard_sequences(cfg, settings.paths(name), k, log=context.log.info)
    return dg.MaterializeResult(metadata={
        "events": summary.rows_kept, "steps": summary.steps, "users": summary.users,
        "splits": dg.MetadataValue.json({p: s["examples"] for p, s in summary.protocols.items()}),
        "seconds": summary.seconds, "peak_rss_mb": peak_rss_mb(), "dagster/row_count": summary.steps,
        "threads": dg.MetadataValue.json(threads_used()),
    })


@dg.asset(partitions_def=dataset_partitions, group_name=GROUP, kinds={"polars", "parquet", "numpy"},
          deps=[dg.AssetDep(shard_sequences, partition_mapping=ALL_SHARDS_OF_DATASET)],
          description="The merge: the dataset-level ingest tables, steps, splits, model-ready arrays and behavior "
                      "statistics from every shard, in user order (the same bytes for any number of shards). The "
                      "temporal split (global time cuts) runs here on the merged steps.",
          check_specs=[_spec("sharded_dataset_consistency", "sharded_dataset", "The merged ingest tables pass the "
                             "single-machine ingest's consistency check (counts reconcile, id maps dense and bijective, "
                             "events reference mapped ids).")])
@synced
def sharded_dataset(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    reset_peak_rss()
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    source = resolve_raw_source(cfg, paths, log=context.log.info)
    summary = shards.merge_shards(cfg, source.directory, paths, log=context.log.info,
                                  extra_files={SOURCE_FILE: source.to_json()})
    fields = dataclasses.asdict(summary)
    return dg.MaterializeResult(metadata={
        **{k: (dg.MetadataValue.json(v) if isinstance(v, list) else v) for k, v in fields.items()},
        "dagster/row_count": summary.steps, "peak_rss_mb": peak_rss_mb(),
        "path": dg.MetadataValue.path(str(paths.outputs_dir)),
    }, check_results=[_named("sharded_dataset_consistency", check_result(ingest_consistency(paths.ingest_dir())))])


shard_assets = [event_shards, event_shard_ids, dense_ids, shard_sequences, sharded_dataset]

event_shards_job = dg.define_asset_job(
    "event_shards_job", selection=[event_shards],
    description="The map step of a sharded dataset (the raw-data sensor's target for datasets with shards > 1).")

# Dataset-level assets that read what the merge writes (the per-user stages' own assets and the ingest
# assets are not re-run: the merge wrote their tables; their checks run on the merged tables).
MERGED_ASSETS = ("canonical_events", "user_id_map", "item_id_map", "item_side_info", "ingest_quarantine",
                 "behavior_sets", *(f"split_{p}" for p in shards.sp.PROTOCOLS), "model_ready_sequences",
                 "behavior_statistics")
sharded_downstream_job = dg.define_asset_job(
    "sharded_downstream",
    selection=(dg.AssetSelection.all() - dg.AssetSelection.groups("ingest", GROUP)
               - dg.AssetSelection.assets(*MERGED_ASSETS) - dg.AssetSelection.assets("cross_dataset_leaderboard"))
    | dg.AssetSelection.checks_for_assets(*MERGED_ASSETS),
    description="After a sharded merge: the checks of the merged tables and every dataset-level asset that reads "
                "them (leakage audit, exports, augmentation, semantic IDs, training, evaluation, card).",
)


def sharded_downstream_sensor(interval_s: int) -> dg.SensorDefinition:
    @dg.asset_sensor(asset_key=dg.AssetKey("sharded_dataset"), job=sharded_downstream_job, name="sharded_downstream",
                     minimum_interval_seconds=interval_s, default_status=dg.DefaultSensorStatus.RUNNING,
                     description="When a sharded dataset's merge is materialized, requests the dataset-level assets "
                                 "that read the merged tables, for that dataset only.")
    def _sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry, settings: PipelineSettings):
        partition = asset_event.dagster_event.partition if asset_event.dagster_event else None
        if partition:
            registry = settings.registry()
            cfg = registry.get(partition) if partition in registry.datasets else None
            yield dg.RunRequest(run_key=f"{partition}:{asset_event.run_id}", partition_key=partition,
                                tags={**run_tags(cfg), "mbrec/trigger": "sharded merge materialized"})

    return _sensor
