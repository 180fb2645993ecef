"""User-hash shards (pipelines/shards.py): the hash, N = 1 vs N = 4 byte for byte, the same contents as
the single-machine pipeline, and the merge refusing incomplete or stale shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines import shards
from pipelines.augmentation.stage import materialize_statistics
from pipelines.ingest.core import ingest_dataset
from pipelines.layout import DatasetLayout
from pipelines.registry import RegistryError, load_registry
from pipelines.sequences import splits as sp
from pipelines.sequences import stage
from pipelines.sources import resolve_raw_source


def quiet(_msg: str) -> None:
    pass


def test_fnv1a64_matches_the_published_test_vectors():
    # FNV-1a 64-bit reference values (the algorithm's own test suite)
    got = shards.fnv1a64(pl.Series(["", "a", "foobar"]))
    assert [int(v) for v in got] == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]


def test_shard_of_is_stable_and_uses_every_shard():
    ids = pl.Series("raw_user_id", [str(i) for i in range(20_000)] + ["ünï", "x" * 300])
    a, b = shards.shard_of(ids, 4), shards.shard_of(ids.sample(fraction=1.0, shuffle=True, seed=1), 4)
    assert a.dtype == pl.UInt32 and a.max() < 4
    by_id = dict(zip(ids.to_list(), a.to_list(), strict=True))
    shuffled = ids.sample(fraction=1.0, shuffle=True, seed=1).to_list()
    assert [by_id[i] for i in shuffled] == b.to_list()  # a user's shard never depends on row order
    counts = np.bincount(a.to_numpy(), minlength=4)
    assert counts.min() > 0.2 * len(ids)  # roughly even


def run_sharded(cfg, raw_dir: Path, layout: DatasetLayout, n: int) -> None:
    shards.map_to_shards(cfg, raw_dir, layout, n, log=quiet)
    for k in range(n):
        shards.shard_raw_ids(cfg, layout, k, log=quiet)
    shards.merge_dense_ids(cfg, raw_dir, layout, log=quiet)
    for k in range(n):
        shards.shard_sequences(cfg, layout, k, log=quiet)
    shards.merge_shards(cfg, raw_dir, layout, log=quiet)
    stage.materialize_exports(cfg, layout, log=quiet)


def dataset_files(layout: DatasetLayout) -> dict[Path, bytes]:
    """Every dataset-level output (the shards' own work folders left out), by path below outputs/<d>."""
    out = {}
    for d, dirs, files in os.walk(layout.outputs_dir, followlinks=True):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x != "shards"]
        for f in files:
            if not f.startswith((".", "_")):
                p = Path(d) / f
                out[p.relative_to(layout.outputs_dir)] = p.read_bytes()
    return out


@pytest.mark.parametrize("name", ["kuaisar", "tenrec_qk_video"])  # timestamps and side files; no time column
def test_one_and_four_shards_give_the_same_bytes_and_the_single_machine_contents(tmp_path, name):
    cfg = load_registry().get(name)
    single = DatasetLayout(tmp_path / "single", name)
    raw = resolve_raw_source(cfg, single, log=quiet).directory
    ingest_dataset(cfg, raw, single.ingest_dir(), log=quiet)
    stage.materialize_steps(cfg, single, log=quiet)
    for protocol in sp.PROTOCOLS:
        stage.materialize_split(cfg, single, protocol, log=quiet)
    stage.materialize_model_ready(cfg, single, log=quiet)
    materialize_statistics(cfg, single, log=quiet)
    stage.materialize_exports(cfg, single, log=quiet)

    one, four = DatasetLayout(tmp_path / "n1", name), DatasetLayout(tmp_path / "n4", name)
    run_sharded(cfg, raw, one, 1)
    run_sharded(cfg, raw, four, 4)
    assert json.loads(four.shard_map_report().read_text())["shards"] == 4
    assert all(r > 0 for r in json.loads(four.shard_map_report().read_text())["rows_per_shard"])

    a, b = dataset_files(one), dataset_files(four)
    assert sorted(a) == sorted(b)
    assert [p for p in a if a[p] != b[p]] == []  # byte-identical, every file
    expected = {"ingest/events.parquet", "ingest/user_id_map.parquet", "statistics/leave_one_out/statistics.json",
                "model_ready/leave_one_out/test.npz", "exports/recbole/" + f"{name}.inter"}
    assert expected <= {str(p) for p in a}

    # the same contents as the single-machine pipeline (its own writer chunks row groups differently)
    reference = dataset_files(single)
    # the merged steps and splits carry no state (a single-machine refresh recomputes them in full),
    # but the temporal split, which runs on the merged steps; its state records its own file sizes
    # what a stage records of its inputs (to refresh only what changed) is not data: a merge of
    # shards writes none of it, but for the temporal split it computes on the merged steps
    bookkeeping = {"ingest_state.json", "steps_state.json", "split_state.json", "inputs.json"}
    assert {p for p in a if p.name not in bookkeeping} == {p for p in reference if p.name not in bookkeeping}
    for p in a:
        if p.name in bookkeeping:  # they record the files' sizes and footers
            continue
        if p.suffix == ".parquet":
            assert pl.read_parquet(single.outputs_dir / p).equals(pl.read_parquet(four.outputs_dir / p)), p
        elif p.suffix == ".npz":
            x, y = np.load(single.outputs_dir / p), np.load(four.outputs_dir / p)
            assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files), p
        elif p.name != "ingest_report.json":  # the report says how the run was made
            assert reference[p] == a[p], p
    # the model-ready arrays and tables are written from the same arrays the same way: the same bytes
    ready = [p for p in a if p.parts[0] == "model_ready" and p.name not in bookkeeping]
    assert len(ready) >= 6 and [p for p in ready if reference[p] != a[p]] == []
    report = json.loads((four.ingest_dir() / "ingest_report.json").read_text())
    single_report = json.loads((single.ingest_dir() / "ingest_report.json").read_text())
    for key in ("rows_read", "rows_kept", "rows_quarantined", "duplicates_dropped", "users", "items", "per_file"):
        assert report[key] == single_report[key], key


def test_a_user_lives_in_one_shard(tmp_path):
    cfg = load_registry().get("taobao")
    layout = DatasetLayout(tmp_path, "taobao")
    raw = resolve_raw_source(cfg, layout, log=quiet).directory
    shards.map_to_shards(cfg, raw, layout, 4, log=quiet)
    seen: dict[str, int] = {}
    for k in range(4):
        users = pl.read_parquet(layout.shard_bucket(k), columns=["raw_user_id"])["raw_user_id"].unique()
        assert (shards.shard_of(users, 4) == k).all()
        for u in users:
            assert seen.setdefault(u, k) == k


def test_the_merge_refuses_missing_or_stale_shards(tmp_path):
    cfg = load_registry().get("kuaisar")
    layout = DatasetLayout(tmp_path, "kuaisar")
    raw = resolve_raw_source(cfg, layout, log=quiet).directory
    shards.map_to_shards(cfg, raw, layout, 3, log=quiet)
    for k in range(3):
        shards.shard_raw_ids(cfg, layout, k, log=quiet)
    shards.merge_dense_ids(cfg, raw, layout, log=quiet)
    for k in (0, 2):
        shards.shard_sequences(cfg, layout, k, log=quiet)
    with pytest.raises(shards.ShardError, match=r"1 of 3 shard\(s\) not materialized by 'shard_sequences' \[1\]"):
        shards.merge_shards(cfg, raw, layout, log=quiet)
    assert not layout.steps().exists()  # nothing published
    shards.shard_sequences(cfg, layout, 1, log=quiet)
    shards.map_to_shards(cfg, raw, layout, 3, log=quiet)  # a new map: every shard is now stale
    with pytest.raises(shards.ShardError, match="built from an older shard map"):
        shards.merge_shards(cfg, raw, layout, log=quiet)
    with pytest.raises(shards.ShardError, match="no shard 3"):
        shards.shard_raw_ids(cfg, layout, 3, log=quiet)


def test_the_registry_refuses_shards_where_they_cannot_work(tmp_path):
    base = load_registry().path.read_text()
    bad = base.replace("  blade_qk_video:\n", "  blade_qk_video:\n    shards: 4\n", 1)
    path = tmp_path / "registry.yaml"
    path.write_text(bad)
    with pytest.raises(RegistryError, match="a split release is read whole"):
        load_registry(path)
    cfg = load_registry().get("taobao")
    kcore = cfg.model_copy(update={"stages": {"sequences": {"min_user_steps": 5}}})
    assert "k-core" in kcore.not_shardable(4) and kcore.not_shardable(1) is None
    with pytest.raises(shards.ShardError, match="k-core"):
        shards.map_to_shards(kcore, tmp_path, DatasetLayout(tmp_path, "taobao"), 4, log=quiet)
