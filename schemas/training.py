"""Data contracts for evaluation results (checkpoints are torch files, described by run.json)."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl


class EvaluationResults(pa.DataFrameModel):
    """One row per (dataset, protocol, model, leakage filter, target behavior): full-ranking test metrics."""

    dataset: pl.String
    protocol: pl.String
    model: pl.String
    filter: pl.String = pa.Field(isin=["off", "last", "all", "merge"])
    mask_history: pl.Int64 = pa.Field(ge=0)
    target_behavior: pl.String
    n: pl.Int64 = pa.Field(ge=0)
    hr_5: pl.Float64 = pa.Field(alias="hr@5", ge=0, le=1)
    hr_10: pl.Float64 = pa.Field(alias="hr@10", ge=0, le=1)
    hr_20: pl.Float64 = pa.Field(alias="hr@20", ge=0, le=1)
    ndcg_5: pl.Float64 = pa.Field(alias="ndcg@5", ge=0, le=1)
    ndcg_10: pl.Float64 = pa.Field(alias="ndcg@10", ge=0, le=1)
    ndcg_20: pl.Float64 = pa.Field(alias="ndcg@20", ge=0, le=1)
    mrr: pl.Float64 = pa.Field(ge=0, le=1)

    class Config:
        strict = False
        unique = ["dataset", "protocol", "model", "filter", "target_behavior"]
