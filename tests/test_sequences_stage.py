"""The sequence stage on generated data: the audit shows a clear leak before filtering, close to none after."""

from __future__ import annotations

import polars as pl
import pytest

from pipelines.ingest.core import ingest_dataset
from pipelines.sequences.stage import materialize_audit, materialize_split, materialize_steps
from pipelines.sources import resolve_raw_source
from pipelines.storage import DatasetPaths


@pytest.fixture(scope="module")
def taobao(tmp_path_factory, registry):
    cfg = registry.get("taobao")
    paths = DatasetPaths(tmp_path_factory.mktemp("data"), "taobao")
    src = resolve_raw_source(cfg, paths, log=lambda _: None)
    ingest_dataset(cfg, src.directory, paths.stage_dir("ingest"), log=lambda _: None)
    return cfg, paths


def test_generated_default_shows_a_clear_leak_and_filtering_removes_it(taobao):
    cfg, paths = taobao
    materialize_steps(cfg, paths, log=lambda _: None)
    for protocol in ("leave_one_out", "eidp", "session", "temporal"):
        summary = materialize_split(cfg, paths, protocol, log=lambda _: None)
        assert summary.examples > 100
    table = materialize_audit(cfg, paths, log=lambda _: None)
    loo = table.filter((pl.col("protocol") == "leave_one_out") & (pl.col("k") == 10))
    before = loo.filter(pl.col("filter") == "off").row(0, named=True)
    after = loo.filter(pl.col("filter") == "all").row(0, named=True)
    assert before["share_in_last_k"] > 0.3 and before["recent_hr"] > 0.3
    assert after["share_in_last_k"] < 0.15 and after["recent_hr"] < before["recent_hr"] / 3
    assert (paths.stage_dir("leakage") / "leakage_audit.md").read_text().startswith("# Leakage audit: taobao")


def test_many_shards_give_the_same_tables_as_one(taobao, tmp_path):
    import shutil

    import numpy as np

    from pipelines.sequences.stage import materialize_model_ready

    cfg, paths = taobao
    many = DatasetPaths(tmp_path, "taobao")
    shutil.copytree(paths.stage_dir("ingest"), many.stage_dir("ingest"))
    # many user shards, and windows expanded a few examples at a time (leakage filter, arrays)
    summaries = []
    for p, shard_rows, block in ((paths, 10**9, 10**9), (many, 7_000, 37)):
        summaries.append([materialize_steps(cfg, p, log=lambda _: None, rows_per_shard=shard_rows)])
        for protocol in ("leave_one_out", "temporal", "session", "eidp"):
            summaries[-1].append(materialize_split(cfg, p, protocol, log=lambda _: None, rows_per_shard=shard_rows,
                                                   examples_per_block=block))
        materialize_model_ready(cfg, p, log=lambda _: None, rows_per_shard=shard_rows, examples_per_block=block)
    one, several = summaries
    assert one[0].shards == 1 and several[0].shards > 1
    one[0].shards = several[0].shards = 0
    for s in (*one, *several):  # how they were made (the module's tables may be refreshed) aside
        s.mode, s.mode_reason, s.users_recomputed = "", "", 0
    # every count (users excluded, training-only users, leaks, roles) sums over the shards
    assert one == several
    assert one[-1].user_counts["users_training_only"] > 0  # eidp
    one_steps = pl.read_parquet(paths.stage_dir("sequences") / "steps.parquet")
    assert one_steps.equals(pl.read_parquet(many.stage_dir("sequences") / "steps.parquet"))
    for protocol in ("leave_one_out", "temporal", "session"):
        for f in ("roles", "examples", "examples_unfiltered", "train_examples"):
            a = pl.read_parquet(paths.stage_dir("splits") / protocol / f"{f}.parquet")
            b = pl.read_parquet(many.stage_dir("splits") / protocol / f"{f}.parquet")
            assert a.equals(b), (protocol, f)
        for role in ("train", "valid", "test"):
            with np.load(paths.stage_dir("model_ready") / protocol / f"{role}.npz") as x, \
                    np.load(many.stage_dir("model_ready") / protocol / f"{role}.npz") as y:
                assert all(np.array_equal(x[k], y[k]) for k in x.files)
    # a shard run writes the arrays only: the same bytes, no tables
    shutil.rmtree(many.stage_dir("model_ready"))
    materialize_model_ready(cfg, many, log=lambda _: None, rows_per_shard=7_000, examples_per_block=37, tables=False)
    for protocol in ("leave_one_out", "temporal", "session"):
        assert not list((many.stage_dir("model_ready") / protocol).glob("*.parquet"))
        for role in ("train", "valid", "test"):
            npz = f"{protocol}/{role}.npz"
            assert (paths.stage_dir("model_ready") / npz).read_bytes() == (many.stage_dir("model_ready") / npz).read_bytes()


def test_training_targets_can_be_filtered_too(taobao, tmp_path):
    import shutil

    cfg, paths = taobao
    other = DatasetPaths(tmp_path, "taobao")
    shutil.copytree(paths.stage_dir("ingest"), other.stage_dir("ingest"))
    cfg_f = cfg.model_copy(update={"stages": {"sequences": {"filter_training_targets": True}}})
    materialize_steps(cfg_f, other, log=lambda _: None)
    summary = materialize_split(cfg_f, other, "leave_one_out", log=lambda _: None)
    train = pl.read_parquet(other.stage_dir("splits") / "leave_one_out" / "train_examples.parquet")
    dropped = train["dropped_steps"].list.len().sum()
    assert summary.training_leak_steps_removed == dropped > 0


def test_a_window_that_empties_the_partition_is_a_clear_error(taobao, tmp_path):
    import shutil

    from pipelines.sequences.steps import EmptyPartitionError

    cfg, paths = taobao
    other = DatasetPaths(tmp_path, "taobao")
    shutil.copytree(paths.stage_dir("ingest"), other.stage_dir("ingest"))
    cfg_w = cfg.model_copy(update={"stages": {"sequences": {"time_from": "2030-01-01"}}})
    with pytest.raises(EmptyPartitionError, match=r"cleaning left no events .* 0 after the time window"):
        materialize_steps(cfg_w, other, log=lambda _: None)
    assert not (other.stage_dir("sequences") / "steps.parquet").exists()


def test_audit_plot_is_written_and_linked(taobao):
    cfg, paths = taobao
    png = (paths.stage_dir("leakage") / "leakage_audit.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "![leakage audit](leakage_audit.png)" in (paths.stage_dir("leakage") / "leakage_audit.md").read_text()


def test_model_ready_holds_a_few_blocks_not_the_ranges_arrays(taobao, tmp_path, monkeypatch):
    """Blocks are written as they are built: the memory held when a block is appended (tracemalloc
    sees numpy's buffers) stays at a few blocks' arrays, while the session protocol's arrays are
    many times that. When a user range's arrays were collected before any was written, every
    append came with the range's arrays held (3.9 GB at 20M Taobao rows)."""
    import shutil
    import tracemalloc

    import numpy as np

    from pipelines import storage
    from pipelines.sequences.stage import materialize_model_ready

    cfg, paths = taobao
    other = DatasetPaths(tmp_path, "taobao")
    shutil.copytree(paths.stage_dir("ingest"), other.stage_dir("ingest"))
    materialize_steps(cfg, other, log=lambda _: None)
    materialize_split(cfg, other, "session", log=lambda _: None)
    held: list[int] = []
    append = storage.NpzAppender.append

    def recording_append(self, arrays):
        held.append(tracemalloc.get_traced_memory()[0])
        return append(self, arrays)

    monkeypatch.setattr(storage.NpzAppender, "append", recording_append)
    tracemalloc.start()
    try:
        materialize_model_ready(cfg, other, log=lambda _: None, protocols=("session",), examples_per_block=200,
                                tables=False)
    finally:
        tracemalloc.stop()
    total, rows = 0, 0
    for role in ("train", "valid", "test"):
        with np.load(other.stage_dir("model_ready") / "session" / f"{role}.npz") as z:
            total += sum(z[k].nbytes for k in z.files)
            rows += len(z["user_ids"])
    block = total / rows * 200
    assert total > 20 * block and len(held) > 20
    assert max(held) < 8 * block, (max(held), total, block)
