"""Ingest stage: raw logs -> canonical events, id maps, item side info and quarantine.

Thin Dagster wrappers; the logic is ``pipelines.ingest.core.ingest_dataset``.
"""



import warnings

import dagster as dg

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
import polars as pl

from assets.checks import check_result
from assets.object_store import synced
from assets.partitions import dataset_partitions
from pipelines.contracts import ingest_consistency, validate_parquet
from pipelines.ingest import core
from pipelines.layout import DatasetLayout
from pipelines.reporting import counts_table, markdown_table
from pipelines.resources import PipelineSettings
from pipelines.refresh import raw_newer_than_outputs
from pipelines.sources import SOURCE_FILE, resolve_raw_source
from pipelines.storage import has_raw_files
from schemas import ingest as contracts

STAGE = "ingest"
TABLES = {  # asset name -> (layout accessor, contract, description)
    "canonical_events": (DatasetLayout.events, contracts.CanonicalEvents,
                         "One row per kept raw event: dense ids, behavior bitmask, time in ms, file order, file and line."),
    "user_id_map": (DatasetLayout.user_id_map, contracts.UserIdMap, "Dense user id <-> raw user id."),
    "item_id_map": (DatasetLayout.item_id_map, contracts.ItemIdMap, "Dense item id <-> raw item id."),
    "item_side_info": (DatasetLayout.item_side_info, contracts.ItemSideInfo,
                       "Per-item categories, brand, seller, caption tokens: input of the semantic-ID stage."),
    "ingest_quarantine": (DatasetLayout.quarantine, contracts.Quarantine,
                          "Rejected raw rows with file, line, reason and the raw text."),
}


class IngestRunConfig(dg.Config):
    # Once a dataset's outputs were built from real raw files, a missing raw folder fails the run
    # instead of silently replacing them with generated data; set this to replace them anyway.
    allow_synthetic: bool = False


@dg.multi_asset(
    specs=[
        dg.AssetSpec(name, group_name=STAGE, kinds={"polars", "parquet"}, description=desc,
                     metadata={"file": file.__name__})
        for name, (file, _, desc) in TABLES.items()
    ],
    partitions_def=dataset_partitions,
    can_subset=False,
)
@synced
def ingest(context: dg.AssetExecutionContext, settings: PipelineSettings, config: IngestRunConfig):
    """Read the dataset's raw files (or generate them) and write the canonical ingest tables."""
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    source = resolve_raw_source(cfg, paths, log=context.log.info, allow_synthetic=config.allow_synthetic)
    summary = core.ingest_dataset(cfg, source.directory, paths.ingest_dir(), log=context.log.info,
                                  extra_files={SOURCE_FILE: source.to_json()})
    common = {
        "source": source.kind,
        "source_description": source.description,
        "raw_files": dg.MetadataValue.json(source.files),
        "time_granularity": summary.time_granularity,
        "time_note": summary.time_note,
    }
    events = pl.read_parquet(paths.events(), n_rows=10)
    yield dg.MaterializeResult(
        asset_key="canonical_events",
        metadata={
            **common,
            "path": dg.MetadataValue.path(str(paths.events())),
            "dagster/row_count": summary.rows_kept,
            "rows_read": summary.rows_read,
            "rows_kept": summary.rows_kept,
            "rows_quarantined": summary.rows_quarantined,
            "duplicates_dropped": summary.duplicates_dropped,
            "reconciles": summary.reconciles,
            "reconciliation": f"{summary.rows_read:,} read = {summary.rows_kept:,} kept + "
                              f"{summary.rows_quarantined:,} quarantined + {summary.duplicates_dropped:,} duplicates",
            "exposures": summary.exposures,
            "behaviors": ", ".join(f"bit {i}: {b}" for i, b in enumerate(cfg.behavior_names)),
            "per_file": dg.MetadataValue.json(summary.per_file),
            "mode": summary.mode,
            "mode_reason": summary.reason,
            "files_parsed": dg.MetadataValue.json(summary.files_parsed),
            "files_reused": dg.MetadataValue.json(summary.files_reused),
            "seconds": summary.seconds,
            "preview": dg.MetadataValue.md(markdown_table(events)),
        },
    )
    for name, rows in (("user_id_map", summary.users), ("item_id_map", summary.items)):
        yield dg.MaterializeResult(
            asset_key=name,
            metadata={"path": dg.MetadataValue.path(str(TABLES[name][0](paths))), "dagster/row_count": rows},
        )
    side = pl.read_parquet(paths.item_side_info())
    coverage = {col: int(side[col].is_not_null().sum()) for col in core.SIDE_COLUMNS}
    yield dg.MaterializeResult(
        asset_key="item_side_info",
        metadata={
            "path": dg.MetadataValue.path(str(paths.item_side_info())),
            "dagster/row_count": side.height,
            "non_null_per_column": dg.MetadataValue.json(coverage),
            "preview": dg.MetadataValue.md(markdown_table(side)),
        },
    )
    quarantine = pl.read_parquet(paths.quarantine(), n_rows=20)
    yield dg.MaterializeResult(
        asset_key="ingest_quarantine",
        metadata={
            "path": dg.MetadataValue.path(str(paths.quarantine())),
            "dagster/row_count": summary.rows_quarantined,
            "bad_share": summary.rows_quarantined / max(summary.rows_read, 1),
            "threshold": cfg.ingest.bad_row_threshold,
            "reasons": dg.MetadataValue.md(counts_table(summary.quarantine_reasons)),
            "first_rows": dg.MetadataValue.md(markdown_table(quarantine, max_rows=20)),
        },
    )


def _contract_check(asset_name: str) -> dg.AssetChecksDefinition:
    path_of, model, _ = TABLES[asset_name]

    @dg.asset_check(asset=asset_name, name=f"{asset_name}_contract", blocking=True, partitions_def=dataset_partitions,
                    description=f"pandera contract {model.__name__} (schemas/ingest.py) on the written table")
    @synced
    def _check(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
        return check_result(validate_parquet(path_of(settings.paths(context.partition_key)), model))

    return _check


@dg.asset_check(asset="canonical_events", blocking=True, partitions_def=dataset_partitions,
                description="Counts reconcile (read = kept + quarantined + duplicates); id maps dense and "
                            "bijective; events reference only mapped ids; side info covers every item.")
@synced
def ingest_consistency_check(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    return check_result(ingest_consistency(settings.paths(context.partition_key).ingest_dir()))


@dg.asset_check(asset="canonical_events", partitions_def=dataset_partitions,
                description="Freshness: no raw file of the dataset is newer than its published ingest outputs "
                            "(fails naming the files; the raw-data sensor then has a refresh to request). Run it "
                            "from the asset's Checks tab at any time.")
@synced
def raw_files_ingested(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    paths = settings.paths(context.partition_key)
    stale = raw_newer_than_outputs(paths) if has_raw_files(paths.raw_dir) else []
    if stale:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description=f"raw file(s) newer than the published outputs: {', '.join(stale[:20])}",
                                   metadata={"message": f"not ingested yet: {', '.join(stale[:20])}"})
    source = "raw files" if has_raw_files(paths.raw_dir) else "generated data (no raw files)"
    return dg.AssetCheckResult(passed=True, description=f"outputs are newer than every input ({source})")


ingest_checks = [_contract_check(name) for name in TABLES] + [ingest_consistency_check, raw_files_ingested]
