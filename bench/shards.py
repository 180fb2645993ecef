"""Benchmark: user-hash shards, in one run and side by side.

    python bench/shards.py                          # 2M generated Taobao rows
    python bench/shards.py --rows 1e8 --per-stage   # the figures of the scale-out issue (100M rows)

Prints, for one Taobao-format file:

1. **In-process vs Celery.** The single-machine chain in one process (ingest, steps, every split,
   model-ready arrays, statistics: the tables the sharded path also writes; ``--per-stage``: one
   process per stage, which shows each stage's peak) against the sharded path with ``--shards``
   shards as Dagster runs on real ``dagster-celery`` workers with a real Redis broker: ``--workers``
   shard workers on the shard queue (``MBREC_CELERY_SHARD_QUEUE``), each pinned to one core, and
   one dataset-level worker on the default queue for the map, the dense ids and the merge; one task
   at a time each, pool processes reused as Celery does by default. Wall time of each (Python's
   ``time.perf_counter``), peak RSS of the in-process run (``/usr/bin/time -v``) and of every step
   of the sharded runs (the step's own high-water mark, from the run's metadata), and the engine's
   overhead = sharded wall / in-process wall - 1.
2. **Peak memory per shard run** for each of ``--memory-shards`` (default 1, 4, 16): the map step
   and every shard's ``shard_sequences`` each in its own process under ``/usr/bin/time -v``; the
   largest shard's peak should fall roughly as 1/N.

Needs Debian's ``redis-server`` for part 1 (``make test`` installs it); ``--no-celery`` skips it.
Generated data and results are cached in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PY = sys.executable
SHARD_QUEUE = "shards"


def generate(work: Path, rows: int) -> Path:
    out = work / f"taobao_{rows}"
    csv = out / "UserBehavior.csv"
    if not (out / ".done").is_file():
        print(f"generating {rows:,} Taobao rows into {out} ...", flush=True)
        subprocess.run([PY, "-m", "pipelines.synthetic", "--format", "taobao", "--rows", str(rows), "--out", str(out)],
                       check=True, cwd=REPO)
        (out / ".done").touch()
    return csv


def setup_root(root: Path, csv: Path, shards: int) -> Path:
    """A data root whose raw/taobao/ holds the file, and a registry with ``shards`` for taobao."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "raw" / "taobao").mkdir(parents=True)
    (root / "raw" / "taobao" / "UserBehavior.csv").symlink_to(csv)
    text = (REPO / "data" / "datasets.yaml").read_text()
    registry = root / "datasets.yaml"
    registry.write_text(re.sub(r"^  taobao:\n", f"  taobao:\n    shards: {shards}\n", text, count=1, flags=re.M))
    return registry


def timed_process(code: str, env: dict[str, str]) -> tuple[float, float]:
    """Run ``python -c code`` under /usr/bin/time -v; (wall seconds, peak RSS in MB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        started = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-v", "-o", t.name, PY, "-c", code], check=True, cwd=REPO, env=env)
        wall = time.perf_counter() - started
        peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", Path(t.name).read_text()).group(1))
    return wall, peak / 1024


SINGLE = """
from pipelines.registry import load_registry
from pipelines.layout import DatasetLayout
from pipelines.ingest.core import ingest_dataset
from pipelines.sequences import stage, splits as sp
from pipelines.augmentation.stage import materialize_statistics
import os
q = lambda m: None
cfg = load_registry().get("taobao")
L = DatasetLayout(__import__("pathlib").Path(os.environ["MBREC_DATA_ROOT"]), "taobao")
ingest_dataset(cfg, L.raw_dir, L.ingest_dir(), log=q)
stage.materialize_steps(cfg, L, log=q)
for p in sp.PROTOCOLS:
    stage.materialize_split(cfg, L, p, log=q)
stage.materialize_model_ready(cfg, L, log=q)
materialize_statistics(cfg, L, log=q)
"""

STEP = """
import os, pathlib
from pipelines.registry import load_registry
from pipelines.layout import DatasetLayout
from pipelines import shards
cfg = load_registry().get("taobao")
L = DatasetLayout(pathlib.Path(os.environ["MBREC_DATA_ROOT"]), "taobao")
q = lambda m: None
{call}
"""


# the single-machine chain's stages, each as its own process (as Dagster's multiprocess executor runs
# the steps): the peak per stage, which a one-process chain cannot show
STAGES = {
    "ingest": "from pipelines.ingest.core import ingest_dataset\ningest_dataset(cfg, L.raw_dir, L.ingest_dir(), log=q)",
    "steps": "from pipelines.sequences import stage\nstage.materialize_steps(cfg, L, log=q)",
    **{f"split {p}": f"from pipelines.sequences import stage\nstage.materialize_split(cfg, L, {p!r}, log=q)"
       for p in ("leave_one_out", "temporal", "session", "eidp", "released")},
    "model-ready": "from pipelines.sequences import stage\nstage.materialize_model_ready(cfg, L, log=q)",
    "statistics": "from pipelines.augmentation.stage import materialize_statistics\nmaterialize_statistics(cfg, L, log=q)",
}


def single_machine(csv: Path, work: Path, per_stage: bool) -> float:
    """The single-machine chain: in one process, or (``per_stage``) one process per stage."""
    root = work / "single"
    registry = setup_root(root, csv, 1)
    env = {**os.environ, "MBREC_REGISTRY": str(registry), "MBREC_DATA_ROOT": str(root)}
    if not per_stage:
        wall_single, peak_single = timed_process(SINGLE, env)
        print(f"in-process chain: {wall_single:.1f} s, peak RSS {peak_single:,.0f} MB", flush=True)
        shutil.rmtree(root, ignore_errors=True)  # (at 100M rows its outputs are about 25 GB of disk)
        return wall_single
    from pipelines.sequences import splits as sp

    total, peaks = 0.0, {}
    for name, call in STAGES.items():
        if name.startswith("split ") and name.removeprefix("split ") not in sp.PROTOCOLS:
            continue
        wall, peak = timed_process(STEP.format(call=call), env)
        total += wall
        peaks[name] = peak
        print(f"  single machine, {name}: {wall:.1f} s, peak RSS {peak:,.0f} MB", flush=True)
    print(f"single-machine chain, one process per stage: {total:.1f} s, largest peak RSS "
          f"{max(peaks.values()):,.0f} MB ({max(peaks, key=peaks.get)})", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return total


def in_process_vs_celery(csv: Path, work: Path, n: int, workers: int, per_stage: bool,
                         single_seconds: float | None = None) -> None:
    if single_seconds:
        wall_single = single_seconds
        print(f"single-machine chain: {wall_single:.1f} s (given, not run)", flush=True)
    else:
        wall_single = single_machine(csv, work, per_stage)

    if not shutil.which("redis-server"):
        print("redis-server not installed: no Celery figures (make test installs it)")
        return
    from assets.sharded_run import run_sharded
    from tests.services import celery_workers, redis_server

    root = work / "celery"
    registry = setup_root(root, csv, n)
    home = root / "dagster_home"
    home.mkdir()
    cores = sorted(os.sched_getaffinity(0))
    with redis_server() as url:
        env = {**os.environ, "MBREC_REGISTRY": str(registry), "MBREC_DATA_ROOT": str(root),
               "DAGSTER_HOME": str(home), "MBREC_EXECUTOR": "celery", "MBREC_CELERY_BROKER": url,
               "MBREC_CELERY_SHARD_QUEUE": SHARD_QUEUE}
        os.environ["DAGSTER_HOME"] = str(home)
        import dagster as dg

        dg.DagsterInstance.get()  # create the instance's tables before the workers open it
        # two pools, one task at a time per worker: `workers` shard workers on the shard queue, each
        # pinned to one core (its steps then run one thread), and one dataset-level worker on the
        # default queue, unpinned, for the map, the dense ids and the merge. The layers run one
        # after another, so at most `workers` steps compute at once. Pool processes are reused, as
        # Celery does by default (each step resets the kernel's peak-RSS mark when it starts, so its
        # peak is its own): a fresh process per task (--max-tasks-per-child=1) cost 20M rows 1.83x of
        # the in-process chain against 1.4x, and gave the same ratio at 100M (1.35x against 1.32x).
        with celery_workers(url, workers + 1, cwd=REPO, env=env,
                            queues=[[SHARD_QUEUE]] * workers + [["dagster"]],
                            cpus=[[cores[i % len(cores)]] for i in range(workers)] + [None]):
            started = time.perf_counter()
            timings = run_sharded("taobao", env=env, log_dir=root / "run_logs",
                                  log=lambda m: print("  " + m, flush=True))
            wall = time.perf_counter() - started
    peaks, seconds = run_peaks(home)
    shutil.rmtree(root, ignore_errors=True)  # (at 100M rows the shards and the merged dataset hold about 52 GB)
    print(f"sharded, {n} shards on {workers} Celery shard workers (one core each) and one dataset-level "
          f"worker: {wall:.1f} s "
          f"(overhead {wall / wall_single - 1:+.0%} vs in-process)", flush=True)
    print("  layers: " + ", ".join(f"{t.asset} x{t.runs} {t.seconds:.1f} s" for t in timings))
    print("  peak RSS per run (MB): " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(peaks.items())), flush=True)
    print("  the step's own compute, inside its run (s): "
          + ", ".join(f"{k} {v:,.1f}" for k, v in sorted(seconds.items())), flush=True)


def run_peaks(home: Path) -> tuple[dict[str, float], dict[str, float]]:
    """peak_rss_mb, and the stage function's own seconds where the asset records them, of every
    materialization in the instance, by asset[partition]."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    instance = dg.DagsterInstance.get()
    peaks, seconds = {}, {}
    for key in ("event_shards", "dense_ids", "shard_sequences", "sharded_dataset"):
        for record in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(key)), limit=1000).records:
            m = record.asset_materialization
            name = f"{key}[{m.partition}]" if key == "shard_sequences" else key
            peaks[name] = m.metadata["peak_rss_mb"].value
            if "seconds" in m.metadata:
                seconds[name] = m.metadata["seconds"].value
    return peaks, seconds


def memory_per_shard(csv: Path, work: Path, counts: list[int]) -> None:
    print("peak RSS per run by number of shards (/usr/bin/time -v; one process per run):", flush=True)
    for n in counts:
        root = work / f"mem_{n}"
        registry = setup_root(root, csv, n)
        env = {**os.environ, "MBREC_REGISTRY": str(registry), "MBREC_DATA_ROOT": str(root)}
        wall_map, peak_map = timed_process(STEP.format(call="shards.map_to_shards(cfg, L.raw_dir, L, log=q)"), env)
        wall_raw_ids = sum(timed_process(STEP.format(call=f"shards.shard_raw_ids(cfg, L, {k}, log=q)"), env)[0]
                           for k in range(n))
        wall_ids, peak_ids = timed_process(STEP.format(call="shards.merge_dense_ids(cfg, L.raw_dir, L, log=q)"), env)
        shard_peaks, shard_walls = [], []
        for k in range(n):
            w, p = timed_process(STEP.format(call=f"shards.shard_sequences(cfg, L, {k}, log=q)"), env)
            shard_peaks.append(p)
            shard_walls.append(w)
        wall_merge, peak_merge = timed_process(STEP.format(call="shards.merge_shards(cfg, L.raw_dir, L, log=q)"), env)
        total = wall_map + wall_raw_ids + wall_ids + sum(shard_walls) + wall_merge
        print(f"  N={n:>3}: every step as a plain process, one at a time: {total:.1f} s")
        print(f"  N={n:>3}: shard_sequences peak {max(shard_peaks):,.0f} MB (largest shard), "
              f"{sum(shard_walls):.1f} s over all shards; map {peak_map:,.0f} MB / {wall_map:.1f} s; "
              f"raw ids {wall_raw_ids:.1f} s over all shards; "
              f"dense ids {peak_ids:,.0f} MB / {wall_ids:.1f} s; merge {peak_merge:,.0f} MB / {wall_merge:.1f} s",
              flush=True)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e6)
    ap.add_argument("--csv", type=Path, help="an existing Taobao-format file instead of generated rows")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-shards", default="1,4,16")
    ap.add_argument("--no-celery", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--single-seconds", type=float,
                    help="the single-machine chain's wall time from an earlier run (skips running it again)")
    ap.add_argument("--per-stage", action="store_true",
                    help="run the single-machine chain one process per stage and print each stage's "
                         "wall time and peak memory")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mbrec_bench_shards"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    csv = (args.csv or generate(args.work, int(args.rows))).resolve()
    print(f"input: {csv} ({csv.stat().st_size / 1e9:.2f} GB)", flush=True)
    if not args.no_celery:
        in_process_vs_celery(csv, args.work, args.shards, args.workers, args.per_stage, args.single_seconds)
    if not args.no_memory:
        memory_per_shard(csv, args.work, [int(x) for x in args.memory_shards.split(",")])
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
