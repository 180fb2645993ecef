"""Refresh logic without the daemon: fingerprints, the raw-data sensor's decisions and cursor, the
failure report, the cross-dataset leaderboard, the freshness check, and stale checkpoints."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from assets.automation import LEADERBOARD_REFRESH, REFRESH, raw_data_sensor, with_automation
from assets.definitions import defs
from pipelines.ingest.fingerprints import EDGE_BYTES, changes, fingerprint_dir
from pipelines.layout import DatasetLayout, global_leaderboard
from pipelines.refresh import read_failures, record_failure, scan_raw_folder
from pipelines.resources import PipelineSettings


def _write(path: Path, data: bytes, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# ------------------------------------------------------------------------------------ fingerprints
def test_changes_classify_every_kind(tmp_path):
    big = b"1,2,3,pv,1511544070\n" * (2 * EDGE_BYTES // 20)
    _write(tmp_path / "a.csv", big)
    _write(tmp_path / "b.csv", b"small\n")
    _write(tmp_path / "c.csv", big)
    _write(tmp_path / "d.csv", big)
    _write(tmp_path / ".hidden", b"ignored")
    before = fingerprint_dir(tmp_path)
    assert set(before) == {"a.csv", "b.csv", "c.csv", "d.csv"}

    _write(tmp_path / "a.csv", big + b"9,9,9,buy,1511544071\n")  # appended
    _write(tmp_path / "b.csv", b"small\nmore\n")  # small file: an append cannot be proven
    _write(tmp_path / "c.csv", big[: len(big) // 2])  # truncated
    (tmp_path / "d.csv").unlink()
    _write(tmp_path / "e.csv", b"new\n")
    assert changes(before, fingerprint_dir(tmp_path)) == {
        "a.csv": "grown", "b.csv": "replaced", "c.csv": "shrunk", "d.csv": "removed", "e.csv": "new"}


def test_a_touched_or_recopied_file_is_unchanged(tmp_path):
    _write(tmp_path / "a.csv", b"x" * 1000, mtime=1_000_000)
    before = fingerprint_dir(tmp_path)
    _write(tmp_path / "a.csv", b"x" * 1000)  # same bytes, new modification time
    assert changes(before, fingerprint_dir(tmp_path)) == {}


# ------------------------------------------------------------------------------------ the sensor
@pytest.fixture
def two_datasets(tmp_path, monkeypatch):
    """Data root with a taobao raw file; tmall has none (it would use generated data)."""
    root = tmp_path / "data"
    _write(root / "raw" / "taobao" / "UserBehavior.csv", b"1,2,3,pv,1511544070\n")
    return root


def _tick(root: Path, cursor: str | None):
    settings = PipelineSettings(data_root=str(root))
    with dg.build_sensor_context(cursor=cursor, resources={"settings": settings}) as context:
        result = raw_data_sensor(context)
    return result


def test_sensor_requests_exactly_the_changed_dataset_once(two_datasets):
    first = _tick(two_datasets, None)
    assert [(r.partition_key, r.tags["mbrec/changed_files"]) for r in first.run_requests] == [
        ("taobao", "UserBehavior.csv")]
    again = _tick(two_datasets, first.cursor)
    assert again.run_requests == [] and "no new raw files" in again.skip_reason.skip_message

    # the same file dropped again (same bytes, new modification time): no run
    path = two_datasets / "raw" / "taobao" / "UserBehavior.csv"
    shutil.copy(path, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    assert _tick(two_datasets, again.cursor).run_requests == []

    # a replaced file: one run, with a new run key
    _write(path, b"1,2,3,pv,1511544070\n4,5,6,buy,1511544071\n")
    third = _tick(two_datasets, again.cursor)
    assert [r.partition_key for r in third.run_requests] == ["taobao"]
    assert third.run_requests[0].run_key != first.run_requests[0].run_key


def test_sensor_first_look_treats_published_files_as_seen(two_datasets):
    paths = DatasetLayout(two_datasets, "taobao")
    raw = paths.raw_dir / "UserBehavior.csv"
    os.utime(raw, (time.time() - 100, time.time() - 100))
    _write(paths.events(), b"published")  # outputs written after the raw file
    assert _tick(two_datasets, None).run_requests == []
    assert scan_raw_folder("taobao", paths, None).changed == {}
    _write(paths.raw_dir / "day2.csv", b"1,2,3,pv,1511544999\n")  # a newer drop
    assert scan_raw_folder("taobao", paths, None).changed == {"day2.csv": "new"}


def test_every_asset_below_ingest_refreshes_and_the_dataset_facing_ones_have_freshness():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.group_name == "ingest":
            assert node.automation_condition is None  # the raw-data sensor starts ingest
        elif node.partitions_def is None:
            assert node.automation_condition == LEADERBOARD_REFRESH
        else:
            assert node.automation_condition == REFRESH, key
    fresh = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).freshness_policy}
    assert fresh == {"canonical_events", "model_ready_sequences", "behavior_statistics", "semantic_ids", "evaluation"}
    sensors = {s.name: s for s in defs.sensors}
    assert {"raw_data_sensor", "downstream_refresh", "record_run_failure"} <= set(sensors)
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    assert len(with_automation([])) == 0


# ------------------------------------------------------------------------------------ failures
def test_failure_report_keeps_the_newest(tmp_path):
    paths = DatasetLayout(tmp_path, "taobao")
    for i in range(5):
        record_failure(paths, {"run_id": f"r{i}", "failed_steps": [{"step": "ingest", "error": "boom"}]}, keep=3)
    rows = read_failures(paths)
    assert [r["run_id"] for r in rows] == ["r2", "r3", "r4"] and rows[-1]["failed_steps"][0]["step"] == "ingest"


# ------------------------------------------------------------------------------------ leaderboard
def _results(dataset: str, ndcg: float) -> pl.DataFrame:
    base = {"dataset": dataset, "protocol": "leave_one_out", "model": "popularity", "target_behavior": "all",
            "mask_history": 0, "data_version": "x", "n": 10, "hr@5": 0.1, "hr@10": 0.2, "hr@20": 0.3,
            "ndcg@5": ndcg, "ndcg@10": ndcg, "ndcg@20": ndcg, "mrr": ndcg}
    return pl.DataFrame([base | {"filter": "all"}, base | {"filter": "off"}])


def test_cross_dataset_leaderboard_is_one_asset_over_every_dataset(tmp_path):
    for name, ndcg in (("taobao", 0.1), ("tmall", 0.2)):
        path = DatasetLayout(tmp_path, name).evaluation_results()
        path.parent.mkdir(parents=True)
        _results(name, ndcg).write_parquet(path)
    result = dg.materialize([a for a in defs.assets if "cross_dataset_leaderboard" in
                             {k.to_user_string() for k in a.keys}],
                            resources={"settings": PipelineSettings(data_root=str(tmp_path))})
    assert result.success
    board = pl.read_parquet(global_leaderboard(tmp_path, "parquet"))
    assert sorted(board["dataset"].unique()) == ["taobao", "tmall"]
    assert result.asset_materializations_for_node("cross_dataset_leaderboard")[0].metadata["datasets"].value == 2


# ------------------------------------------------------------------------------------ stale models
def test_a_checkpoint_refuses_data_it_was_not_trained_on(kuaisar_project, tmp_path, registry):
    from pipelines.training.stage import StaleModelError, TrainingOptions, load_trained

    root = tmp_path / "data"
    shutil.copytree(kuaisar_project, root, ignore=shutil.ignore_patterns("generated", "cache"), symlinks=True)
    cfg = registry.get("kuaisar")
    paths = DatasetLayout(root, "kuaisar")
    protocol = TrainingOptions.of(cfg).protocol
    load_trained(paths, cfg, protocol, "sasrec")  # the data it was trained on: loads
    arrays = dict(np.load(paths.model_ready(protocol, "train")))
    arrays["items"] = arrays["items"].copy()
    arrays["items"][0, -1] = arrays["items"][0, -1] + 1  # one changed training item
    np.savez(paths.model_ready(protocol, "train"), **arrays)
    with pytest.raises(StaleModelError, match="re-materialize trained_sasrec"):
        load_trained(paths, cfg, protocol, "sasrec")


# ------------------------------------------------------------------------------------ freshness check
def test_freshness_check_names_raw_files_newer_than_outputs(tmp_path):
    from pipelines.refresh import raw_newer_than_outputs

    paths = DatasetLayout(tmp_path, "taobao")
    _write(paths.events(), b"published", mtime=time.time() - 100)
    _write(paths.raw_dir / "UserBehavior.csv", b"1,2,3,pv,1511544070\n")
    assert raw_newer_than_outputs(paths) == ["UserBehavior.csv"]
    os.utime(paths.events(), None)  # outputs republished after the drop
    assert raw_newer_than_outputs(paths) == []
