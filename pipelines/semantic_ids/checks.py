"""Semantic checks of the semantic-ID stage (beyond the pandera contracts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.contracts import ContractResult
from schemas import columns as c


def embeddings_consistency(embeddings: Path, item_id_map: Path) -> ContractResult:
    """One finite vector per item of the id map, all of one dimension."""
    emb = pl.read_parquet(embeddings)
    n_items = pl.scan_parquet(item_id_map).select(pl.len()).collect().item()
    problems = []
    if emb.height != n_items or emb[c.ITEM_ID].n_unique() != n_items:
        problems.append(f"{emb.height:,} vectors for {n_items:,} items")
    if not isinstance(emb.schema["vector"], pl.Array):
        problems.append(f"vector column has dtype {emb.schema['vector']}, expected Array[Float32, d]")
    elif emb.height and not np.isfinite(emb["vector"].to_numpy()).all():
        problems.append("vectors contain NaN or inf")
    msg = "; ".join(problems) or f"{emb.height:,} finite vectors of dimension {emb.schema['vector'].size}"
    return ContractResult(not problems, "embeddings_consistency", emb.height, emb.height, msg)


def sid_consistency(semantic_ids: Path, item_id_map: Path, quality_json: Path, min_utilization: float,
                    max_excess_collisions: float | None = None) -> ContractResult:
    """Every item has exactly one SID; SIDs are unique (with the dedup level); every level uses at
    least ``min_utilization`` of its codes; when ``max_excess_collisions`` is set, the collision rate
    before dedup exceeds the identical-vector floor by at most that much."""
    table = pl.read_parquet(semantic_ids)
    ids = pl.read_parquet(item_id_map, columns=[c.ITEM_ID])
    report = json.loads(quality_json.read_text())
    problems = []
    missing = ids.join(table, on=c.ITEM_ID, how="anti").height
    extra = table.join(ids, on=c.ITEM_ID, how="anti").height
    dup_items = table.height - table[c.ITEM_ID].n_unique()
    if missing or extra or dup_items:
        problems.append(f"{missing:,} items without a SID, {extra:,} SIDs for unknown items, "
                        f"{dup_items:,} items with more than one SID")
    if report.get("dedup", True):
        dup_sids = table.height - table["sid"].n_unique()
        if dup_sids:
            example = table.filter(pl.col("sid").is_duplicated())["sid"].head(3).to_list()
            problems.append(f"{dup_sids:,} duplicate SIDs after dedup, e.g. {example}")
    low = [f"level {lv['level']}: {lv['utilization']:.3f}" for lv in report["quality"]["levels"]
           if lv["utilization"] < min_utilization]
    if low:
        problems.append(f"code utilization below the floor {min_utilization}: {', '.join(low)} "
                        "(fewer codes per level, or more training items)")
    col = report["quality"]["collisions"]
    excess = col.get("excess_collision_rate")
    if max_excess_collisions is not None and (excess is None or excess > max_excess_collisions):
        problems.append("no floor in the quality report (rebuild the semantic IDs)" if excess is None else
                        f"collision rate before dedup {col['collision_rate']:.4f} exceeds the identical-vector floor "
                        f"{col['floor']:.4f} by {excess:.4f} > max_excess_collisions {max_excess_collisions} "
                        "(method residual_unique assigns at the floor)")
    bound = f"; excess over the floor {excess:.4f} <= {max_excess_collisions}" if max_excess_collisions is not None else ""
    msg = "; ".join(problems) or (f"{table.height:,} items, one unique SID each; utilization >= {min_utilization} "
                                  f"on every level{bound}")
    return ContractResult(not problems, "sid_consistency", table.height, table.height, msg)
