"""Paper settings: the run config the command uses is valid for the project's job, the comparison
pairs our models with the published ones, and a dataset that differs from the paper is refused."""

from __future__ import annotations

import dagster as dg
import polars as pl

from pipelines.paper_settings import PAPER_SETTINGS, check_applicable, comparison, run_config


def test_run_config_is_valid_for_the_project_job() -> None:
    from assets.definitions import defs

    setting = PAPER_SETTINGS["blade_table1"]
    config = run_config(setting, "/tmp/somewhere", epochs=3)
    assert config["ops"]["trained_sasrec"]["config"] == {"hidden": 32, "blocks": 2, "heads": 1, "dropout": 0.2,
                                                         "epochs": 3}
    assert config["ops"]["evaluation"]["config"] == {"mask_history": 50}
    dg.validate_run_config(defs.resolve_job_def("materialize_all"), config)  # raises on an unknown key


def test_comparison_puts_published_figures_beside_ours() -> None:
    setting = PAPER_SETTINGS["blade_table1"]
    rows = []
    for model, ndcg in (("sasrec", 0.02), ("behavior_set", 0.03), ("blade", 0.04), ("popularity", 0.01)):
        for flt in ("all", "off"):
            rows.append({"model": model, "filter": flt, "target_behavior": "all", "ndcg@10": ndcg, "hr@10": 2 * ndcg})
    table = comparison(setting, pl.DataFrame(rows))
    got = {(r["our model"], r["published model"]): r["published NDCG@10"] for r in table.iter_rows(named=True)}
    assert got == {("behavior_set", "EIDP"): 0.0137, ("blade", "BLADE"): 0.0127, ("sasrec", "SASRec"): 0.0104,
                   ("popularity", ""): None}
    assert setting.models["blade"]["hidden"] == 32 and setting.max_len == 50


def test_a_dataset_unlike_the_papers_is_refused(registry) -> None:
    setting = PAPER_SETTINGS["blade_table1"]
    cfg = registry.get("blade_qk_video")
    assert check_applicable(setting, cfg, 50, "released") == []
    problems = check_applicable(setting, cfg, 20, "eidp")
    assert any("max_len is 20" in p for p in problems) and any("'eidp'" in p for p in problems)
