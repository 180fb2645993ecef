"""Options of the augmentation stage, read from a registry entry's `stages.augmentation` mapping."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pipelines.registry import DatasetConfig, stage_options


class AugmentationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_exponent: float = Field(default=0.7, gt=0, description="c in BLADE's masking probabilities m^c / sum(m^c).")
    sequential_views: int = Field(default=3, ge=1, description="GAMER-style augmented views of training sequences.")
    seed: int = Field(default=0, description="Seed of the sequential views.")

    @classmethod
    def of(cls, cfg: DatasetConfig) -> "AugmentationOptions":
        return stage_options(cls, cfg, "augmentation", "augmentation")
