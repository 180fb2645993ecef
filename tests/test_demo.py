"""What `make demo` trains and in which order it runs the datasets (no run here: the run config is
validated against the real job, as Dagster does when a run is launched)."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.definitions import defs
from assets.demo import DEMO_TRAINING, demo_budgets_line, demo_run_config, longest_first
from assets.partitions import dataset_partitions
from pipelines.resources import PipelineSettings
from pipelines.training.stage import DEFAULT_PARAMS, MODEL_SPECS, split_configs


def test_the_demo_budgets_name_every_trainable_model_and_settings_they_accept():
    trainable = {name for name, spec in MODEL_SPECS.items() if spec.config is not None}
    assert set(DEMO_TRAINING) == trainable
    for name, budget in DEMO_TRAINING.items():
        _, train = split_configs(name, DEFAULT_PARAMS.get(name, {}) | budget)
        assert (train.epochs, train.batch_size) == (budget["epochs"], budget["batch_size"])
    line = demo_budgets_line(DEMO_TRAINING)
    assert all(f"{m} {b['epochs']} epochs, batch {b['batch_size']}" in line for m, b in DEMO_TRAINING.items())
    assert "--full-training" in line and "defaults" in demo_budgets_line({})


def test_the_demo_run_config_is_one_the_job_accepts():
    job = defs.resolve_job_def("materialize_all")
    dg.validate_run_config(job, demo_run_config(DEMO_TRAINING))
    dg.validate_run_config(job, demo_run_config({}))
    with pytest.raises(dg.DagsterInvalidConfigError):  # a misspelt setting fails before any run
        dg.validate_run_config(job, demo_run_config({"sasrec": {"batch": 32}}))


def test_the_largest_datasets_start_first(tmp_path):
    settings = PipelineSettings()
    keys = dataset_partitions.get_partition_keys()
    order = longest_first(keys, settings)
    work = {k: settings.dataset(k).synthetic.users * settings.dataset(k).synthetic.events_per_user for k in keys}
    assert sorted(order) == sorted(keys)
    assert [work[k] for k in order] == sorted(work.values(), reverse=True)
    # real files count by their bytes, ahead of any generated dataset of this registry
    local = PipelineSettings(data_root=str(tmp_path))
    smallest = order[-1]
    raw = local.paths(smallest).raw_dir
    raw.mkdir(parents=True)
    (raw / "events.csv").write_bytes(b"x" * 10_000_000)
    assert longest_first(keys, local)[0] == smallest
