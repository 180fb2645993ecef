"""Great Expectations suites run for real and write Data Docs; violations fail them by name."""

from __future__ import annotations

import polars as pl

from conftest import ingested
from pipelines.quality import Suite, canonical_events_suite, model_ready_suite, run_suites
from pipelines.sequences.stage import materialize_model_ready, materialize_split, materialize_steps
from schemas import columns as c


def test_suites_pass_on_generated_data_and_catch_violations(tmp_path, registry, capfd):
    import tqdm  # imported before the suites run, as other libraries do: the env switch is too late then

    assert tqdm is not None
    cfg = registry.get("tenrec_qk_video")
    paths = ingested(cfg, tmp_path)
    events = paths.stage_dir("ingest") / "events.parquet"
    docs = tmp_path / "docs"
    r = canonical_events_suite(cfg, events, docs)
    assert r.success and r.failed == 0 and r.evaluated >= 9
    assert r.docs_index.is_file() and "canonical_events" in r.docs_index.read_text()
    assert "Calculating Metrics" not in "".join(capfd.readouterr())  # no progress bars flooding the run log

    bad = tmp_path / "bad.parquet"
    pl.read_parquet(events).with_columns(pl.lit(99, pl.UInt16).alias(c.BEHAVIORS)).write_parquet(bad)
    r = canonical_events_suite(cfg, bad, tmp_path / "docs_bad")
    assert not r.success and r.failed == 1
    assert r.failed_expectations == ["expect_column_values_to_be_between(behaviors)"]

    materialize_steps(cfg, paths, log=lambda _: None)
    materialize_split(cfg, paths, "leave_one_out", log=lambda _: None)
    materialize_model_ready(cfg, paths, log=lambda _: None)
    table = paths.stage_dir("model_ready") / "leave_one_out" / "test.parquet"
    t = pl.read_parquet(table)
    t.with_columns(pl.lit(0, pl.UInt32).alias(c.USER_ID)).write_parquet(bad)
    # several tables' suites in one context: each keeps its own result, the site has a page per suite
    good_suite, bad_suite = model_ready_suite(cfg, table, 50), model_ready_suite(cfg, bad, 50)
    bad_suite = Suite("model_ready_bad", bad_suite.frame, bad_suite.expectations)
    results = run_suites([good_suite, bad_suite], tmp_path / "docs_mr")
    assert results["model_ready_leave_one_out_test"].success
    r = results["model_ready_bad"]
    assert not r.success and "expect_column_values_to_be_unique(user_id)" in r.failed_expectations
    index = r.docs_index.read_text()
    assert "model_ready_leave_one_out_test" in index and "model_ready_bad" in index
