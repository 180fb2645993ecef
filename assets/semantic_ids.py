"""Semantic-ID stage: item text -> embeddings -> semantic IDs (+ quality report) -> exports.

Thin Dagster wrappers; the logic is ``pipelines.semantic_ids``.
"""

import json
import warnings

import dagster as dg
import polars as pl

from assets.checks import check_result
from assets.object_store import synced
from assets.partitions import dataset_partitions
from pipelines.contracts import validate_parquet
from pipelines.reporting import markdown_table
from pipelines.resources import PipelineSettings
from pipelines.semantic_ids.checks import embeddings_consistency, sid_consistency
from pipelines.semantic_ids.options import SemanticIdOptions
from pipelines.sequences.splits import PROTOCOLS
from pipelines.semantic_ids.stage import (
    materialize_embeddings,
    materialize_exports,
    materialize_item_text,
    materialize_semantic_ids,
)
from schemas.semantic_ids import ItemEmbeddings, ItemText, SemanticIds

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
GROUP = "semantic_ids"


class SemanticIdRunConfig(dg.Config):
    full_rebuild: bool = False  # retrain the codebooks and reassign every item (SIDs may change)


@dg.asset(deps=["item_side_info"], partitions_def=dataset_partitions, group_name=GROUP, kinds={"polars", "parquet"},
          description="One text per item from its side info through the registry's template "
                      "(stages.semantic_ids.text_template); id-only items fall back to 'item <raw id>'.")
@synced
def item_text(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    meta = materialize_item_text(cfg, settings.paths(cfg.name), log=context.log.info)
    examples = pl.DataFrame(meta.pop("examples"), schema=["item_id", "raw_item_id", "text", "source"], orient="row")
    return dg.MaterializeResult(metadata=meta | {"examples": dg.MetadataValue.md(markdown_table(examples))})


@dg.asset(deps=[item_text, *(f"split_{p}" for p in PROTOCOLS)],
          partitions_def=dataset_partitions, group_name=GROUP, kinds={"torch", "parquet"},
          description="Item vectors: sentence-transformers text embeddings (default all-MiniLM-L6-v2, offline), "
                      "cached by hash(model, text), and/or a truncated SVD of training co-occurrence.")
@synced
def item_embeddings(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    meta = materialize_embeddings(cfg, settings.paths(cfg.name), log=context.log.info)
    return dg.MaterializeResult(metadata=meta)


@dg.asset(deps=[item_embeddings], partitions_def=dataset_partitions, group_name=GROUP, kinds={"faiss", "parquet"},
          description="Semantic IDs from frozen codebooks trained on training-split items (unique residual "
                      "k-means 3x256 + dedup by default: tuples collide only where vectors are identical); stable across refreshes; quality report in metadata and "
                      "semantic_ids/quality_report.md.")
@synced
def semantic_ids(context: dg.AssetExecutionContext, settings: PipelineSettings,
                 config: SemanticIdRunConfig) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    report = materialize_semantic_ids(cfg, settings.paths(cfg.name), log=context.log.info,
                                      full_rebuild=config.full_rebuild)
    q = report["quality"]
    levels = pl.DataFrame(q["levels"]).with_columns(pl.col(pl.Float64).round(4))
    coherence = pl.DataFrame(q["coherence"]).with_columns(pl.col(pl.Float64).round(4)) if q["coherence"] else None
    depth1 = q["coherence"][0] if q["coherence"] else {}
    return dg.MaterializeResult(metadata={
        "method": report["method"], "sizes": str(report["sizes"]), "items": report["items"],
        "training_items": report["training_items"],
        "collision_rate_before_dedup": q["collisions"]["collision_rate"],
        "collision_floor": q["floor"]["floor"],
        "excess_collision_rate": q["collisions"]["excess_collision_rate"],
        **({"text_floor": q["floor"]["text_floor"]} if "text_floor" in q["floor"] else {}),
        "largest_collision_group": q["collisions"]["largest_group"],
        "relative_mse": q["reconstruction"]["relative_mse"],
        "coherence_depth1_ratio": depth1.get("ratio", 0.0),
        "refresh": dg.MetadataValue.json(report["refresh"]),
        "levels": dg.MetadataValue.md(markdown_table(levels)),
        **({"coherence": dg.MetadataValue.md(markdown_table(coherence))} if coherence is not None else {}),
        "report": dg.MetadataValue.path(str(settings.paths(cfg.name).semantic_id_report())),
    })


@dg.asset(deps=[semantic_ids], partitions_def=dataset_partitions, group_name=GROUP, kinds={"json"},
          description="Exports: <dataset>.index.json ({item_id: ['<a_12>', ...]}, GAMER / LC-Rec / MiniOneRec) and "
                      "sid_vocab.json; the parquet export is semantic_ids.parquet.")
@synced
def semantic_id_exports(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    meta = materialize_exports(cfg, settings.paths(cfg.name), log=context.log.info)
    return dg.MaterializeResult(metadata={**meta, "index_json": dg.MetadataValue.path(meta["index_json"])})




@dg.asset_check(asset=item_text, blocking=True, partitions_def=dataset_partitions,
                description="pandera ItemText (schemas/semantic_ids.py): one non-empty text per item.")
@synced
def item_text_contract(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    return check_result(validate_parquet(settings.paths(context.partition_key).item_text(), ItemText))


@dg.asset_check(asset=item_embeddings, blocking=True, partitions_def=dataset_partitions,
                description="pandera ItemEmbeddings plus one finite vector per item of the id map.")
@synced
def item_embeddings_contract(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    paths = settings.paths(context.partition_key)
    r = validate_parquet(paths.item_embeddings(), ItemEmbeddings)
    if r.passed:
        r = embeddings_consistency(paths.item_embeddings(), paths.item_id_map())
    return check_result(r)


@dg.asset_check(asset=semantic_ids, blocking=True, partitions_def=dataset_partitions,
                description="pandera SemanticIds; every item has exactly one SID, SIDs unique after dedup, every "
                            "level's code utilization above stages.semantic_ids.min_utilization, and (when set) the "
                            "collision rate at most stages.semantic_ids.max_excess_collisions above the "
                            "identical-vector floor.")
@synced
def semantic_ids_contract(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    paths = settings.paths(context.partition_key)
    r = validate_parquet(paths.semantic_ids(), SemanticIds)
    if r.passed:
        opts = SemanticIdOptions.of(settings.dataset(context.partition_key))
        r = sid_consistency(paths.semantic_ids(), paths.item_id_map(), paths.semantic_id_quality(),
                            opts.min_utilization, opts.max_excess_collisions)
    return check_result(r)


@dg.asset_check(asset=semantic_id_exports, blocking=True, partitions_def=dataset_partitions,
                description="The .index.json holds every item's tokens, each token in sid_vocab.json.")
@synced
def semantic_id_exports_contract(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    paths = settings.paths(context.partition_key)
    index = json.loads(paths.sid_index().read_text())
    vocab = set(json.loads(paths.sid_vocab().read_text())["tokens"])
    n_items = pl.scan_parquet(paths.item_id_map()).select(pl.len()).collect().item()
    unknown = sorted({t for tokens in index.values() for t in tokens} - vocab)[:5]
    passed = len(index) == n_items and not unknown and len({tuple(v) for v in index.values()}) == len(index)
    msg = (f"{len(index):,} items for {n_items:,} in the id map; tokens outside the vocabulary: {unknown or 'none'}; "
           f"{len(index) - len({tuple(v) for v in index.values()}):,} duplicate SIDs")
    return dg.AssetCheckResult(passed=passed, description=msg, metadata={"message": msg})


semantic_id_assets = [item_text, item_embeddings, semantic_ids, semantic_id_exports]
semantic_id_checks = [item_text_contract, item_embeddings_contract, semantic_ids_contract, semantic_id_exports_contract]
