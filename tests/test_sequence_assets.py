"""The sequence assets materialize through Dagster; a violated split check blocks the audit downstream."""

from __future__ import annotations

import dagster as dg
import polars as pl

from assets.ingest import ingest, ingest_checks
from assets.sequences import sequence_assets, sequence_checks
from pipelines.resources import PipelineSettings

ALL = [ingest, *sequence_assets, *ingest_checks, *sequence_checks]


def test_sequence_stage_materializes_for_timed_and_untimed_datasets(tmp_path):
    settings = PipelineSettings(data_root=str(tmp_path))
    for key in ("taobao", "tenrec_qk_video"):
        result = dg.materialize(ALL, partition_key=key, resources={"settings": settings})
        assert result.success
        evals = result.get_asset_check_evaluations()
        assert len(evals) == 21 and all(e.passed for e in evals)
        mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
        assert "leakage_audit" in mats and mats["behavior_sets"]["steps"].value > 0
    assert mats["split_session"]["applicable"].value is False  # tenrec: no time column
    assert "no time column" in mats["split_session"]["note"].value
    assert mats["split_released"]["applicable"].value is False  # not a split release
    assert "not a split release" in mats["split_released"]["note"].value


def test_broken_split_fails_its_check_and_blocks_the_audit(tmp_path, monkeypatch):
    import pipelines.sequences.stage as stage

    real = stage.materialize_split

    def drop_a_role(cfg, paths, protocol, log=print):
        summary = real(cfg, paths, protocol, log)
        if protocol == "leave_one_out":
            f = stage.split_dir(paths, protocol) / "roles.parquet"
            pl.read_parquet(f).slice(1).write_parquet(f)  # one step loses its role
        return summary

    monkeypatch.setattr(stage, "materialize_split", drop_a_role)
    settings = PipelineSettings(data_root=str(tmp_path))
    result = dg.materialize(ALL, partition_key="taobao", resources={"settings": settings}, raise_on_error=False)
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["split_leave_one_out_consistency"]
    assert "roles cover" in failed[0].metadata["message"].value
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "split_leave_one_out" in materialized and "leakage_audit" not in materialized
