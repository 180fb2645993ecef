"""Every table contract fails, naming the column or check, when its table is given a violation."""

from __future__ import annotations

import polars as pl
import pytest

from pipelines.contracts import validate_parquet
from schemas import ingest as si
from schemas import sequences as ss


@pytest.fixture(scope="module")
def out(kuaisar_project):
    """Every table of the session's whole-graph KuaiSAR run (read-only: violations go to copies)."""
    return kuaisar_project / "outputs" / "kuaisar"


CASES = [  # (table relative to outputs/<dataset>, model, violation, words the message must name)
    ("ingest/events.parquet", si.CanonicalEvents, lambda d: d.with_columns(pl.lit(3, pl.Int64).alias("event_order")), ["event_order"]),
    ("ingest/user_id_map.parquet", si.UserIdMap, lambda d: d.with_columns(pl.lit(5, pl.Int64).alias("raw_user_id")), ["raw_user_id"]),
    ("ingest/item_id_map.parquet", si.ItemIdMap, lambda d: d.with_columns(pl.lit(0, pl.UInt32).alias("item_id")), ["item_id"]),
    ("ingest/item_side_info.parquet", si.ItemSideInfo, lambda d: d.drop("brand_id"), ["brand_id"]),
    ("ingest/quarantine.parquet", si.Quarantine,
     lambda d: pl.DataFrame({"source_file": ["x"], "source_line": [0], "reason": ["r"], "raw_text": ["t"]},
                            schema={"source_file": pl.String, "source_line": pl.UInt32, "reason": pl.String, "raw_text": pl.String}),
     ["source_line"]),
    ("sequences/steps.parquet", ss.BehaviorSteps, lambda d: d.with_columns(pl.lit(0, pl.UInt16).alias("behaviors")), ["behaviors"]),
    ("sequences/user_digests.parquet", ss.UserDigests, lambda d: pl.concat([d, d.head(1)]), ["user_id"]),
    ("splits/leave_one_out/users.parquet", ss.SplitUsers, lambda d: d.with_columns(pl.col("flags").cast(pl.Int64)),
     ["flags"]),
    ("splits/leave_one_out/roles.parquet", ss.SplitRoles, lambda d: d.with_columns(pl.lit("training").alias("role")), ["role"]),
    ("splits/leave_one_out/examples.parquet", ss.EvaluationExamples,
     lambda d: d.with_columns((pl.col("target_step") + 1).alias("history_end")), ["history_before_target"]),
    ("leakage/audit.parquet", ss.LeakageAudit, lambda d: d.with_columns(pl.lit(1.5).alias("recent_hr")), ["recent_hr"]),
    ("splits/leave_one_out/examples_unfiltered.parquet", ss.EvaluationExamples,
     lambda d: d.with_columns(pl.lit("train").alias("role")), ["role"]),
    ("splits/leave_one_out/train_examples.parquet", ss.TrainingExamples,
     lambda d: d.with_columns(pl.lit(0, pl.UInt32).alias("target_step")), ["target_step"]),
    ("augmentation/leave_one_out/sequential_views.parquet", ss.SequentialViews,
     lambda d: d.with_columns(pl.lit(0, pl.UInt8).alias("view")), ["view"]),
    ("model_ready/leave_one_out/test.parquet", ss.ModelReadySequences,
     lambda d: d.with_columns(pl.lit(0, pl.UInt32).alias("target_item")), ["target_item"]),
]


@pytest.mark.parametrize(("table", "model", "violate", "named"), CASES, ids=[c[1].__name__ for c in CASES])
def test_contract_holds_then_fails_on_a_violation(out, tmp_path, table, model, violate, named):
    path = out / table
    assert validate_parquet(path, model).passed
    bad = tmp_path / "bad.parquet"
    violate(pl.read_parquet(path)).write_parquet(bad)
    r = validate_parquet(bad, model)
    assert not r.passed
    assert all(word in r.message for word in named), r.message


def test_exports_contract_catches_an_empty_set_and_a_bad_recbole_id(out, tmp_path):
    import shutil

    from pipelines.contracts import exports_contract
    from pipelines.layout import DatasetLayout

    layout = DatasetLayout(tmp_path, out.name)
    exports = layout.exports_dir()
    shutil.copytree(out / "exports", exports)
    assert exports_contract(layout).passed
    train = exports / "blade" / "train.txt"
    train.write_text(train.read_text() + "1,2,0,0,0,0\n")
    r = exports_contract(layout)
    assert not r.passed and "behaviors_are_binary_and_not_empty" in r.message and "blade/train.txt" in r.message
    shutil.copy(out / "exports" / "blade" / "train.txt", train)
    inter = next((exports / "recbole").glob("*.inter"))
    lines = inter.read_text().splitlines()
    lines[1] = "-4" + lines[1][lines[1].index("\t"):]
    inter.write_text("\n".join(lines) + "\n")
    r = exports_contract(layout)
    assert not r.passed and "user_id:token" in r.message


def test_a_check_over_several_tables_reports_all_of_them_or_the_first_failure(tmp_path):
    from pipelines.contracts import ContractResult, combined

    ok = [ContractResult(True, "A", 10, 10, "A holds"), ContractResult(True, "B", 5, 3, "B holds")]
    both = combined(ok)
    assert (both.passed, both.table, both.rows, both.rows_checked) == (True, "A, B", 15, 13)
    assert both.message == "A holds; B holds"
    bad = ContractResult(False, "C", 4, 4, "C failed")
    assert combined([*ok, bad, ContractResult(False, "D", 1, 1, "D failed")]) is bad
