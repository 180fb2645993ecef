"""Exports: the EIDP/BLADE files re-import through the ingest adapter to the same steps."""

from __future__ import annotations

import json

import polars as pl

from conftest import ingested
from pipelines.ingest.core import ingest_dataset
from pipelines.sequences.exports import blade_split_files, gamer_json, recbole_inter
from pipelines.sequences.options import SequenceOptions
from pipelines.sequences.stage import materialize_split, materialize_steps, split_dir, steps_path
from pipelines.sequences.steps import behavior_steps
from schemas import columns as c


def test_blade_export_round_trips_through_the_adapter(tmp_path, registry):
    cfg = registry.get("kuaisar")
    paths = ingested(cfg, tmp_path)
    materialize_steps(cfg, paths, log=lambda _: None)
    materialize_split(cfg, paths, "eidp", log=lambda _: None)
    steps = pl.read_parquet(steps_path(paths))
    roles = pl.read_parquet(split_dir(paths, "eidp") / "roles.parquet")
    counts = blade_split_files(steps, roles, cfg, tmp_path / "blade")
    assert counts["test.txt"] == counts["valid.txt"] > 0

    # re-import as a behavior_set_splits dataset with the same vocabulary (codes = b-positions)
    back_cfg = registry.get("blade_qk_video").model_copy(update={
        "name": "reimport", "behaviors": [b.model_copy(update={"code": i + 1}) for i, b in enumerate(cfg.behaviors)],
        "auxiliary": cfg.auxiliary, "targets": cfg.targets})
    ingest_dataset(back_cfg, tmp_path / "blade", tmp_path / "reimported", log=lambda _: None)
    events = pl.read_parquet(tmp_path / "reimported" / "events.parquet")
    umap = pl.read_parquet(tmp_path / "reimported" / "user_id_map.parquet")
    imap = pl.read_parquet(tmp_path / "reimported" / "item_id_map.parquet")
    back = behavior_steps(events, back_cfg, SequenceOptions(merge_rule="none")).join(umap, on=c.USER_ID).join(
        imap, on=c.ITEM_ID).select((pl.col(c.RAW_USER_ID) - 1).alias("u"), (pl.col(c.RAW_ITEM_ID) - 1).alias("i"),
                                   c.BEHAVIORS, pl.col("step")).sort("u", "step")
    exported = steps.join(roles.filter(pl.col("role") != "excluded"), on=[c.USER_ID, "step"]).sort(c.USER_ID, "step")
    assert back.select("u", "i", c.BEHAVIORS).rows() == exported.select(
        pl.col(c.USER_ID).cast(pl.Int64), pl.col(c.ITEM_ID).cast(pl.Int64), c.BEHAVIORS).rows()


def test_recbole_and_gamer_files(tmp_path, registry):
    cfg = registry.get("taobao")
    steps = pl.DataFrame({c.USER_ID: [0, 0, 1], "step": [0, 1, 0], c.ITEM_ID: [5, 6, 5], c.BEHAVIORS: [1 | 4, 8, 1],
                          c.TIMESTAMP: [1_000, 61_000, 2_000], "session": [0, 1, 0]},
                         schema_overrides={c.USER_ID: pl.UInt32, "step": pl.UInt32, c.ITEM_ID: pl.UInt32,
                                           c.BEHAVIORS: pl.UInt16, "session": pl.UInt32})
    inter = recbole_inter(steps, cfg, tmp_path / "taobao.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\ttimestamp:float\tbehaviors:token_seq\tsession_id:token"
    assert inter[1] == "0\t5\t1.0\tpv cart\t0"
    doc = json.loads(gamer_json(steps, cfg, tmp_path / "taobao.gamer.json").read_text())
    assert doc == {"0": {"items": [5, 6], "behaviors": [["pv", "cart"], ["buy"]], "sessions": [0, 1]},
                   "1": {"items": [5], "behaviors": [["pv"]], "sessions": [0]}}
