"""The ingest assets materialize through Dagster on generated data; the blocking checks catch violations."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from assets.ingest import ingest, ingest_checks
from pipelines.contracts import ingest_consistency, validate_parquet
from assets.definitions import defs
from pipelines.resources import PipelineSettings
from schemas import columns as c
from schemas.ingest import CanonicalEvents


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    settings = PipelineSettings(data_root=str(root))
    results = {}
    for key in ("taobao", "blade_qk_video"):
        results[key] = dg.materialize([ingest, *ingest_checks], partition_key=key, resources={"settings": settings})
    return root, settings, results


def test_definitions_load_with_partitions_for_every_dataset(registry):
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys >= {"canonical_events", "user_id_map", "item_id_map", "item_side_info", "ingest_quarantine"}
    node = graph.get(dg.AssetKey("canonical_events"))
    assert node.partitions_def.get_partition_keys() == registry.names
    job = defs.resolve_job_def("materialize_all")
    shard_group = {"event_shards", "event_shard_ids", "dense_ids", "shard_sequences", "sharded_dataset"}
    assert shard_group <= keys
    # every asset of the single-machine path in one job (the sharded path runs per dataset x shard)
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == keys - shard_group
    shard_keys = graph.get(dg.AssetKey("shard_sequences")).partitions_def.get_partition_keys()
    assert shard_keys == [f"{d}|0" for d in registry.names]  # every dataset, one shard each by default


def test_materialize_on_generated_data_passes_every_check(materialized):
    root, _, results = materialized
    for key, result in results.items():
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 7 and all(e.passed for e in evaluations)  # 5 contracts, consistency, freshness, [e.check_name for e in evaluations if not e.passed]
        mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
        assert set(mats) == {"canonical_events", "user_id_map", "item_id_map", "item_side_info", "ingest_quarantine"}
        meta = mats["canonical_events"].materialization.metadata
        assert meta["source"].value == "synthetic" and meta["reconciles"].value is True
        assert (root / "generated" / key).is_dir() and (root / "outputs" / key / "ingest" / "events.parquet").is_file()


def test_generated_taobao_has_funnels_and_out_of_window_rows(materialized):
    root, _, _ = materialized
    report = json.loads((root / "outputs" / "taobao" / "ingest" / "ingest_report.json").read_text())
    assert report["rows_quarantined"] > 0 and set(report["quarantine_reasons"]) == {"timestamp outside the valid range"}
    assert report["rows_read"] == report["rows_kept"] + report["rows_quarantined"] + report["duplicates_dropped"]


def test_contract_violations_fail_with_a_message_naming_them(materialized, tmp_path):
    root, _, _ = materialized
    out = root / "outputs" / "taobao" / "ingest"
    events = pl.read_parquet(out / "events.parquet")
    bad = events.with_columns(pl.lit(7, pl.Int64).alias(c.EVENT_ORDER))  # event_order must be unique
    bad.write_parquet(tmp_path / "events.parquet")
    r = validate_parquet(tmp_path / "events.parquet", CanonicalEvents)
    assert not r.passed and "event_order" in r.message and "field_uniqueness" in r.message
    wrong_type = events.with_columns(pl.col(c.TIMESTAMP).cast(pl.String))
    wrong_type.write_parquet(tmp_path / "events.parquet")
    r = validate_parquet(tmp_path / "events.parquet", CanonicalEvents)
    assert not r.passed and "timestamp" in r.message


def test_consistency_check_catches_a_broken_id_map(materialized, tmp_path):
    root, _, _ = materialized
    src = root / "outputs" / "taobao" / "ingest"
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    assert ingest_consistency(tmp_path).passed
    m = pl.read_parquet(tmp_path / "user_id_map.parquet")
    m.with_columns(pl.col(c.RAW_USER_ID).first()).write_parquet(tmp_path / "user_id_map.parquet")
    r = ingest_consistency(tmp_path)
    assert not r.passed and "user_id_map: raw ids repeat (not a bijection)" in r.message


def test_blocking_check_fails_the_run_when_ingest_writes_a_violation(tmp_path, monkeypatch):
    """Wrap the real ingest so it leaves a duplicated event_order behind; the contract check must fail."""
    import pipelines.ingest.core as core

    real = core.ingest_dataset

    def corrupting(cfg, raw_dir, out_dir, **kw):
        summary = real(cfg, raw_dir, out_dir, **kw)
        ev = pl.read_parquet(out_dir / core.EVENTS_FILE)
        ev.with_columns(pl.lit(1, pl.Int64).alias(c.EVENT_ORDER)).write_parquet(out_dir / core.EVENTS_FILE)
        return summary

    monkeypatch.setattr(core, "ingest_dataset", corrupting)
    settings = PipelineSettings(data_root=str(tmp_path))
    result = dg.materialize([ingest, *ingest_checks], partition_key="blade_qk_video",
                            resources={"settings": settings}, raise_on_error=False)
    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    # the contract names the column; the consistency check sees a file changed after its publish
    assert set(failed) == {"canonical_events_contract", "ingest_consistency_check"}
    assert "event_order" in failed["canonical_events_contract"].metadata["message"].value
    assert "manifest" in failed["ingest_consistency_check"].metadata["message"].value
    assert failed["canonical_events_contract"].blocking


def test_generated_data_is_cached_by_spec_and_generator_version(tmp_path, registry, monkeypatch):
    from pipelines.sources import SPEC_FILE, resolve_raw_source
    from pipelines.storage import DatasetPaths

    cfg = registry.get("blade_qk_video")
    paths = DatasetPaths(tmp_path, cfg.name)
    first = resolve_raw_source(cfg, paths, log=lambda _: None)
    assert first.kind == "synthetic" and (paths.generated_dir / SPEC_FILE).is_file()
    stamp = (paths.generated_dir / "train.txt").stat().st_mtime_ns
    resolve_raw_source(cfg, paths, log=lambda _: None)
    assert (paths.generated_dir / "train.txt").stat().st_mtime_ns == stamp  # reused
    marker = paths.generated_dir / SPEC_FILE
    marker.write_text(marker.read_text().replace('"generator": "', '"generator": "old'))
    resolve_raw_source(cfg, paths, log=lambda _: None)
    assert (paths.generated_dir / "train.txt").stat().st_mtime_ns != stamp  # a changed generator regenerates
    (paths.raw_dir).mkdir(parents=True)
    (paths.raw_dir / "train.txt").write_text("1,2,1,0,0,0\n")
    assert resolve_raw_source(cfg, paths, log=lambda _: None).kind == "raw"
