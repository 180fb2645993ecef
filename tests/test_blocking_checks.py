"""Each blocking check fails on an injected violation, names it, and stops the asset downstream.

The session's full KuaiSAR run made every table; then, per case, the asset under test and its downstream asset run
again with the asset's stage function wrapped to corrupt what it wrote.
"""

from __future__ import annotations

import importlib
import shutil

import dagster as dg
import polars as pl
import pytest

from assets.definitions import defs
from pipelines.resources import PipelineSettings

ASSETS = list(defs.assets)
CHECKS = list(defs.asset_checks)


@pytest.fixture(scope="module")
def root(kuaisar_project):
    """The session's whole-graph KuaiSAR run (every table made; read-only, each case copies it)."""
    return kuaisar_project


def set_col(col, value, dtype):
    return lambda d: d.with_columns(pl.lit(value, dtype).alias(col))


CASES = [  # asset, stage function (module, name), file under outputs/kuaisar, corruption, failing check,
    # what its message must name (the column, key or file), downstream
    ("canonical_events", ("pipelines.ingest.core", "ingest_dataset"), "ingest/events.parquet",
     set_col("event_order", 1, pl.Int64), "canonical_events_contract", "event_order", "behavior_sets"),
    ("canonical_events", ("pipelines.ingest.core", "ingest_dataset"), "ingest/user_id_map.parquet",
     lambda d: d.head(d.height - 1), "ingest_consistency_check", "user", "behavior_sets"),
    ("behavior_sets", ("pipelines.sequences.stage", "materialize_steps"), "sequences/steps.parquet",
     set_col("behaviors", 0, pl.UInt16), "behavior_sets_contract", "behaviors", "split_leave_one_out"),
    ("split_eidp", ("pipelines.sequences.stage", "materialize_split"), "splits/eidp/examples.parquet",
     lambda d: d.with_columns((pl.col("target_step") + 1).alias("history_end")), "split_eidp_contract", "history_end", "leakage_audit"),
    ("split_temporal", ("pipelines.sequences.stage", "materialize_split"), "splits/temporal/examples.parquet",
     lambda d: d.with_columns(pl.lit([], pl.List(pl.UInt32)).alias("dropped_steps")), "split_temporal_consistency", "leaking history steps",
     "leakage_audit"),
    ("leakage_audit", ("pipelines.sequences.stage", "materialize_audit"), "leakage/audit.parquet",
     set_col("share_in_last_k", 2.0, pl.Float64), "leakage_audit_contract", "share_in_last_k", "dataset_card"),
    ("sequential_augmentation", ("assets.augmentation", "materialize_sequential_views"),
     "augmentation/eidp/sequential_views.parquet", set_col("behaviors", 0, pl.UInt16),
     "sequential_augmentation_contract", "behaviors", "dataset_card"),
    ("behavior_statistics", ("assets.augmentation", "materialize_statistics"), "statistics/eidp/statistics.json",
     lambda text: text.replace('"M": [\n  [\n   0,', '"M": [\n  [\n   7,', 1), "behavior_statistics_consistency", "M",
     "dataset_card"),
    ("sequence_exports", ("pipelines.sequences.stage", "materialize_exports"), "exports/blade/test.txt",
     lambda text: text + "3,4,0,0,0,0,0,0\n", "sequence_exports_contract", "test.txt", "dataset_card"),
    ("model_ready_sequences", ("pipelines.sequences.stage", "materialize_model_ready"),
     "model_ready/leave_one_out/test.parquet", set_col("target_item", 0, pl.UInt32), "model_ready_contract", "target_item",
     "dataset_card"),
]


@pytest.mark.parametrize(("asset", "stage_fn", "table", "corrupt", "check", "named", "downstream"), CASES,
                         ids=[case[4] for case in CASES])
def test_violation_fails_the_check_and_blocks_downstream(root, tmp_path, monkeypatch, asset, stage_fn, table, corrupt,
                                                         check, named, downstream):
    clean, root = root, tmp_path / "data"
    shutil.copytree(clean, root)  # each case starts from the clean outputs
    module = importlib.import_module(stage_fn[0])
    real = getattr(module, stage_fn[1])

    def corrupting(*args, **kwargs):
        out = real(*args, **kwargs)
        path = root / "outputs" / "kuaisar" / table
        if path.suffix == ".parquet":
            corrupt(pl.read_parquet(path)).write_parquet(path)
        else:  # text outputs: the corruption maps file text to file text
            path.write_text(corrupt(path.read_text()))
        return out

    monkeypatch.setattr(module, stage_fn[1], corrupting)
    result = dg.materialize([*ASSETS, *CHECKS], partition_key="kuaisar", raise_on_error=False,
                            resources={"settings": PipelineSettings(data_root=str(root))},
                            selection=dg.AssetSelection.assets(asset, downstream).required_multi_asset_neighbors())
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert check in evaluations and not evaluations[check].passed
    message = evaluations[check].metadata["message"].value
    assert named in message, f"{check}'s message does not name {named!r}: {message}"
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert asset in materialized and downstream not in materialized
