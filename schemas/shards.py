"""Data contracts for the tables a sharded run writes before the merge (``pipelines/shards.py``).

The merged, dataset-level tables are the ingest and sequence tables and keep their own contracts
(``schemas/ingest.py``, ``schemas/sequences.py``).
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas import columns as c


class ShardBucket(pa.DataFrameModel):
    """The map step's parsed, good rows of one shard, in file order (format extras may follow)."""

    source_file: pl.String = pa.Field(alias=c.SOURCE_FILE)
    source_line: pl.UInt32 = pa.Field(alias=c.SOURCE_LINE, ge=1)
    event_order: pl.Int64 = pa.Field(alias=c.EVENT_ORDER, ge=0, unique=True)
    raw_user_id: pl.Int64 = pa.Field(alias=c.RAW_USER_ID)
    raw_item_id: pl.Int64 = pa.Field(alias=c.RAW_ITEM_ID)
    behaviors: pl.UInt16 = pa.Field(alias=c.BEHAVIORS, ge=0)
    timestamp: pl.Int64 = pa.Field(alias=c.TIMESTAMP, nullable=True)

    class Config:
        strict = False  # side attributes seen on events (per format) follow the fixed columns
        ordered = True


class ShardRawUsers(pa.DataFrameModel):
    """A shard's distinct raw users with the index of the first file each occurs in."""

    raw_user_id: pl.Int64 = pa.Field(alias=c.RAW_USER_ID, unique=True)
    first_file: pl.Int64 = pa.Field(alias="__first_file", ge=0)

    class Config:
        strict = True
        ordered = True


class ShardRawItems(pa.DataFrameModel):
    """A shard's distinct raw items with their first file (and side attributes seen on its events)."""

    raw_item_id: pl.Int64 = pa.Field(alias=c.RAW_ITEM_ID, unique=True)
    first_file: pl.Int64 = pa.Field(alias="__first_file", ge=0)

    class Config:
        strict = False
        ordered = True
