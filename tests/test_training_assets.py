"""The whole graph from raw logs to the leaderboard, on the generated Taobao default with fixed seeds."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from assets.demo import DEMO_TRAINING
from conftest import materialize_project
from pipelines.storage import DatasetPaths
from pipelines.training.evaluate import evaluate
from pipelines.training.stage import MODELS, TrainingOptions, load_arrays, load_trained, split_configs

TRAINED = ("sasrec", "behavior_set", "generative_sid")


@pytest.fixture(scope="module")
def taobao(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    # `make demo`'s budgets (assets/demo.py: a few epochs at small batches; no wall-clock cap, so the
    # result does not depend on machine speed): the test holds the demo's claim. On this data they gave
    # test NDCG@10 sasrec 0.167, behavior_set 0.167, generative_sid 0.146 (0.145 with two torch threads:
    # another rounding) against popularity's 0.072 (the test asks for 0.108), the registry's defaults
    # 0.147 / 0.167 / 0.156. blade is not among the models asserted to beat popularity here (one
    # epoch; see its own tests).
    materialize_project("taobao", root, training=DEMO_TRAINING)
    return root


def overall(root, model: str, filter_: str) -> dict:
    table = pl.read_parquet(root / "outputs" / "taobao" / "evaluation" / "results.parquet")
    row = table.filter((pl.col("model") == model) & (pl.col("filter") == filter_) & (pl.col("target_behavior") == "all"))
    assert row.height == 1
    return row.row(0, named=True)


def test_every_trained_model_beats_popularity_by_a_clear_margin(taobao):
    pop = overall(taobao, "popularity", "all")["ndcg@10"]
    scores = {m: overall(taobao, m, "all")["ndcg@10"] for m in TRAINED}
    print(f"test NDCG@10 after the filter: popularity {pop:.4f}, " + ", ".join(f"{m} {s:.4f}" for m, s in scores.items()))
    for model, score in scores.items():
        assert score >= 1.5 * pop, f"{model}: NDCG@10 {score:.4f} vs popularity {pop:.4f}"


def test_the_leak_exploiting_heuristic_collapses_after_filtering(taobao):
    off, filtered = overall(taobao, "recent_history", "off"), overall(taobao, "recent_history", "all")
    print(f"recent_history NDCG@10 {off['ndcg@10']:.4f} unfiltered -> {filtered['ndcg@10']:.4f} filtered")
    assert off["ndcg@10"] > 0.4 and filtered["ndcg@10"] < off["ndcg@10"] / 5
    assert off["n"] == filtered["n"]  # the same targets, only the histories differ


def test_leaderboard_files_and_per_behavior_rows(taobao):
    out = taobao / "outputs"
    board = pl.read_parquet(out / "leaderboard.parquet")
    assert set(board["model"]) == set(MODELS)
    assert set(board["target_behavior"]) == {"all", "buy"}
    md = (out / "leaderboard.md").read_text()
    assert "pessimistic" in md and "ndcg@10 (unfiltered)" in md


def test_checkpoints_carry_config_curve_and_data_version_and_reload_to_the_same_scores(taobao, registry):
    cfg = registry.datasets["taobao"]
    paths = DatasetPaths(taobao, "taobao")
    run = json.loads((taobao / "outputs/taobao/training/leave_one_out/sasrec/run.json").read_text())
    assert run["model_config"]["hidden"] == 64 and run["train_config"]["seed"] == 0 and len(run["data_version"]) == 16
    assert run["curve"] and run["best_epoch"] >= 1 and run["stopped"] in ("epochs", "patience", "max_minutes")
    assert max(r["valid_ndcg@10"] for r in run["curve"]) == pytest.approx(run["best_valid"]["ndcg@10"])
    model, _ = load_trained(paths, cfg, "leave_one_out", "sasrec")
    res = evaluate(model, load_arrays(paths, "leave_one_out", "test"), cfg.behavior_names)
    assert res.metrics["ndcg@10"] == pytest.approx(overall(taobao, "sasrec", "all")["ndcg@10"], abs=1e-9)


def test_hyperparameters_are_validated(registry):
    assert TrainingOptions.of(registry.datasets["taobao"]).params("generative_sid", {"epochs": 2})["epochs"] == 2
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        split_configs("sasrec", {"hiden": 32})
    model_params, train_cfg = split_configs("sasrec", {"hidden": 32, "epochs": 3})
    assert model_params == {"hidden": 32} and train_cfg.epochs == 3


def test_models_train_on_cpu_and_report_the_device(taobao):
    run = json.loads((taobao / "outputs/taobao/training/leave_one_out/behavior_set/run.json").read_text())
    assert run["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert np.isfinite([r["loss"] for r in run["curve"]]).all()
