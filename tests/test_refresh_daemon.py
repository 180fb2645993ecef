"""The real Dagster daemon refreshes a dataset when a file lands, that dataset only, and once.

A temporary instance (the committed dagster.yaml: queued runs, one per dataset) and a registry of
two small Taobao-format datasets; `dagster-daemon run` serves the code location. A raw file dropped
into one dataset's folder must make the raw-data sensor start its ingest, and the automation sensor
its downstream assets up to the dataset card and the cross-dataset leaderboard, while the other
dataset stays untouched; the same file dropped again must start nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipelines.layout import DatasetLayout
from pipelines.refresh import read_failures

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 420
MODELS = ("sasrec", "behavior_set", "generative_sid", "blade")


def registry(path: Path) -> Path:
    base = yaml.safe_load((REPO / "data" / "datasets.yaml").read_text())
    taobao = base["datasets"]["taobao"]
    stages = taobao.get("stages", {})
    small = {**taobao, "synthetic": {"users": 300, "items": 250, "topics": 8, "seed": 5},
             "stages": {**stages, "semantic_ids": {**stages.get("semantic_ids", {}), "codes": 32},
                        "training": {"models": {m: {"epochs": 1} for m in MODELS}}}}
    doc = {"defaults": base.get("defaults", {}), "datasets": {"shop_a": small, "shop_b": {**small}, "shop_c": {**small}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records()]


def wait_for(what: str, condition, deadline: float, log: Path, every: float = 2.0):
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    pytest.fail(f"timed out waiting for {what}; daemon log tail:\n{tail}")


def test_a_dropped_file_refreshes_its_dataset_only_and_only_once(tmp_path):
    from pipelines.synthetic import SyntheticSpec, write_synthetic

    home, root = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MBREC_DATA_ROOT": str(root),
           "MBREC_REGISTRY": str(registry(tmp_path / "datasets.yaml")), "MBREC_SENSOR_INTERVAL_S": "5",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    staged = write_synthetic("taobao", tmp_path / "staged", SyntheticSpec(users=300, items=250, topics=8, seed=5))[0]
    log = home / "daemon.log"
    dg.DagsterInstance.from_config(str(home)).dispose()  # the schema exists before the daemon opens it (SQLite)
    with open(log, "wb") as out:
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                                  cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + TIMEOUT_S
            # the sensors tick with empty raw folders first: no run
            wait_for("the first raw-data sensor tick", lambda: _ticks(log, "raw_data_sensor"), deadline, log)
            assert runs(instance) == []

            a = DatasetLayout(root, "shop_a")
            a.raw_dir.mkdir(parents=True)
            shutil.copy(staged, a.raw_dir / ".incoming")
            (a.raw_dir / ".incoming").rename(a.raw_dir / "UserBehavior.csv")  # lands whole
            c = DatasetLayout(root, "shop_c")  # a broken drop: its failed run lands in its failure report
            c.raw_dir.mkdir(parents=True)
            (c.raw_dir / "UserBehavior.csv").write_text("not,a,taobao,line\n" * 50)

            wait_for("shop_a's downstream assets", lambda: _materialized(instance, "dataset_card", "shop_a")
                     and _materialized(instance, "cross_dataset_leaderboard", None), deadline, log, every=3)
            done = [r for r in runs(instance) if r.status == dg.DagsterRunStatus.SUCCESS]
            assert {r.tags.get("dagster/partition") for r in runs(instance)} <= {"shop_a", "shop_c", None}
            assert any(r.tags.get("mbrec/trigger") == "raw files changed" for r in done)
            assert any(r.tags.get("dagster/sensor_name") == "downstream_refresh" for r in done)
            for asset in ("canonical_events", "behavior_sets", "model_ready_sequences", "behavior_statistics",
                          "semantic_ids", "trained_sasrec", "evaluation", "dataset_card"):
                assert _materialized(instance, asset, "shop_a"), asset
                assert not _materialized(instance, asset, "shop_b"), asset
            assert not DatasetLayout(root, "shop_b").outputs_dir.exists()
            failed = wait_for("shop_c's failure report", lambda: read_failures(c), deadline, log)
            assert failed[-1]["failed_steps"][0]["step"] == "ingest" and "malformed" in failed[-1]["failed_steps"][0]["error"]
            assert not _materialized(instance, "behavior_sets", "shop_c")
            wait_for("every run to finish", lambda: all(r.is_finished for r in runs(instance)), deadline, log)
            count = len(runs(instance))

            # the same file again (same bytes, a new modification time): the sensor sees no change
            shutil.copy(staged, a.raw_dir / ".incoming")
            (a.raw_dir / ".incoming").replace(a.raw_dir / "UserBehavior.csv")
            ticks = _ticks(log, "raw_data_sensor")
            wait_for("two more raw-data sensor ticks", lambda: _ticks(log, "raw_data_sensor") >= ticks + 2,
                     deadline, log)
            time.sleep(6)  # and one automation tick
            assert len(runs(instance)) == count
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)


def _materialized(instance: dg.DagsterInstance, asset: str, partition: str | None) -> bool:
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1)
    return bool(record.records)


def _ticks(log: Path, sensor: str) -> int:
    """Evaluations of a sensor so far, from the daemon's log (it logs one line per evaluation)."""
    return log.read_text(errors="replace").count(f"Checking for new runs for sensor: {sensor}")
