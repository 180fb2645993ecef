"""An object-store data root, against a real S3-compatible store (SeaweedFS from tests/services.py):
working copies on two "machines" see each published stage whole, a push interrupted before its link
leaves readers on the old version, assets materialized on an ``s3://`` root equal a local run byte for
byte, and the raw-data sensor sees a drop that lands in the store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.automation import raw_data_sensor
from assets.ingest import ingest, ingest_checks
from assets.sequences import sequence_assets, sequence_checks
from pipelines.layout import DatasetLayout, data_root_path
from pipelines.remote import LINK_SUFFIX, ObjectStoreError, RemoteRoot, dataset_scopes, work_dir_for
from pipelines.remote import main as remote_main
from pipelines.resources import PipelineSettings
from pipelines.storage import VersionedOutputs, write_text_atomic
from tests.services import REPO, object_store  # noqa: F401 (fixture)

SCOPES = dataset_scopes("shop")


def _copy(store, prefix: str, local: Path) -> RemoteRoot:
    return RemoteRoot(store.url(prefix), local, store.options)


def _publish(layout: DatasetLayout, stage: str, files: dict[str, bytes]) -> str:
    with VersionedOutputs(layout.stage_dir(stage)) as out:
        for name, data in files.items():
            out.path(name).write_bytes(data)
        out.publish()
    return os.readlink(layout.stage_dir(stage))


def _keys(store, prefix: str) -> set[str]:
    fs = store.filesystem()
    base = f"{store.bucket}/{prefix}/"
    return {k[len(base):] for k in fs.find(base)}


def test_a_published_stage_reaches_another_working_copy_whole(object_store, tmp_path, monkeypatch, capsys):
    a, b = _copy(object_store, "copies", tmp_path / "a"), _copy(object_store, "copies", tmp_path / "b")
    la, lb = DatasetLayout(a.local, "shop"), DatasetLayout(b.local, "shop")
    la.raw_dir.mkdir(parents=True)
    (la.raw_dir / "events_1.csv").write_text("u1,i1,pv,1\n")
    v1 = _publish(la, "steps", {"steps.parquet": b"one", "summary.json": b"{}"})
    write_text_atomic("# report\n", la.stage_dir("reports") / "r.md")
    (la.outputs_dir / ".steps.staging-abc").mkdir()  # what a killed run leaves: never sent
    (la.outputs_dir / ".x.parquet.123.tmp").write_bytes(b"half")
    (la.outputs_dir / ".lock").write_text("{}")

    first = a.push(SCOPES)
    keys = _keys(object_store, "copies")
    assert keys == {"raw/shop/events_1.csv", f"outputs/shop/{v1}/steps.parquet", f"outputs/shop/{v1}/summary.json",
                    f"outputs/shop/{v1}/_manifest.json", "outputs/shop/steps" + LINK_SUFFIX,
                    "outputs/shop/reports/r.md"}
    assert first.files == 5 and first.links == 1
    assert object_store.filesystem().cat_file(f"{object_store.bucket}/copies/outputs/shop/steps{LINK_SUFFIX}") == v1.encode()
    assert a.push(SCOPES).files == 0  # nothing changed: nothing sent

    b.pull(SCOPES)
    assert os.readlink(lb.stage_dir("steps")) == v1
    assert (lb.stage_dir("steps") / "steps.parquet").read_bytes() == b"one"
    assert (lb.raw_dir / "events_1.csv").read_text() == "u1,i1,pv,1\n"
    assert (lb.stage_dir("reports") / "r.md").read_text() == "# report\n"
    assert b.pull(SCOPES).files == 0

    # two more versions: the stage keeps the current and the previous one, here and in the store
    _publish(la, "steps", {"steps.parquet": b"two", "summary.json": b"{}"})
    v3 = _publish(la, "steps", {"steps.parquet": b"three", "summary.json": b"{}"})
    pushed = a.push(SCOPES)
    assert pushed.deleted == 3 and not any(k.startswith(f"outputs/shop/{v1}/") for k in _keys(object_store, "copies"))
    b.pull(SCOPES)
    assert os.readlink(lb.stage_dir("steps")) == v3 and (lb.stage_dir("steps") / "steps.parquet").read_bytes() == b"three"
    assert not (lb.outputs_dir / v1).exists()

    # a raw file deleted in the store is deleted in the other copy too
    object_store.filesystem().rm_file(f"{object_store.bucket}/copies/raw/shop/events_1.csv")
    assert b.pull(SCOPES).deleted == 1 and not (lb.raw_dir / "events_1.csv").exists()

    # by hand: python -m pipelines.remote pull shop, with the data root in the environment
    monkeypatch.setenv("MBREC_DATA_ROOT", object_store.url("copies"))
    monkeypatch.setenv("MBREC_STORAGE_OPTIONS", json.dumps(object_store.options))
    monkeypatch.setenv("MBREC_WORK_DIR", str(tmp_path / "laptop"))
    assert remote_main(["pull", "shop"]) == 0
    assert "7 file(s) downloaded (0.0 MB), 1 link(s) switched" in capsys.readouterr().out  # two versions, the report
    assert (DatasetLayout(tmp_path / "laptop", "shop").stage_dir("steps") / "steps.parquet").read_bytes() == b"three"


def test_a_push_that_dies_before_its_link_leaves_readers_on_the_old_version(object_store, tmp_path, monkeypatch):
    a, b = _copy(object_store, "killed", tmp_path / "a"), _copy(object_store, "killed", tmp_path / "b")
    la, lb = DatasetLayout(a.local, "shop"), DatasetLayout(b.local, "shop")
    v1 = _publish(la, "steps", {"steps.parquet": b"old"})
    a.push(SCOPES)
    v2 = _publish(la, "steps", {"steps.parquet": b"new"})

    def dies(*args, **kwargs):
        raise ConnectionError("connection reset while writing the link object")

    monkeypatch.setattr(a.fs, "pipe_file", dies)
    with pytest.raises(ConnectionError):
        a.push(SCOPES)
    assert f"outputs/shop/{v2}/steps.parquet" in _keys(object_store, "killed")  # the new files went up ...
    b.pull(SCOPES)
    assert os.readlink(lb.stage_dir("steps")) == v1  # ... but a reader still sees the old version whole
    assert (lb.stage_dir("steps") / "steps.parquet").read_bytes() == b"old"
    monkeypatch.undo()
    a.push(SCOPES)  # the next push completes the publish
    b.pull(SCOPES)
    assert (lb.stage_dir("steps") / "steps.parquet").read_bytes() == b"new"


def test_a_link_to_a_version_the_store_lacks_is_refused(object_store, tmp_path):
    fs = object_store.filesystem()
    fs.pipe_file(f"{object_store.bucket}/dangling/outputs/shop/steps{LINK_SUFFIX}", b".steps.v-000000000000")
    with pytest.raises(ObjectStoreError, match="does not hold"):
        _copy(object_store, "dangling", tmp_path / "b").pull(SCOPES)
    fs.pipe_file(f"{object_store.bucket}/dangling/outputs/shop/steps{LINK_SUFFIX}", b"../../etc")
    with pytest.raises(ObjectStoreError, match="version folder"):
        _copy(object_store, "dangling", tmp_path / "c").pull(SCOPES)


def test_the_data_root_setting_names_a_folder_or_a_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MBREC_WORK_DIR", str(tmp_path / "work"))
    assert data_root_path(str(tmp_path)) == tmp_path
    assert data_root_path(f"file://{tmp_path}/with%20space") == tmp_path / "with space"
    assert data_root_path("s3://bucket/mbrec") == tmp_path / "work"
    assert PipelineSettings(data_root=str(tmp_path)).remote() is None
    monkeypatch.delenv("MBREC_WORK_DIR")
    assert work_dir_for("s3://bucket/mbrec") != work_dir_for("s3://bucket/other")
    with pytest.raises(ValueError, match="this machine"):
        data_root_path("file://otherhost/data")


# ------------------------------------------------------------------------------------ through Dagster
ASSETS = [ingest, *sequence_assets, *ingest_checks, *sequence_checks]


def _tables(outputs: Path) -> dict[str, bytes]:
    """Every published table of a dataset (parquet and npz, through the stage links), by path."""
    out = {}
    for path in sorted(outputs.rglob("*")):
        rel = path.relative_to(outputs)
        if path.suffix in (".parquet", ".npz") and not any(p.startswith(".") for p in rel.parts):
            out[rel.as_posix()] = path.read_bytes()
    return out


def test_assets_on_an_object_store_root_equal_a_local_run(object_store, tmp_path, monkeypatch):
    from pipelines.synthetic import SyntheticSpec, write_synthetic

    (raw,) = write_synthetic("taobao", tmp_path / "gen", SyntheticSpec(users=120, items=100, topics=4, seed=3))
    url = object_store.url("e2e")
    fs = object_store.filesystem()
    fs.put_file(str(raw), f"{object_store.bucket}/e2e/raw/taobao/{raw.name}")
    monkeypatch.setenv("MBREC_STORAGE_OPTIONS", json.dumps(object_store.options))
    monkeypatch.setenv("MBREC_WORK_DIR", str(tmp_path / "machine_a"))

    on_store = dg.materialize(ASSETS, partition_key="taobao", resources={"settings": PipelineSettings(data_root=url)})
    assert on_store.success and all(e.passed for e in on_store.get_asset_check_evaluations())
    local_root = tmp_path / "local"
    (local_root / "raw" / "taobao").mkdir(parents=True)
    shutil.copy(raw, local_root / "raw" / "taobao" / raw.name)
    local = dg.materialize(ASSETS, partition_key="taobao", resources={"settings": PipelineSettings(data_root=str(local_root))})
    assert local.success

    # another machine's working copy, from the store alone
    machine_b = RemoteRoot(url, tmp_path / "machine_b", object_store.options)
    machine_b.pull(dataset_scopes("taobao"))
    expected = _tables(local_root / "outputs" / "taobao")
    assert len(expected) > 10
    assert _tables(machine_b.local / "outputs" / "taobao") == expected
    assert not any("/." in k and ".v-" not in k for k in _keys(object_store, "e2e"))  # no temporary names

    # a new drop lands in the store: the raw-data sensor (another process, its own working copy) asks for a run
    monkeypatch.setenv("MBREC_WORK_DIR", str(tmp_path / "sensor"))
    settings = PipelineSettings(data_root=url)
    with dg.build_sensor_context(cursor=None, resources={"settings": settings}) as context:
        first = raw_data_sensor(context)
    assert first.run_requests == []  # first look: the store's published ingest already holds the raw file
    fs.pipe_file(f"{object_store.bucket}/e2e/raw/taobao/day2.csv", b"1,2,3,pv,1511544999\n")
    with dg.build_sensor_context(cursor=first.cursor, resources={"settings": settings}) as context:
        second = raw_data_sensor(context)
    assert [(r.partition_key, r.tags["mbrec/changed_files"]) for r in second.run_requests] == [("taobao", "day2.csv")]


def test_shard_runs_on_other_machines_pull_only_their_own_bucket(object_store, tmp_path, monkeypatch):
    """Every layer of a sharded dataset as its own Dagster run on its own working copy (a machine), the
    store between them: each shard machine downloads its bucket only, and the merge equals the shards
    computed here in one folder."""
    from pipelines import shards
    from pipelines.registry import load_registry
    from pipelines.sources import resolve_raw_source
    from tests.test_sharded_runs import DATASET, SHARDS, sharded_registry
    from tests.test_shards import dataset_files

    registry = sharded_registry(tmp_path / "registry.yaml")
    cfg = load_registry(registry).get(DATASET)
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

    url = object_store.url("sharded")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "MBREC_REGISTRY": str(registry), "MBREC_DATA_ROOT": url, "DAGSTER_HOME": str(home),
           "MBREC_STORAGE_OPTIONS": json.dumps(object_store.options), "MBREC_EXECUTOR": "in_process"}
    dagster = str(Path(sys.executable).with_name("dagster"))

    def run(asset: str, machine: str, shard: int | None = None) -> None:
        key = DATASET if shard is None else f"{DATASET}|{shard}"
        done = subprocess.run([dagster, "asset", "materialize", "-m", "assets.definitions", "--select", asset,
                               "--partition", key], cwd=REPO, env={**env, "MBREC_WORK_DIR": str(tmp_path / machine)},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run("event_shards", "map")
    for k in range(SHARDS):
        run("event_shard_ids", f"shard{k}", k)
    run("dense_ids", "merge")
    for k in range(SHARDS):
        run("shard_sequences", f"shard{k}", k)
    run("sharded_dataset", "merge")

    for k in range(SHARDS):
        buckets = sorted(p.name for p in (tmp_path / f"shard{k}").rglob("bucket-*.parquet"))
        assert buckets == [DatasetLayout(here.root, DATASET).shard_bucket(k).name], buckets
        assert not (tmp_path / f"shard{k}" / "outputs" / DATASET / "shards" / f"{1 - k:04d}").exists()
    merged, expected = dataset_files(DatasetLayout(tmp_path / "merge", DATASET)), dataset_files(here)
    assert merged.pop(Path("ingest/source.json"))  # the asset also publishes where the raw files came from
    assert sorted(merged) == sorted(expected) and [p for p in expected if expected[p] != merged[p]] == []
