"""The sharded path as Dagster runs: dataset x shard partitions executed on real dagster-celery
workers through a real Redis broker, compared byte for byte with the same shards computed in this
process; the raw-data sensor's routing; a dataset's run tags from the registry."""

import json
import os
import re
from pathlib import Path

import dagster as dg
import pytest

from assets.automation import raw_data_sensor
from assets.executors import run_tags
from assets.sharded_run import LAYERS, partition_keys, run_sharded
from pipelines import shards
from pipelines.layout import DatasetLayout
from pipelines.registry import REPO_ROOT, load_registry
from pipelines.resources import PipelineSettings
from pipelines.sources import resolve_raw_source
from tests.services import celery_workers, redis_url  # noqa: F401  (fixture)
from tests.test_shards import dataset_files

DATASET = "kuaisar"  # the smallest generated raw log with side files
SHARDS = 2


def sharded_registry(path: Path, shards_: int = SHARDS, extra: str = "") -> Path:
    text = (REPO_ROOT / "data" / "datasets.yaml").read_text()
    path.write_text(re.sub(rf"^  {DATASET}:\n", f"  {DATASET}:\n    shards: {shards_}\n{extra}", text, count=1,
                           flags=re.M))
    return path


def test_partition_keys_per_layer():
    assert [a for a, _ in LAYERS] == ["event_shards", "event_shard_ids", "dense_ids", "shard_sequences",
                                      "sharded_dataset"]
    assert partition_keys("x", 3, "shard") == ["x|0", "x|1", "x|2"] and partition_keys("x", 3, "dataset") == ["x"]


def test_sensor_asks_a_sharded_dataset_for_its_map_step_with_its_run_tags(tmp_path):
    registry = sharded_registry(tmp_path / "registry.yaml",
                                extra="    resources: {cpu: '2', memory: 8Gi}\n")
    root = tmp_path / "data"
    (root / "raw" / DATASET).mkdir(parents=True)
    (root / "raw" / DATASET / "sar.csv").write_text("x\n")
    (root / "raw" / "taobao").mkdir(parents=True)
    (root / "raw" / "taobao" / "UserBehavior.csv").write_text("1,2,3,pv,1511544070\n")
    settings = PipelineSettings(data_root=str(root), registry_path=str(registry))
    with dg.build_sensor_context(resources={"settings": settings}) as context:
        result = raw_data_sensor(context)
    jobs = {r.partition_key: r.job_name for r in result.run_requests}
    assert jobs == {DATASET: "event_shards_job", "taobao": "ingest_job"}
    tags = {r.partition_key: r.tags for r in result.run_requests}
    pod = json.loads(tags[DATASET]["dagster-k8s/config"])["container_config"]["resources"]
    assert pod["requests"] == {"cpu": "2", "memory": "8Gi"} == pod["limits"]
    assert "dagster-k8s/config" not in tags["taobao"]
    assert run_tags(None) == {}


def test_a_sharded_dataset_runs_on_celery_workers_as_it_runs_here(tmp_path, redis_url):  # noqa: F811
    registry = sharded_registry(tmp_path / "registry.yaml")
    cfg = load_registry(registry).get(DATASET)

    # the same shards computed in this process, with the plain functions
    here = DatasetLayout(tmp_path / "here", DATASET)
    raw = resolve_raw_source(cfg, here, log=lambda _: None).directory
    quiet = lambda _m: None  # noqa: E731
    shards.map_to_shards(cfg, raw, here, log=quiet)
    for k in range(SHARDS):
        shards.shard_raw_ids(cfg, here, k, log=quiet)
    shards.merge_dense_ids(cfg, raw, here, log=quiet)
    for k in range(SHARDS):
        shards.shard_sequences(cfg, here, k, log=quiet)
    shards.merge_shards(cfg, raw, here, log=quiet)

    # Dagster runs, one per partition, every step executed by a Celery worker
    home = tmp_path / "dagster_home"
    home.mkdir()
    root = tmp_path / "celery"
    env = {"MBREC_REGISTRY": str(registry), "MBREC_DATA_ROOT": str(root), "DAGSTER_HOME": str(home),
           "MBREC_EXECUTOR": "celery", "MBREC_CELERY_BROKER": redis_url, "MBREC_CELERY_SHARD_QUEUE": "shards"}
    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()  # its tables exist before the workers open it
    # two worker pools: shard workers on the shard queue, each pinned to one core (as `taskset -c`
    # does), and a dataset-level worker on the default queue
    core = min(os.sched_getaffinity(0))
    with celery_workers(redis_url, 3, env=env, queues=[["shards"], ["shards"], ["dagster"]],
                        cpus=[[core], [core], None]) as workers:
        timings = run_sharded(DATASET, env=env, log_dir=tmp_path / "logs", log=lambda _: None)
        shard_pids, dataset_pids = workers.pids(0) | workers.pids(1), workers.pids(2)
        log = workers.log_text()
    assert [t.runs for t in timings] == [1, SHARDS, 1, SHARDS, 1]

    # every step ran in a worker process, never in the process that launched the run: the shard
    # runs' steps (assets and checks) on the shard queue's workers, the dataset-level ones elsewhere
    runs = instance.get_runs()
    assert len(runs) == 2 * SHARDS + 3 and all(r.is_success for r in runs)
    step_pids = {}
    for run in runs:
        for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START):
            step_pids[(run.tags.get("dagster/partition"), e.dagster_event.step_key)] = e.dagster_event.pid
    on_shard_queue = {k: p for k, p in step_pids.items() if "|" in k[0]}
    on_default_queue = {k: p for k, p in step_pids.items() if "|" not in k[0]}
    assert {k[1] for k in on_shard_queue} == {"event_shard_ids", "shard_sequences"}, on_shard_queue
    assert set(on_shard_queue.values()) <= shard_pids, (on_shard_queue, shard_pids)
    assert set(on_default_queue.values()) <= dataset_pids, (on_default_queue, dataset_pids)
    assert "Task dagster.execute_plan" in log or "execute_plan" in log
    # a pinned worker's shard runs computed on one thread, polars' pool included
    for record in instance.fetch_materializations(dg.AssetKey("shard_sequences"), limit=10).records:
        meta = record.asset_materialization.metadata
        assert meta["threads"].value == {"stage": 1, "polars": 1, "cpus": 1}, meta["threads"]
        assert 0 < meta["peak_rss_mb"].value < 8000

    # the same bytes as the shards computed here
    celery = DatasetLayout(root, DATASET)
    a, b = dataset_files(here), dataset_files(celery)
    assert b.pop(Path("ingest/source.json"))  # the asset also publishes where the raw files came from
    assert sorted(a) == sorted(b)
    assert [p for p in a if a[p] != b[p]] == []
    checks = [e for r in runs for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
    assert checks and all(e.dagster_event.event_specific_data.passed for e in checks)
    # each layer's contract ran, inside the asset's own step (one Celery task per run)
    assert sorted(e.dagster_event.event_specific_data.check_name for e in checks) == sorted(
        ["event_shards_contract", "sharded_dataset_consistency"] + ["event_shard_ids_contract"] * SHARDS)
    assert len(step_pids) == 2 * SHARDS + 3, step_pids


def test_a_failing_shard_contract_fails_the_map_step(tmp_path, monkeypatch):
    """The shard layers' contracts run inside the asset's step: a violation fails that step (the next
    layer's automation waits on a failed upstream) and the evaluation names the column."""
    import polars as pl

    from assets import shards as shard_assets

    registry = sharded_registry(tmp_path / "registry.yaml")
    root = tmp_path / "data"
    real = shards.map_to_shards

    def corrupting(cfg, raw_dir, paths, *args, **kwargs):
        out = real(cfg, raw_dir, paths, *args, **kwargs)
        bucket = paths.shard_bucket(0)
        pl.read_parquet(bucket).with_columns(pl.lit(0, pl.Int64).alias("event_order")).write_parquet(bucket)
        return out

    monkeypatch.setattr(shard_assets.shards, "map_to_shards", corrupting)
    settings = PipelineSettings(data_root=str(root), registry_path=str(registry))
    result = dg.materialize([shard_assets.event_shards], partition_key=DATASET, resources={"settings": settings},
                            raise_on_error=False)
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["event_shards_contract"].passed
    assert "event_order" in evaluations["event_shards_contract"].metadata["message"].value
