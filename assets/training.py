"""Training and evaluation stage: one asset per model (per dataset), then full-ranking evaluation
with and without the leakage filter and a leaderboard across datasets.

Thin Dagster wrappers; the logic is ``pipelines.training``.
"""

import json
import typing
import warnings

import dagster as dg
import polars as pl
import pydantic

from assets.checks import check_result
from assets.object_store import synced
from assets.partitions import dataset_partitions
from pipelines.contracts import validate_parquet
from pipelines.layout import global_leaderboard
from pipelines.reporting import curve_plot, markdown_table, png_markdown
from pipelines.resources import PipelineSettings
from pipelines.training.stage import (
    MODEL_SPECS,
    MODELS,
    TrainingOptions,
    leaderboard,
    materialize_evaluation,
    materialize_training,
    model_config_class,
    update_global_leaderboard,
)
from pipelines.training.configs import TrainConfig
from schemas.training import EvaluationResults

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
GROUP = "training"


class TrainingRunConfig(dg.Config):
    """Hyperparameters of one training run; unset fields keep the registry's / the model's defaults."""

    def overrides(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


def run_config_class(name: str) -> type[TrainingRunConfig]:
    """The run config of ``trained_<name>``, derived from the model's config dataclass and ``TrainConfig``.

    Every field is optional (unset: the registry's / the model's default), so a model's table entry is all
    it takes to get its launchpad form, and a field the model does not have fails when the run is launched.
    """
    hints: dict[str, object] = {}
    for cls in (model_config_class(name), TrainConfig):
        if cls is not None:
            hints |= typing.get_type_hints(cls)
    fields = {field: (hint | None, None) for field, hint in hints.items()}
    title = "".join(part.title() for part in name.split("_"))
    return pydantic.create_model(f"Train{title}Config", __base__=TrainingRunConfig, **fields)


UPSTREAM = {name: list(spec.upstream) for name, spec in MODEL_SPECS.items()}
DESCRIPTIONS = {name: spec.description for name, spec in MODEL_SPECS.items()}


def _training_asset(name: str) -> dg.AssetsDefinition:
    run_config = run_config_class(name)

    @dg.asset(name=f"trained_{name}", deps=["model_ready_sequences", *UPSTREAM[name]], partitions_def=dataset_partitions,
              group_name=GROUP, kinds={"torch"},
              description=f"{DESCRIPTIONS[name]} Early stopping on validation NDCG@10; checkpoint with its config "
                          "and data version under training/<protocol>/" + name + "/.")
    @synced
    def _asset(context: dg.AssetExecutionContext, settings: PipelineSettings, config: run_config) -> dg.MaterializeResult:  # type: ignore[valid-type]
        cfg = settings.dataset(context.partition_key)
        opts = TrainingOptions.of(cfg)
        meta = materialize_training(cfg, settings.paths(cfg.name), name, opts.params(name, config.overrides()),
                                    protocol=opts.protocol, log=context.log.info)
        curve = pl.DataFrame(meta["curve"]).with_columns(pl.col(pl.Float64).round(4))
        return dg.MaterializeResult(metadata={
            "best_epoch": meta["best_epoch"], "stopped": meta["stopped"], "device": meta["device"],
            "parameters": meta["parameters"], "data_version": meta["data_version"],
            "valid_ndcg@10": (meta["best_valid"] or {}).get("ndcg@10", 0.0),
            "train_seconds": round(meta["train_seconds"], 2),
            "curve": dg.MetadataValue.md(markdown_table(curve, max_rows=100)),
            **({"curve_plot": dg.MetadataValue.md(png_markdown(curve_plot(meta["curve"], f"{cfg.name}: {name}"),
                                                               "training curve"))}
               if meta["curve"] and meta["curve"][0]["loss"] is not None else {}),
            "config": dg.MetadataValue.json({"model": meta["model_config"], "train": meta["train_config"]}),
        })

    return _asset


trained_models = [_training_asset(name) for name in MODELS]


class EvaluationRunConfig(dg.Config):
    mask_history: int | None = None  # exclude the last n history items from the ranking
    device: str = "auto"


@dg.asset(deps=trained_models, partitions_def=dataset_partitions, group_name=GROUP, kinds={"torch", "parquet"},
          description="Full-ranking test HR/NDCG@{5,10,20} and MRR of every model, per target behavior, with the "
                      "leakage filter and without it side by side; the dataset's leaderboard. A checkpoint whose "
                      "data changed since training fails here instead of scoring new data with an old model.")
@synced
def evaluation(context: dg.AssetExecutionContext, settings: PipelineSettings, config: EvaluationRunConfig) -> dg.MaterializeResult:
    cfg = settings.dataset(context.partition_key)
    opts = TrainingOptions.of(cfg)
    mask = opts.mask_history if config.mask_history is None else config.mask_history
    table = materialize_evaluation(cfg, settings.paths(cfg.name), list(MODELS), protocol=opts.protocol,
                                   mask_history=mask, device=config.device, log=context.log.info)
    board = leaderboard(table).with_columns(pl.col(pl.Float64).round(4))
    return dg.MaterializeResult(metadata={
        "leaderboard": dg.MetadataValue.md(markdown_table(board)),
        "mask_history": mask, "tie_policy": "pessimistic (equal scores rank ahead of the target)",
        "path": dg.MetadataValue.path(str(settings.paths(cfg.name).evaluation_leaderboard())),
    })


@dg.asset_check(asset=evaluation, blocking=True, partitions_def=dataset_partitions,
                description="pandera EvaluationResults (schemas/training.py); every model scored on the same "
                            "test examples, with and without the filter.")
@synced
def evaluation_contract(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    path = settings.paths(context.partition_key).evaluation_results()
    r = validate_parquet(path, EvaluationResults)
    if r.passed:
        overall = pl.read_parquet(path).filter(pl.col("target_behavior") == "all")
        sizes = overall.group_by("filter").agg(pl.col("n").n_unique().alias("sizes"), pl.col("model").n_unique().alias("models"))
        bad = sizes.filter((pl.col("sizes") != 1) | (pl.col("models") != len(MODELS)))
        if bad.height or sizes.height != 2:
            return dg.AssetCheckResult(passed=False, description=f"models were not scored on the same examples: "
                                                                 f"{json.dumps(sizes.to_dicts())}")
    return check_result(r)


@dg.asset(deps=[evaluation], group_name=GROUP, kinds={"parquet", "markdown"},
          description="Every dataset's evaluation in one table (data/outputs/leaderboard.{parquet,md}). One "
                      "partition: it is rebuilt from every dataset's evaluation results on disk, so two datasets "
                      "refreshed at once cannot drop each other's rows.")
@synced(scopes=lambda context, settings: [
    *(f"outputs/{name}/evaluation" for name in settings.registry().names), "outputs/leaderboard"])
def cross_dataset_leaderboard(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    table = update_global_leaderboard(settings.data_root_path())
    if table.is_empty():
        return dg.MaterializeResult(metadata={"datasets": 0})
    board = leaderboard(table).with_columns(pl.col(pl.Float64).round(4))
    return dg.MaterializeResult(metadata={
        "datasets": table["dataset"].n_unique(),
        "leaderboard": dg.MetadataValue.md(markdown_table(board, max_rows=100)),
        "path": dg.MetadataValue.path(str(global_leaderboard(settings.data_root_path(), "md"))),
    })


training_assets = [*trained_models, evaluation, cross_dataset_leaderboard]
training_checks = [evaluation_contract]
