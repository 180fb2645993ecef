"""Data contracts for the sequence stage: steps, split roles, evaluation examples, leakage audit."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas import columns as c


class BehaviorSteps(pa.DataFrameModel):
    """One row per step (a user's merged behavior set on one item), in sequence order."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID)
    step: pl.UInt32 = pa.Field(ge=0)
    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID)
    behaviors: pl.UInt16 = pa.Field(alias=c.BEHAVIORS, gt=0)
    timestamp: pl.Int64 = pa.Field(alias=c.TIMESTAMP, nullable=True)
    event_order: pl.Int64 = pa.Field(alias=c.EVENT_ORDER)
    n_events: pl.UInt32 = pa.Field(ge=1)
    session: pl.UInt32 = pa.Field(ge=0)

    class Config:
        strict = True
        ordered = True
        unique = ["user_id", "step"]


class SplitRoles(pa.DataFrameModel):
    """Exactly one role per step for one split protocol."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID)
    step: pl.UInt32 = pa.Field(ge=0)
    role: pl.String = pa.Field(isin=["train", "valid", "between", "test", "excluded"])

    class Config:
        strict = True
        unique = ["user_id", "step"]


class EvaluationExamples(pa.DataFrameModel):
    """Valid/test targets with their history end (history = steps [0, history_end)) after filtering."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID)
    role: pl.String = pa.Field(isin=["valid", "test"])
    target_step: pl.UInt32 = pa.Field(ge=0)
    history_end: pl.UInt32 = pa.Field(ge=0)
    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID)
    behaviors: pl.UInt16 = pa.Field(alias=c.BEHAVIORS, gt=0)
    timestamp: pl.Int64 = pa.Field(alias=c.TIMESTAMP, nullable=True)
    dropped_steps: pl.List(pl.UInt32)

    class Config:
        strict = True
        unique = ["user_id", "role", "target_step"]

    @pa.dataframe_check
    def history_before_target(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("history_end") <= pl.col("target_step"))


class LeakageAudit(pa.DataFrameModel):
    protocol: pl.String
    filter: pl.String
    k: pl.Int32 = pa.Field(ge=1)
    examples: pl.Int64 = pa.Field(ge=0)
    share_in_last_k: pl.Float64 = pa.Field(ge=0, le=1)
    recent_hr: pl.Float64 = pa.Field(ge=0, le=1)
    recent_ndcg: pl.Float64 = pa.Field(ge=0, le=1)
    frequent_hr: pl.Float64 = pa.Field(ge=0, le=1)
    frequent_ndcg: pl.Float64 = pa.Field(ge=0, le=1)

    class Config:
        strict = True


class ModelReadySequences(pa.DataFrameModel):
    """Scalar columns of a model-ready table; the array columns (items, behaviors, time_gaps,
    sessions: Array[Int32, max_len]) are checked by ``pipelines.contracts.model_ready_consistency``."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID)
    role: pl.String = pa.Field(isin=["train", "valid", "test"])
    length: pl.UInt32 = pa.Field(ge=0)
    target_item: pl.UInt32 = pa.Field(ge=1)
    target_behaviors: pl.UInt16 = pa.Field(gt=0)

    class Config:
        strict = False
