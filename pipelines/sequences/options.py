"""Options of the sequence stage, read from a registry entry's `stages.sequences` mapping."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.registry import DatasetConfig, RegistryError, stage_options


class SequenceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # cleaning
    time_from: date | None = Field(default=None, description="Keep events on or after this (local) date.")
    time_to: date | None = Field(default=None, description="Keep events before this (local) date.")
    drop_exposures: bool = Field(default=True, description="Drop rows with no behavior (flag formats).")
    min_user_steps: int = Field(default=0, ge=0, description="Iterative k-core: users with fewer steps are dropped.")
    min_item_steps: int = Field(default=0, ge=0, description="Iterative k-core: items with fewer steps are dropped.")
    # behavior sets
    merge_rule: Literal["same_timestamp", "consecutive", "window", "none"] = Field(
        default="same_timestamp",
        description="How events of one user and item become one step: identical timestamp; consecutive "
        "in the user's sequence; within `merge_window_seconds` of the previous event on that item; or never.",
    )
    merge_window_seconds: float = Field(default=60.0, gt=0)
    step_time: Literal["first", "last"] = Field(default="first", description="A merged step's time.")
    # sessions
    session_gap_minutes: float = Field(default=60.0, gt=0)
    # splits and leakage
    target_behaviors: list[str] | None = Field(
        default=None, description="Targets of the leave-one-out and temporal splits (default: the registry's targets)."
    )
    leakage_filter: Literal["off", "last", "all", "merge"] = Field(
        default="all", description="How evaluation histories are cleaned of the same-item leak."
    )
    filter_training_targets: bool = Field(
        default=False, description="Also apply the leakage filter to the training examples' histories."
    )
    max_len: int = Field(default=50, ge=1, description="History truncation window (model-ready length).")
    temporal_valid_quantile: float = Field(default=0.8, gt=0, lt=1, description="Valid cut: quantile of step times.")
    temporal_test_quantile: float = Field(default=0.9, gt=0, lt=1, description="Test cut: quantile of step times.")
    # exports
    recbole_benchmark: bool = Field(default=True, description=(
        "Write RecBole benchmark files (train/valid/test .inter) of `recbole_protocol`; the train file holds every "
        "training prefix (up to max_len tokens each), so switch it off for very large datasets."))
    recbole_protocol: str | None = Field(default=None, description=(
        "Protocol of the RecBole benchmark files (default: released for split-file datasets, else leave_one_out)."))

    @classmethod
    def of(cls, cfg: DatasetConfig) -> "SequenceOptions":
        opts = stage_options(cls, cfg, "sequences", "sequence")
        for b in opts.target_behaviors or []:
            if b not in cfg.behavior_names:
                raise RegistryError(
                    f"datasets.{cfg.name}.stages.sequences.target_behaviors: behavior '{b}' is not in the "
                    f"dataset's vocabulary {cfg.behavior_names}")
        if opts.recbole_protocol is not None:
            from pipelines.sequences.splits import check_protocol

            check_protocol(cfg, opts.recbole_protocol, "stages.sequences.recbole_protocol")
        if opts.temporal_valid_quantile >= opts.temporal_test_quantile:
            raise RegistryError(f"datasets.{cfg.name}.stages.sequences: temporal_valid_quantile must be below "
                                "temporal_test_quantile")
        return opts
