"""Run one dataset's sharded path from a shell: one Dagster run per partition, layer by layer.

    python -m assets.sharded_run taobao            # in this process's executor (MBREC_EXECUTOR)
    MBREC_EXECUTOR=celery MBREC_CELERY_BROKER=redis://host:6379/0 python -m assets.sharded_run taobao

In a deployment the daemon does this by itself (a run of ``event_shards`` for the dataset, then
declarative automation runs each layer once the layer above is complete, and the
``sharded_downstream`` sensor the dataset-level assets). This script is for the first load, scripts
and benchmarks: each partition is a ``dagster asset materialize`` run against the instance in
``$DAGSTER_HOME``, the shard runs of a layer launched together (the executor bounds how many compute
at once: Celery's workers, or ``--one-at-a-time``). It stops at the first failed run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.registry import REPO_ROOT, load_registry

LAYERS = (("event_shards", "dataset"), ("event_shard_ids", "shard"), ("dense_ids", "dataset"),
          ("shard_sequences", "shard"), ("sharded_dataset", "dataset"))


@dataclass
class LayerTiming:
    asset: str
    runs: int
    seconds: float


def partition_keys(dataset: str, shards: int, kind: str) -> list[str]:
    """A layer's partitions: the dataset, or ``<dataset>|<k>`` for every shard (Dagster's multi-key form)."""
    return [dataset] if kind == "dataset" else [f"{dataset}|{k}" for k in range(shards)]


def run_sharded(dataset: str, *, env: dict[str, str] | None = None, one_at_a_time: bool = False,
                log_dir: Path | None = None, log=print) -> list[LayerTiming]:
    """Materialize the ``shards`` group for one dataset; returns the wall time of each layer."""
    env = {**os.environ, **(env or {})}
    registry = load_registry(env.get("MBREC_REGISTRY") or None)
    cfg = registry.get(dataset)
    dagster = str(Path(sys.executable).with_name("dagster"))
    log_dir = log_dir or Path(env.get("DAGSTER_HOME", ".")) / "sharded_run_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for asset, kind in LAYERS:
        keys = partition_keys(dataset, cfg.shards, kind)
        started = time.perf_counter()
        batches = [[k] for k in keys] if one_at_a_time else [keys]
        for batch in batches:
            procs = []
            for key in batch:
                out = log_dir / f"{asset}.{key.replace('|', '-')}.log"
                cmd = [dagster, "asset", "materialize", "-m", "assets.definitions", "--select", asset,
                       "--partition", key]
                procs.append((key, out, subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out.open("w"),
                                                         stderr=subprocess.STDOUT)))
            failed = [(key, out) for key, out, p in procs if p.wait() != 0]
            if failed:
                key, out = failed[0]
                tail = "\n".join(out.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"{asset} [{key}] failed ({len(failed)} of {len(batch)} runs); log {out}:\n{tail}")
        timings.append(LayerTiming(asset, len(keys), round(time.perf_counter() - started, 2)))
        log(f"{dataset}: {asset} x{len(keys)} in {timings[-1].seconds:.1f} s")
    return timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--one-at-a-time", action="store_true", help="run a layer's shard runs one after another")
    args = ap.parse_args(argv)
    run_sharded(args.dataset, one_at_a_time=args.one_at_a_time)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
