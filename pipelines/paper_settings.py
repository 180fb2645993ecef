"""Published paper settings and figures: what a paper trained with, and how to print ours beside it.

``PAPER_SETTINGS`` is the one table of settings: a new paper is one entry. The runner that trains a
dataset at a setting is ``python -m assets.paper_settings_run`` (it needs the Dagster definitions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.registry import DatasetConfig


@dataclass(frozen=True)
class Published:
    model: str  # the paper's name for it
    ours: str | None  # our model it is compared with (None: no counterpart yet)
    metrics: dict[str, float]  # e.g. {"ndcg@10": 0.0104, "hr@10": 0.0204}
    note: str = ""


@dataclass(frozen=True)
class PaperSetting:
    name: str
    source: str
    protocol: str  # the split the paper's figures use
    max_len: int
    mask_history: int  # history items excluded from the full ranking
    masking_note: str
    models: dict[str, dict[str, Any]]  # our model -> hyperparameters (run config of trained_<model>)
    published: list[Published] = field(default_factory=list)
    dataset_hint: str = ""


PAPER_SETTINGS: dict[str, PaperSetting] = {s.name: s for s in (
    PaperSetting(
        name="blade_table1",
        source="BLADE (Li et al.), Table 1, QK-Video: full ranking over all items; d = 32 and L = 50 for all models",
        protocol="released", max_len=50, mask_history=50,
        masking_note="the released EIDP/BLADE evaluation code excludes the user's last 50 history items from the "
                     "ranking; we do the same (mask_history = 50), ties count against the target",
        models={"sasrec": {"hidden": 32, "blocks": 2, "heads": 1, "dropout": 0.2},
                "behavior_set": {"hidden": 32, "blocks": 2, "heads": 2, "dropout": 0.2},
                # the paper's grid: blocks {2,3}, heads {2,4,8}, dropout 0.2-0.5, experts {4,6,8}; lambda ~0.1
                "blade": {"hidden": 32, "blocks": 2, "heads": 2, "dropout": 0.2, "experts": 4, "negatives": 1,
                          "contrastive_weight": 0.1, "augmentation": "mixed", "exclude_history_negatives": True}},
        published=[
            Published("SASRec", "sasrec", {"ndcg@10": 0.0104, "hr@10": 0.0204}),
            Published("EIDP", "behavior_set", {"ndcg@10": 0.0137, "hr@10": 0.0291},
                      note="our behavior_set model is of the EIDP/BLADE family, not EIDP itself"),
            Published("BLADE", "blade", {"ndcg@10": 0.0127, "hr@10": 0.0256},
                      note="the paper reports the best of its three augmentations; ours mixes them (one run)"),
        ],
        dataset_hint="a behavior_set_splits dataset holding the QK-Video release files"),
)}


def check_applicable(setting: PaperSetting, cfg: DatasetConfig, max_len: int, protocol: str) -> list[str]:
    """What differs between the dataset's configuration and the paper's setting (empty: nothing)."""
    problems = []
    if protocol != setting.protocol:
        problems.append(f"stages.training.protocol is '{protocol}', the paper's figures use '{setting.protocol}'")
    if max_len != setting.max_len:
        problems.append(f"stages.sequences.max_len is {max_len}, the paper uses L = {setting.max_len}")
    return problems


def run_config(setting: PaperSetting, data_root: str | None, epochs: int | None) -> dict[str, Any]:
    ops: dict[str, Any] = {f"trained_{m}": {"config": params | ({"epochs": epochs} if epochs else {})}
                           for m, params in setting.models.items()}
    ops["evaluation"] = {"config": {"mask_history": setting.mask_history}}
    config: dict[str, Any] = {"ops": ops}
    if data_root:
        config["resources"] = {"settings": {"config": {"data_root": data_root}}}
    return config


def comparison(setting: PaperSetting, results: Any) -> Any:
    """One row per (our model, published model): our test figures (leakage filter applied) beside theirs."""
    import polars as pl

    ours = results.filter((pl.col("target_behavior") == "all") & (pl.col("filter") != "off"))
    rows = []
    for model in ours["model"].to_list():
        mine = ours.filter(pl.col("model") == model).row(0, named=True)
        pubs = [p for p in setting.published if p.ours == model] or [None]
        for p in pubs:
            rows.append({
                "our model": model, "NDCG@10": round(mine["ndcg@10"], 4), "HR@10": round(mine["hr@10"], 4),
                "published model": p.model if p else "", "published NDCG@10": p.metrics.get("ndcg@10") if p else None,
                "published HR@10": p.metrics.get("hr@10") if p else None, "note": p.note if p else ""})
    return pl.DataFrame(rows).sort("NDCG@10", descending=True, maintain_order=True)
