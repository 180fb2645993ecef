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
        assert summary["examples"] > 100
    table = materialize_audit(cfg, paths, log=lambda _: None)
    loo = table.filter((pl.col("protocol") == "leave_one_out") & (pl.col("k") == 10))
    before = loo.filter(pl.col("filter") == "off").row(0, named=True)
    after = loo.filter(pl.col("filter") == "all").row(0, named=True)
    assert before["share_in_last_k"] > 0.3 and before["recent_hr"] > 0.3
    assert after["share_in_last_k"] < 0.15 and after["recent_hr"] < before["recent_hr"] / 3
    assert (paths.stage_dir("leakage") / "leakage_audit.md").read_text().startswith("# Leakage audit: taobao")
