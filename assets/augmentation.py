"""Augmentation stage: behavior statistics from training data only (more to come: augmented views).

Thin Dagster wrappers; the logic is ``pipelines.augmentation``.
"""

import warnings

import dagster as dg
import polars as pl

from assets.checks import check_result
from assets.object_store import synced
from assets.partitions import dataset_partitions
from assets.sequences import split_assets
from pipelines.augmentation.stage import materialize_sequential_views, materialize_statistics
from pipelines.contracts import combined, statistics_consistency, validate_parquet
from schemas.sequences import SequentialViews
from pipelines.reporting import markdown_table, png_markdown
from pipelines.resources import PipelineSettings
from pipelines.sequences.splits import PROTOCOLS

warnings.filterwarnings("ignore", category=dg.PreviewWarning)


@dg.asset(
    deps=split_assets, partitions_def=dataset_partitions, group_name="augmentation", kinds={"numpy", "json"},
    description="Per split protocol, from training sets only: behavior frequencies m, co-occurrence M (and "
                "row-normalized), P(b_j | b_i), masking probabilities m^c normalized, set sizes, transitions.",
)
@synced
def behavior_statistics(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    docs = materialize_statistics(cfg, paths, log=context.log.info)
    meta: dict[str, object] = {"path": dg.MetadataValue.path(str(paths.statistics_dir()))}
    for protocol, doc in docs.items():
        names = doc["behaviors"]
        table = pl.DataFrame({"behavior": names, "m (sets)": doc["m"], "mask_prob": doc["mask_prob"],
                              **{f"M[{n}]": [row[j] for row in doc["M"]] for j, n in enumerate(names)}})
        meta[f"{protocol}"] = dg.MetadataValue.md(markdown_table(table, max_rows=20))
        meta[f"{protocol}_training_sets"] = doc["training_sets"]
    first = next(iter(docs), None)
    if first:
        png = paths.statistics_heatmap(first).read_bytes()
        meta["heatmap"] = dg.MetadataValue.md(png_markdown(png, f"{first} heatmap"))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    deps=split_assets, partitions_def=dataset_partitions, group_name="augmentation", kinds={"numpy", "parquet"},
    description="GAMER-style sequential augmentation: x extra views of each split's training sequences, view k "
                "removing each lower-level behavior with probability (k/x)/(level+1); valid/test untouched.",
)
@synced
def sequential_augmentation(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    summary = materialize_sequential_views(cfg, paths, log=context.log.info)
    return dg.MaterializeResult(metadata={
        "views": dg.MetadataValue.json(summary),
        "path": dg.MetadataValue.path(str(paths.sequential_views("<protocol>"))),
    })


@dg.asset_check(asset=behavior_statistics, blocking=True, partitions_def=dataset_partitions,
                description="M symmetric with zero diagonal and bounded by m; counts equal the split's training steps.")
@synced
def behavior_statistics_consistency(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    paths = settings.paths(context.partition_key)
    results = [statistics_consistency(paths.statistics(p), paths.roles(p), paths.steps())
               for p in PROTOCOLS if paths.statistics(p).is_file()]
    if not results:
        return dg.AssetCheckResult(passed=False, description="no split had statistics written")
    return check_result(combined(results))


@dg.asset_check(asset=sequential_augmentation, blocking=True, partitions_def=dataset_partitions,
                description="pandera SequentialViews (schemas/sequences.py) on every split's augmented views.")
@synced
def sequential_augmentation_contract(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    paths = settings.paths(context.partition_key)
    results = [validate_parquet(table, SequentialViews) for table in paths.sequential_view_tables()]
    if not results:
        return dg.AssetCheckResult(passed=False, description="no sequential views were written")
    return check_result(combined(results))


augmentation_assets = [behavior_statistics, sequential_augmentation]
augmentation_checks = [behavior_statistics_consistency, sequential_augmentation_contract]
