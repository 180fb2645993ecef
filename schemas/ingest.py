"""Data contracts for the tables the ingest stage writes.

Each model documents dtypes, nullability, ranges and uniqueness; the ingest asset checks run them
on the published parquet files (see ``assets/ingest.py``).
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas import columns as c


class CanonicalEvents(pa.DataFrameModel):
    """One row per kept raw event (or exposure row for flag formats)."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID, ge=0)
    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID, ge=0)
    behaviors: pl.UInt16 = pa.Field(alias=c.BEHAVIORS, ge=0)
    timestamp: pl.Int64 = pa.Field(alias=c.TIMESTAMP, nullable=True)
    event_order: pl.Int64 = pa.Field(alias=c.EVENT_ORDER, ge=0, unique=True)
    source_file: pl.String = pa.Field(alias=c.SOURCE_FILE)
    source_line: pl.UInt32 = pa.Field(alias=c.SOURCE_LINE, ge=1)

    class Config:
        strict = True
        ordered = True


class UserIdMap(pa.DataFrameModel):
    """Dense user id <-> raw user id, a bijection; dense ids are 0..n-1 in raw-id order."""

    user_id: pl.UInt32 = pa.Field(alias=c.USER_ID, ge=0, unique=True)
    raw_user_id: pl.Int64 = pa.Field(alias=c.RAW_USER_ID, unique=True)

    class Config:
        strict = True
        ordered = True


class ItemIdMap(pa.DataFrameModel):
    """Dense item id <-> raw item id, a bijection; dense ids are 0..n-1 in raw-id order."""

    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID, ge=0, unique=True)
    raw_item_id: pl.Int64 = pa.Field(alias=c.RAW_ITEM_ID, unique=True)

    class Config:
        strict = True
        ordered = True


class ItemSideInfo(pa.DataFrameModel):
    """Whatever descriptive information the dataset has per item (the semantic-ID stage's input)."""

    item_id: pl.UInt32 = pa.Field(alias=c.ITEM_ID, ge=0, unique=True)
    raw_item_id: pl.Int64 = pa.Field(alias=c.RAW_ITEM_ID, unique=True)
    category_id: pl.String = pa.Field(alias=c.CATEGORY_ID, nullable=True)
    category_path: pl.String = pa.Field(alias=c.CATEGORY_PATH, nullable=True)
    brand_id: pl.String = pa.Field(alias=c.BRAND_ID, nullable=True)
    seller_id: pl.String = pa.Field(alias=c.SELLER_ID, nullable=True)
    caption_tokens: pl.String = pa.Field(alias=c.CAPTION_TOKENS, nullable=True)

    class Config:
        strict = True
        ordered = True


class Quarantine(pa.DataFrameModel):
    """Raw rows that could not be ingested, with where they came from and why."""

    source_file: pl.String = pa.Field(alias=c.SOURCE_FILE)
    source_line: pl.UInt32 = pa.Field(alias=c.SOURCE_LINE, ge=1)
    reason: pl.String = pa.Field(alias=c.REASON)
    raw_text: pl.String = pa.Field(alias=c.RAW_TEXT, nullable=True)

    class Config:
        strict = True
        ordered = True
