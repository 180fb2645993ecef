"""Sequence stage: behavior-set steps and sessions, split protocols with the leakage filter, the audit.

Thin Dagster wrappers; the logic is ``pipelines.sequences`` (plain polars).
"""

import dataclasses
import warnings

import dagster as dg
import polars as pl

from assets.checks import check_result
from assets.object_store import synced
from assets.partitions import dataset_partitions
from pipelines.contracts import (
    combined,
    exports_contract,
    model_ready_consistency,
    split_consistency,
    validate_parquet,
)
from pipelines.layout import producers_of
from pipelines.reporting import markdown_table, png_markdown
from pipelines.resources import PipelineSettings
from pipelines.sequences import stage
from pipelines.sequences.options import SequenceOptions
from pipelines.sequences.splits import PROTOCOL_TABLE, PROTOCOLS
from schemas.sequences import (
    BehaviorSteps,
    EvaluationExamples,
    LeakageAudit,
    ModelReadySequences,
    SplitRoles,
    SplitUsers,
    TrainingExamples,
    UserDigests,
)

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
GROUP = "sequences"


@dg.asset(
    deps=producers_of("events"), partitions_def=dataset_partitions, group_name=GROUP, kinds={"polars", "parquet"},
    description="Cleaned events merged into behavior-set steps (bitmask over the registry vocabulary) with sessions.",
)
@synced
def behavior_sets(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    summary = dataclasses.asdict(stage.materialize_steps(cfg, paths, log=context.log.info))
    preview = pl.read_parquet(paths.steps(), n_rows=10)
    sets = summary.pop("behavior_sets")
    return dg.MaterializeResult(metadata={
        **{k: (dg.MetadataValue.json(v) if isinstance(v, (list, dict)) else v) for k, v in summary.items()},
        "dagster/row_count": summary["steps"],
        "path": dg.MetadataValue.path(str(paths.steps())),
        "behavior_sets": dg.MetadataValue.md(markdown_table(pl.DataFrame(sets), max_rows=15)),
        "preview": dg.MetadataValue.md(markdown_table(preview)),
    })


def _split_asset(protocol: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"split_{protocol}", deps=[behavior_sets], partitions_def=dataset_partitions, group_name=GROUP,
        kinds={"polars", "parquet"},
        description=f"The {protocol} split ({PROTOCOL_TABLE[protocol].description}): a role per step and valid/test "
                    "examples with the leakage filter applied (see pipelines/sequences/splits.py).",
    )
    @synced
    def _asset(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
        cfg = settings.dataset(context.partition_key)
        paths = settings.paths(cfg.name)
        summary = stage.materialize_split(cfg, paths, protocol, log=context.log.info)
        fields = {**dataclasses.asdict(summary), **summary.user_counts}
        fields.pop("user_counts")
        meta = {k: (dg.MetadataValue.json(v) if isinstance(v, dict) else v) for k, v in fields.items()}
        if summary.applicable:
            meta["path"] = dg.MetadataValue.path(str(paths.split_dir(protocol)))
            meta["dagster/row_count"] = summary.examples
        return dg.MaterializeResult(metadata=meta)

    return _asset


split_assets = [_split_asset(p) for p in PROTOCOLS]


@dg.asset(
    deps=split_assets, partitions_def=dataset_partitions, group_name=GROUP, kinds={"polars", "parquet"},
    description="Leak exposure (target item in the last k history steps) and two leak-exploiting recommenders' "
                "HR/NDCG@k, before and after the leakage filter, per split: GAMER's Figure 2 on any dataset.",
)
@synced
def leakage_audit(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    table = stage.materialize_audit(cfg, paths, log=context.log.info)
    k10 = table.filter(pl.col("k") == 10).select("protocol", "filter", "examples", "share_in_last_k", "recent_hr",
                                                 "frequent_hr").with_columns(pl.col(pl.Float64).round(4))
    png = paths.leakage_plot().read_bytes()
    return dg.MaterializeResult(metadata={
        "at_k_10": dg.MetadataValue.md(markdown_table(k10, max_rows=20)),
        "plot": dg.MetadataValue.md(png_markdown(png, "leakage audit")),
        "report": dg.MetadataValue.path(str(paths.leakage_report())),
        "path": dg.MetadataValue.path(str(paths.leakage_audit())),
        "dagster/row_count": table.height,
    })


@dg.asset(
    deps=split_assets, partitions_def=dataset_partitions, group_name=GROUP, kinds={"numpy", "parquet"},
    description="Per split and role (train/valid/test): left-padded arrays of the last max_len history steps "
                "(items+1, behavior sets, time gaps, sessions+1) with targets, as parquet and .npz.",
)
@synced
def model_ready_sequences(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    summary = stage.materialize_model_ready(cfg, paths, log=context.log.info)
    opts = SequenceOptions.of(cfg)
    return dg.MaterializeResult(metadata={
        "examples": dg.MetadataValue.json(summary), "max_len": opts.max_len,
        "path": dg.MetadataValue.path(str(paths.model_ready_dir())),
        "load": "pipelines.sequences.model_ready.load('<protocol>/<role>.npz') -> dict of numpy arrays; "
                "torch.from_numpy on each gives tensors",
    })


@dg.asset(
    deps=[behavior_sets, *split_assets], partitions_def=dataset_partitions, group_name=GROUP, kinds={"csv", "json"},
    description="EIDP/BLADE split files (user,item,b1..bB), a RecBole atomic .inter file, GAMER-style JSON.",
)
@synced
def sequence_exports(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    result = stage.materialize_exports(cfg, paths, log=context.log.info)
    return dg.MaterializeResult(metadata={
        k: (dg.MetadataValue.json(v) if isinstance(v, dict) else dg.MetadataValue.path(v)) for k, v in result.items()})


def _check(asset, name: str, description: str, fn) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset, name=name, blocking=True, partitions_def=dataset_partitions, description=description)
    @synced
    def _c(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
        cfg = settings.dataset(context.partition_key)
        return fn(cfg, settings.paths(cfg.name))

    return _c


def _steps_check(paths) -> dg.AssetCheckResult:
    results = [validate_parquet(paths.steps(), BehaviorSteps)]
    for digests in (paths.user_digests(), paths.event_digests()):
        if digests.is_file():  # a merge of user-hash shards without shard digests has none
            results.append(validate_parquet(digests, UserDigests))
    return check_result(combined(results))


def _model_ready_check(cfg, paths) -> dg.AssetCheckResult:
    for table in paths.model_ready_tables():
        r = validate_parquet(table, ModelReadySequences)
        if not r.passed:
            return check_result(r)
    return check_result(model_ready_consistency(paths.model_ready_dir(), SequenceOptions.of(cfg).max_len))


def _split_checks(protocol: str, asset) -> list[dg.AssetChecksDefinition]:
    def not_applicable(cfg) -> dg.AssetCheckResult | None:
        why = PROTOCOL_TABLE[protocol].not_applicable(cfg)
        return dg.AssetCheckResult(passed=True, metadata={"message": f"not applicable: {why}"}) if why else None

    def contract(cfg, paths):
        if skipped := not_applicable(cfg):
            return skipped
        return check_result(combined([validate_parquet(file, model) for file, model in (
            (paths.roles(protocol), SplitRoles), (paths.examples(protocol), EvaluationExamples),
            (paths.examples(protocol, filtered=False), EvaluationExamples),
            (paths.train_examples(protocol), TrainingExamples), (paths.split_users(protocol), SplitUsers))]))

    def consistency(cfg, paths):
        if skipped := not_applicable(cfg):
            return skipped
        opts = SequenceOptions.of(cfg)
        return check_result(split_consistency(paths, protocol, opts.leakage_filter, opts.max_len, cfg))

    return [
        _check(asset, f"split_{protocol}_contract",
               "pandera SplitRoles, EvaluationExamples (filtered and unfiltered), TrainingExamples, SplitUsers "
               "(schemas/sequences.py)",
               contract),
        _check(asset, f"split_{protocol}_consistency",
               "Every step in exactly one role; histories end before their targets; no leaking step left after "
               "the 'all'/'merge' filter.", consistency),
    ]


sequence_assets = [behavior_sets, *split_assets, leakage_audit, model_ready_sequences, sequence_exports]
sequence_checks = [
    _check(behavior_sets, "behavior_sets_contract", "pandera BehaviorSteps and UserDigests (schemas/sequences.py)",
           lambda cfg, paths: _steps_check(paths)),
    *[chk for p, a in zip(PROTOCOLS, split_assets, strict=True) for chk in _split_checks(p, a)],
    _check(model_ready_sequences, "model_ready_contract",
           "pandera ModelReadySequences on every table, and arrays left-padded to max_len, parquet = npz",
           lambda cfg, paths: _model_ready_check(cfg, paths)),
    _check(sequence_exports, "sequence_exports_contract",
           "BLADE split lines (ids >= 1, flags 0/1, no empty set) and the RecBole .inter (pandera)",
           lambda cfg, paths: check_result(exports_contract(paths))),
    _check(leakage_audit, "leakage_audit_contract", "pandera LeakageAudit (schemas/sequences.py)",
           lambda cfg, paths: check_result(validate_parquet(paths.leakage_audit(), LeakageAudit))),
]
