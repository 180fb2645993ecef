"""File-level orchestration of training and evaluation (what the Dagster assets call; no Dagster here).

Writes, through ``pipelines.layout``: per protocol and model the checkpoint (best weights, model and
run config, data version) and its readable run record with the training curve; per dataset the
evaluation results (one row per model, filter and breakdown) and leaderboard; across datasets the
global leaderboard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from pipelines.layout import evaluation_results_of_every_dataset, global_leaderboard
from pipelines.registry import DatasetConfig, RegistryError, stage_options
from pipelines.reporting import Log, markdown_table
from pipelines.sequences import model_ready
from pipelines.sequences.options import SequenceOptions
from pipelines.sequences.splits import check_protocol, default_protocol
from pipelines.sequences.stage import ROWS_PER_SHARD
from pipelines.storage import DatasetPaths, read_user_range, user_shards, write_parquet_atomic, write_text_atomic
from pipelines.training.configs import BehaviorSetConfig, BladeConfig, GenerativeSIDConfig, SASRecConfig, TrainConfig

if TYPE_CHECKING:  # torch is imported where a model is built, trained or scored, not by the code location
    from pipelines.training.models.base import DatasetInfo, Recommender

KS = (5, 10, 20)


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a model builder may read besides its own hyperparameters."""

    info: DatasetInfo
    paths: DatasetPaths
    cfg: DatasetConfig
    protocol: str
    seed: int


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registered model: everything the stage, the assets and the registry validation need.

    ``config``: the model's config dataclass (``pipelines.training.configs``, torch-free; None for the
    count-based baselines);
    ``build``: (model params, context) -> model; ``upstream``: assets the training asset depends on
    besides ``model_ready_sequences``; ``defaults``: hyperparameters (model and TrainConfig fields)
    below the registry's and the run config's; ``data_files``: files besides the model-ready arrays
    that the checkpoint's data version covers."""

    description: str
    build: Callable[[dict[str, Any], BuildContext], Recommender]
    config: type | None = None
    upstream: tuple[str, ...] = ()
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_files: Callable[[DatasetPaths], list[Path]] = lambda paths: []


def _popularity(params: dict[str, Any], ctx: BuildContext) -> Recommender:
    from pipelines.training.models.popularity import Popularity
    return Popularity(ctx.info)


def _recent_history(params: dict[str, Any], ctx: BuildContext) -> Recommender:
    from pipelines.training.models.recent_history import RecentHistory
    return RecentHistory(ctx.info)


def _sasrec(params: dict[str, Any], ctx: BuildContext) -> Recommender:
    from pipelines.training.models.sasrec import SASRec
    return SASRec(ctx.info, SASRecConfig(**params))


def _training_statistics(ctx: BuildContext) -> tuple[dict[str, Any], list[int]]:
    """The augmentation stage's statistics of the training split and the auxiliary behaviors' indices."""
    stats = json.loads(ctx.paths.statistics(ctx.protocol).read_text())
    return stats, [ctx.cfg.behavior_names.index(b) for b in ctx.cfg.auxiliary]


def _behavior_set(params: dict[str, Any], ctx: BuildContext) -> Recommender:
    from pipelines.training.models.behavior_set import BehaviorSetModel, default_augment
    mcfg = BehaviorSetConfig(**params)
    augment = None
    if mcfg.contrastive_weight > 0:
        stats, aux = _training_statistics(ctx)
        augment = default_augment(np.array(stats["M"]), np.array(stats["mask_prob"]), aux,
                                  mcfg.augmentation_ratio, ctx.seed)
    return BehaviorSetModel(ctx.info, mcfg, augment=augment)


def _blade(params: dict[str, Any], ctx: BuildContext) -> Recommender:
    from pipelines.training.models.blade import Blade, make_augment
    mcfg = BladeConfig(**params)
    augment = None
    if mcfg.contrastive_weight > 0:
        stats, aux = _training_statistics(ctx)
        augment = make_augment(mcfg.augmentation, np.array(stats["M_prob"]), np.array(stats["mask_prob"]), aux,
                               mcfg.augmentation_ratio, ctx.seed)
    return Blade(ctx.info, mcfg, augment=augment)


def _generative_sid(params: dict[str, Any], ctx: BuildContext) -> Recommender:
    from pipelines.training.models.generative_sid import GenerativeSID
    codes, sizes = semantic_id_codes(ctx.paths)
    return GenerativeSID(ctx.info, codes, sizes, GenerativeSIDConfig(**params))


# The one table of models: adding a model is one entry here (the assets, the registry validation, the
# Dagster run config's defaults and the evaluation all read it). Order = leaderboard / asset order.
# Defaults are tuned on the generated datasets (small: ~1.5k users). Epoch counts, not wall-clock budgets,
# so the same inputs give the same checkpoints (max_minutes exists for interactive runs). Registry
# ``stages.training.models.<model>`` and the Dagster run config override them.
MODEL_SPECS: dict[str, ModelSpec] = {
    "popularity": ModelSpec("Most popular items of the training sequences (no training).", _popularity),
    "recent_history": ModelSpec("The leak-exploiting heuristic: the user's own history, most recent first "
                                "(no training).", _recent_history),
    "sasrec": ModelSpec("SASRec: causal self-attention over the item sequence, full-softmax next-item loss.",
                        _sasrec, SASRecConfig, defaults={"epochs": 30, "patience": 5}),
    "behavior_set": ModelSpec(
        "Behavior-set model of the EIDP/BLADE family (neither EIDP nor BLADE): personalized set embeddings, "
        "behavior-pair attention bias, target-behavior conditioning, richness-weighted BCE (optional "
        "contrastive loss).", _behavior_set, BehaviorSetConfig, upstream=("behavior_statistics",),
        defaults={"epochs": 20, "patience": 5, "min_epochs": 8, "batch_size": 32}),
    "generative_sid": ModelSpec(
        "Generative semantic-ID model: decoder-only transformer over SID and behavior tokens, constrained beam "
        "search over valid SIDs.", _generative_sid, GenerativeSIDConfig, upstream=("semantic_ids",),
        defaults={"epochs": 20, "patience": 5, "min_epochs": 8, "learning_rate": 3e-3, "batch_size": 64},
        data_files=lambda paths: [paths.semantic_ids()]),
    "blade": ModelSpec(
        "BLADE (AAAI 2026): early fusion + behavior-aware self-attention and behavior-guided mixture of experts, "
        "next-behavior cross-attention; richness-weighted BCE plus contrastive loss over behavior-level "
        "augmentations (paper defaults: d = 32, 2 blocks, 2 heads, 4 experts).", _blade, BladeConfig,
        upstream=("behavior_statistics",),
        # more BCE negatives than the paper's one: with one, the model sits far longer on the plateau of
        # the small generated datasets (paper settings pass negatives = 1 explicitly); a higher learning
        # rate than Adam's usual 1e-3 for the same reason (README: validation curves on generated data)
        defaults={"epochs": 10, "patience": 3, "min_epochs": 3, "batch_size": 64, "negatives": 100,
                  "learning_rate": 5e-3}),
}
MODELS = tuple(MODEL_SPECS)
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {name: spec.defaults for name, spec in MODEL_SPECS.items() if spec.defaults}


class TrainingOptions(BaseModel):
    """``datasets.<name>.stages.training`` in the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: str | None = Field(
        default=None, description="The split models train and are evaluated on (default: `released` for split-file "
                                  "datasets, `leave_one_out` otherwise).")
    mask_history: int = Field(default=0, ge=0, description="Exclude the last n history items from the ranking (0: none).")
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Hyperparameters per model.")

    @classmethod
    def of(cls, cfg: DatasetConfig) -> "TrainingOptions":
        opts = stage_options(cls, cfg, "training", "training")
        unknown = sorted(set(opts.models) - set(MODELS))
        if unknown:
            raise RegistryError(f"datasets.{cfg.name}.stages.training.models: unknown model(s) {unknown}; known: {MODELS}")
        protocol = check_protocol(cfg, opts.protocol or default_protocol(cfg), "stages.training.protocol")
        return opts.model_copy(update={"protocol": protocol})

    def params(self, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Hyperparameters of one model: built-in defaults < registry < ``overrides`` (run config)."""
        return DEFAULT_PARAMS.get(name, {}) | self.models.get(name, {}) | (overrides or {})


def model_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODEL_SPECS[name]


def model_config_class(name: str) -> type | None:
    """The config dataclass of a model (None for the count-based baselines)."""
    return model_spec(name).config


def split_configs(name: str, params: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig]:
    """Split flat hyperparameters into the model's config fields and the TrainConfig; unknown keys fail."""
    cls = model_config_class(name)
    model_fields = {f.name for f in dataclasses.fields(cls)} if cls else set()
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(params) - model_fields - train_fields)
    if unknown:
        raise ValueError(f"{name}: unknown hyperparameter(s) {unknown}; model fields {sorted(model_fields)}, "
                         f"training fields {sorted(train_fields)}")
    return ({k: v for k, v in params.items() if k in model_fields},
            TrainConfig(**{k: v for k, v in params.items() if k in train_fields}))


def model_ready_dir(paths: DatasetPaths, protocol: str) -> Path:
    return paths.model_ready_dir(protocol)


def load_arrays(paths: DatasetPaths, protocol: str, role: str) -> dict[str, np.ndarray]:
    path = paths.model_ready(protocol, role)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: materialize model_ready_sequences for protocol '{protocol}' first")
    return model_ready.load(path)


def dataset_info(paths: DatasetPaths, cfg: DatasetConfig, max_len: int) -> DatasetInfo:
    from pipelines.training.models.base import DatasetInfo

    count = lambda f: pl.scan_parquet(f).select(pl.len()).collect().item()  # noqa: E731
    return DatasetInfo(n_items=count(paths.item_id_map()), n_users=count(paths.user_id_map()),
                       n_behaviors=len(cfg.behaviors), max_len=max_len)


def data_version(paths: DatasetPaths, protocol: str, extra: list[Path] = ()) -> str:
    """sha256 over the model-ready arrays (and e.g. the SIDs) a model was trained on."""
    h = hashlib.sha256()
    for f in [*(paths.model_ready(protocol, r) for r in ("train", "valid", "test")), *extra]:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def semantic_id_codes(paths: DatasetPaths) -> tuple[np.ndarray, list[int]]:
    """Codes [n_items, D] (semantic levels + dedup) and the size of each level, from the SIDs asset."""
    if not paths.semantic_ids().is_file():
        raise FileNotFoundError(f"{paths.semantic_ids()} not found: materialize semantic_ids first")
    table = pl.read_parquet(paths.semantic_ids()).sort("item_id")
    build = json.loads(paths.semantic_id_build().read_text())
    codes = np.stack(table["codes"].to_numpy())
    if build["dedup"]:
        codes = np.concatenate([codes, table["dedup"].to_numpy()[:, None]], axis=1)
    return codes.astype(np.int64), [int(s) for s in build["sizes"]]


def build_model(name: str, info: DatasetInfo, model_params: dict[str, Any], paths: DatasetPaths,
                cfg: DatasetConfig, protocol: str, seed: int) -> Recommender:
    import torch

    spec = model_spec(name)
    torch.manual_seed(seed)  # weights and the behavior-set models' negative samplers
    return spec.build(model_params, BuildContext(info, paths, cfg, protocol, seed))


def run_dir(paths: DatasetPaths, protocol: str, name: str) -> Path:
    return paths.run_dir(protocol, name)


def materialize_training(cfg: DatasetConfig, paths: DatasetPaths, name: str, params: dict[str, Any], *,
                         protocol: str = "leave_one_out", log: Log = print) -> dict[str, Any]:
    """Train one model on one split's model-ready arrays; write its checkpoint and run.json."""
    from pipelines.training.trainer import save_checkpoint, train

    model_params, train_cfg = split_configs(name, params)
    train_arrays, valid_arrays = load_arrays(paths, protocol, "train"), load_arrays(paths, protocol, "valid")
    info = dataset_info(paths, cfg, train_arrays["items"].shape[1])
    model = build_model(name, info, model_params, paths, cfg, protocol, train_cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg.name}/{protocol}/{name}: {n_params:,} parameters; {len(train_arrays['user_ids']):,} training "
        f"sequences, {len(valid_arrays['user_ids']):,} validation examples")
    result = train(model, train_arrays, valid_arrays, cfg.behavior_names, train_cfg, log=log)
    extra = model_spec(name).data_files(paths)
    cls = model_config_class(name)
    resolved = dataclasses.asdict(cls(**model_params)) if cls else {}  # every field, defaults included
    meta = {"dataset": cfg.name, "protocol": protocol, "model": name, "model_config": resolved,
            "train_config": dataclasses.asdict(train_cfg), "info": dataclasses.asdict(info),
            "data_version": data_version(paths, protocol, extra), "parameters": n_params,
            "device": str(model.device), "best_epoch": result.best_epoch, "best_valid": result.best_valid,
            "stopped": result.stopped, "train_seconds": result.train_seconds, "curve": result.curve}
    record = reproducible(meta)
    save_checkpoint(paths.checkpoint(protocol, name), model, record)
    write_text_atomic(json.dumps(record, indent=2, default=str), paths.run_record(protocol, name))
    return meta


TIMINGS = ("train_seconds", "seconds", "sequences_per_s")


def reproducible(meta: dict[str, Any]) -> dict[str, Any]:
    """The run's record without wall-clock figures: the same inputs give the same checkpoint and
    run.json bytes; timings go to the Dagster metadata and the log instead."""
    out = {k: v for k, v in meta.items() if k not in TIMINGS}
    out["curve"] = [{k: v for k, v in row.items() if k not in TIMINGS} for row in meta.get("curve", [])]
    return out


class StaleModelError(RuntimeError):
    """A checkpoint was trained on other data than the dataset holds now."""


def load_trained(paths: DatasetPaths, cfg: DatasetConfig, protocol: str, name: str,
                 device: str = "cpu") -> tuple[Recommender, dict[str, Any]]:
    """Load a checkpoint; fails when the data it was trained on changed since (never scores new data
    with an old model: re-materialize ``trained_<name>``)."""
    from pipelines.training.models.base import DatasetInfo
    from pipelines.training.trainer import load_checkpoint

    ckpt = load_checkpoint(paths.checkpoint(protocol, name))
    now = data_version(paths, protocol, model_spec(name).data_files(paths))
    if ckpt.get("data_version") != now:
        raise StaleModelError(
            f"{cfg.name}/{protocol}/{name}: the checkpoint was trained on data version {ckpt.get('data_version')}, "
            f"but the dataset's data is now {now}; re-materialize trained_{name} for this dataset before evaluating")
    info = DatasetInfo(**ckpt["info"])
    model = build_model(name, info, ckpt["model_config"], paths, cfg, protocol, ckpt["train_config"]["seed"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device), ckpt


# evaluation ----------------------------------------------------------------------------------------

def unfiltered_test_arrays(cfg: DatasetConfig, paths: DatasetPaths, protocol: str,
                           rows_per_shard: int = ROWS_PER_SHARD) -> dict[str, np.ndarray]:
    """Test arrays built from the examples *before* the leakage filter (same targets, leaky histories)."""
    max_len = SequenceOptions.of(cfg).max_len
    parts = []
    for lo, hi in user_shards(paths.steps(), rows_per_shard):
        steps = read_user_range(paths.steps(), lo, hi)
        ex = read_user_range(paths.examples(protocol, filtered=False), lo, hi) \
            .filter(pl.col("role") == "test")
        parts.append(model_ready.build(steps, ex, max_len))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def materialize_evaluation(cfg: DatasetConfig, paths: DatasetPaths, models: list[str], *,
                           protocol: str = "leave_one_out", mask_history: int = 0, device: str = "auto",
                           log: Log = print) -> pl.DataFrame:
    """Full-ranking test metrics of every trained model, with and without the leakage filter."""
    from pipelines.training.evaluate import evaluate
    from pipelines.training.models.base import pick_device

    dev = pick_device(device)
    filtered = load_arrays(paths, protocol, "test")
    unfiltered = unfiltered_test_arrays(cfg, paths, protocol)
    opts = SequenceOptions.of(cfg)
    rows = []
    for name in models:
        model, ckpt = load_trained(paths, cfg, protocol, name, device=str(dev))
        for label, arrays in ((opts.leakage_filter, filtered), ("off", unfiltered)):
            start = time.perf_counter()
            res = evaluate(model, arrays, cfg.behavior_names, mask_history=mask_history, ks=KS,
                           beam_k=max(KS) + mask_history if not model.full_ranking else None)
            seconds = time.perf_counter() - start  # logged, not stored: results are data (same inputs, same bytes)
            base = {"dataset": cfg.name, "protocol": protocol, "model": name, "filter": label,
                    "mask_history": mask_history, "data_version": ckpt["data_version"]}
            rows.append(base | {"target_behavior": "all"} | res.metrics)
            rows.extend(base | {"target_behavior": b} | m for b, m in res.per_behavior.items())
            log(f"{cfg.name}/{protocol}/{name} [filter {label}]: NDCG@10 {res.metrics['ndcg@10']:.4f}, "
                f"HR@10 {res.metrics['hr@10']:.4f}, MRR {res.metrics['mrr']:.4f} over {res.metrics['n']:,} "
                f"examples ({seconds:.2f} s)")
    table = pl.DataFrame(rows).with_columns(pl.col("n").cast(pl.Int64))
    write_parquet_atomic(table, paths.evaluation_results())
    write_text_atomic(leaderboard_markdown(table, f"Leaderboard: {cfg.name}"), paths.evaluation_leaderboard())
    return table


def leaderboard(table: pl.DataFrame) -> pl.DataFrame:
    """One row per (dataset, protocol, model): test metrics after the filter and without it, side by side."""
    overall = table.filter(pl.col("target_behavior") == "all")
    filtered = overall.filter(pl.col("filter") != "off")
    off = overall.filter(pl.col("filter") == "off").select(
        "dataset", "protocol", "model", *(pl.col(m).alias(f"{m} (unfiltered)") for m in ("ndcg@10", "hr@10", "mrr")))
    return (filtered.select("dataset", "protocol", "model", "filter", "n", "hr@5", "hr@10", "hr@20", "ndcg@5",
                            "ndcg@10", "ndcg@20", "mrr")
            .join(off, on=["dataset", "protocol", "model"], how="left")
            .sort(["dataset", "protocol", "ndcg@10"], descending=[False, False, True]))


def leaderboard_markdown(table: pl.DataFrame, title: str) -> str:
    board = leaderboard(table).with_columns(pl.col(pl.Float64).round(4))
    return (f"# {title}\n\nFull ranking over all items; ties count against the target (pessimistic); "
            "history items are not masked unless `mask_history` says so. `filter` is the leakage filter "
            "applied to the test histories; the `(unfiltered)` columns score the same targets with the leak "
            "left in.\n\n" + markdown_table(board, max_rows=200) + "\n")


def update_global_leaderboard(data_root: Path) -> pl.DataFrame:
    """Concatenate every dataset's evaluation results into data/outputs/leaderboard.{parquet,md}."""
    files = evaluation_results_of_every_dataset(data_root)
    table = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()
    if table.height:
        write_parquet_atomic(table, global_leaderboard(data_root, "parquet"))
        write_text_atomic(leaderboard_markdown(table, "Leaderboard: all datasets"), global_leaderboard(data_root, "md"))
    return table
