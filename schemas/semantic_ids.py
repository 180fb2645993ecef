"""Data contracts for the semantic-ID stage: item texts, embeddings, semantic IDs."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas import columns as c


class ItemText(pa.DataFrameModel):
    """One non-empty text per item (``source`` says whether it came from side info or the fallback)."""

    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID, unique=True)
    raw_item_id: pl.Int64 = pa.Field(alias=c.RAW_ITEM_ID, unique=True)
    text: pl.String = pa.Field(str_length={"min_value": 1})
    source: pl.String = pa.Field(isin=["side_info", "fallback"])

    class Config:
        strict = True
        ordered = True


class ItemEmbeddings(pa.DataFrameModel):
    """One vector per item; ``vector`` (Array[Float32, d], finite) is checked by
    ``pipelines.semantic_ids.checks.embeddings_consistency``."""

    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID, unique=True)

    class Config:
        strict = False


class SemanticIds(pa.DataFrameModel):
    """One SID per item: ``codes`` (Array[Int32, levels]) + ``dedup`` counter, spelled as tokens in
    ``sid`` (``<a_12><b_3><c_7><d_0>``). Uniqueness of ``sid`` is checked by ``sid_consistency``
    (it only holds with the dedup level)."""

    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID, unique=True)
    raw_item_id: pl.Int64 = pa.Field(alias=c.RAW_ITEM_ID, unique=True)
    dedup: pl.Int32 = pa.Field(ge=0)
    sid: pl.String = pa.Field(str_matches=r"^(<[a-z0-9]+_\d+>)+$")
    in_training: pl.Boolean

    class Config:
        strict = False
