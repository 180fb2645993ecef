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


class UserDigests(pa.DataFrameModel):
    """Per user, a 64-bit digest of the user's steps (every column): a refresh compares them to find
    the users whose steps changed. The file's metadata names the steps table's rows and bytes."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID, unique=True)
    digest: pl.UInt64

    class Config:
        strict = True


class SplitUsers(pa.DataFrameModel):
    """Per user, what one split was built from (the steps digest) and the user sets of its report
    (bit i of ``flags`` = ``pipelines.sequences.splits.USER_FLAGS[i]``)."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID, unique=True)
    digest: pl.UInt64
    flags: pl.UInt8

    class Config:
        strict = True


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


class TrainingExamples(pa.DataFrameModel):
    """Per user the last train step as target; history = the train prefix before it."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID, unique=True)
    role: pl.String = pa.Field(isin=["train"])
    target_step: pl.UInt32 = pa.Field(ge=1)
    history_end: pl.UInt32 = pa.Field(ge=1)
    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID)
    behaviors: pl.UInt16 = pa.Field(alias=c.BEHAVIORS, gt=0)
    timestamp: pl.Int64 = pa.Field(alias=c.TIMESTAMP, nullable=True)
    dropped_steps: pl.List(pl.UInt32)

    class Config:
        strict = True

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


class SequentialViews(pa.DataFrameModel):
    """GAMER-style augmented training steps: view k of x with ratio k/x."""

    view: pl.UInt8 = pa.Field(ge=1)
    ratio: pl.Float32 = pa.Field(gt=0, le=1)
    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID)
    step: pl.UInt32 = pa.Field(ge=0)
    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID)
    behaviors: pl.UInt16 = pa.Field(alias=c.BEHAVIORS, gt=0)

    class Config:
        strict = False
        unique = ["view", "user_id", "step"]


class BladeSplitLine(pa.DataFrameModel):
    """One line `user,item,b1..bB` of an exported EIDP/BLADE split file (read without a header)."""

    user: pl.Int64 = pa.Field(ge=1)
    item: pl.Int64 = pa.Field(ge=1)

    class Config:
        strict = False

    @pa.dataframe_check
    def behaviors_are_binary_and_not_empty(cls, data) -> pl.LazyFrame:
        flags = [col for col in data.lazyframe.collect_schema().names() if col.startswith("b")]
        return data.lazyframe.select(
            pl.all_horizontal([pl.col(f).is_in([0, 1]) for f in flags]) & (pl.sum_horizontal(flags) > 0))


class RecBoleBenchmarkInter(pa.DataFrameModel):
    """One exported RecBole benchmark file (`<dataset>.<role>.inter`): a history and its target."""

    user_id: pl.Int64 = pa.Field(alias="user_id:token", ge=0)
    item_id_list: pl.String = pa.Field(alias="item_id_list:token_seq", str_matches=r"^\d+( \d+)*$")
    item_id: pl.Int64 = pa.Field(alias="item_id:token", ge=0)

    class Config:
        strict = True


class RecBoleInter(pa.DataFrameModel):
    """The exported RecBole atomic file (tab-separated, `field:type` header)."""

    user_id: pl.Int64 = pa.Field(alias="user_id:token", ge=0)
    item_id: pl.Int64 = pa.Field(alias="item_id:token", ge=0)
    timestamp: pl.Float64 = pa.Field(alias="timestamp:float")
    behaviors: pl.String = pa.Field(alias="behaviors:token_seq", str_length={"min_value": 1})
    session_id: pl.Int64 = pa.Field(alias="session_id:token", ge=0)

    class Config:
        strict = True
