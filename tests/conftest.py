from __future__ import annotations

import os

# Under pytest-xdist the workers share the cores: size each worker's thread pools (torch's OpenMP,
# MKL, polars) so that workers x threads <= cores. Oversubscribed OpenMP pools wait on each other's
# descheduled threads and run small ops many times slower. Set before torch or polars is imported.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
        os.environ.setdefault(_var, _threads)

from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
import pytest  # noqa: E402

from pipelines.ingest.core import ingest_dataset  # noqa: E402
from pipelines.registry import DatasetConfig, load_registry  # noqa: E402


@pytest.fixture(scope="session")
def registry():
    return load_registry()


def with_options(cfg: DatasetConfig, **ingest_options) -> DatasetConfig:
    return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update=ingest_options)})


def write(directory: Path, name: str, text: str, newline: str = "\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def run_ingest(cfg: DatasetConfig, raw: Path, out: Path, **kw):
    summary = ingest_dataset(cfg, raw, out, log=lambda _: None, **kw)
    tables = {name: pl.read_parquet(out / f"{name}.parquet")
              for name in ("events", "user_id_map", "item_id_map", "item_side_info", "quarantine")}
    return summary, tables


def ingested(cfg: DatasetConfig, root: Path):
    """Generate the dataset's synthetic raw files under ``root`` and ingest them; returns its DatasetPaths."""
    from pipelines.sources import resolve_raw_source
    from pipelines.storage import DatasetPaths

    paths = DatasetPaths(root, cfg.name)
    source = resolve_raw_source(cfg, paths, log=lambda _: None)
    ingest_dataset(cfg, source.directory, paths.stage_dir("ingest"), log=lambda _: None)
    return paths


TRAINABLE = ("sasrec", "behavior_set", "generative_sid", "blade")


def materialize_project(dataset: str, root: Path, training: dict | None = None) -> Path:
    """Run the project's own `materialize_all` job for one partition against ``root``; returns its outputs.

    ``training``: run config of the trained_* assets, either one config for every model or one per
    model name (models not named get the registry's defaults); by default one epoch each (tests that
    are not about model quality stay fast)."""
    import dagster as dg

    from assets.definitions import defs

    training = {"epochs": 1} if training is None else training
    per_model = any(k in TRAINABLE for k in training)
    ops = {f"trained_{name}": {"config": training.get(name, {}) if per_model else training} for name in TRAINABLE}
    with dg.DagsterInstance.ephemeral() as instance:
        run = defs.resolve_job_def("materialize_all").execute_in_process(
            partition_key=dataset, instance=instance,
            run_config={"resources": {"settings": {"config": {"data_root": str(root)}}}, "ops": ops})
    assert run.success
    return root / "outputs" / dataset


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """A directory ``build(root)`` fills once per test session, shared by the pytest-xdist workers
    (they have separate processes and temp dirs; a file lock under their common parent decides who
    builds, the others wait and reuse). Without xdist it is a plain session-scoped temp dir."""
    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.mktemp(name)
        build(root)
        return root
    shared = tmp_path_factory.getbasetemp().parent / f"shared_{name}"
    with FileLock(str(shared) + ".lock"):
        if not (shared / ".done").is_file():
            shared.mkdir(exist_ok=True)
            build(shared)
            (shared / ".done").touch()
    return shared


@pytest.fixture(scope="session")
def kuaisar_project(tmp_path_factory) -> Path:
    """Generated KuaiSAR through the whole job, once per session (read-only: copy before changing)."""
    return shared_once(tmp_path_factory, "kuaisar_project", lambda root: materialize_project("kuaisar", root))


# The longest files start first (longest-processing-time-first scheduling): with --dist loadfile a
# file runs on one worker, and the whole-graph Taobao training fixture alone takes most of the run,
# so it must not start last. Order within a file is kept (the sort is stable). pytest-xdist would
# reorder files by their number of tests unless told not to (--no-loadscope-reorder in addopts).
# The first three go one to each worker; a worker whose file has at most two tests left is handed
# the next file at once, so the next two (the UI and BLADE files) queue behind the sharded and daemon
# tests. The first file that needs the shared KuaiSAR project (test_semantic_ids) builds it while
# the other files that read it come later. Seconds are from a run of the whole suite on 2 cores.
SLOWEST_FIRST = ("test_training_assets.py",  # 326 s
                 "test_sharded_runs.py",  # 160 s
                 "test_refresh_daemon.py",  # 148 s
                 "test_ui.py",  # 137 s
                 "test_blade.py",  # 136 s
                 "test_demo_signals.py",  # 62 s
                 "test_object_store.py",  # 45 s alone, mostly waiting on the store and CLI runs
                 "test_semantic_ids.py",  # 51 s, builds the shared KuaiSAR project
                 "test_dataset_card.py",  # 51 s
                 "test_contracts.py", "test_reproducible.py", "test_shards.py", "test_sequence_assets.py",
                 "test_blocking_checks.py", "test_distributed.py", "test_synthetic.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))
