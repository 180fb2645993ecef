"""Materialize the whole pipeline for every registry dataset, then say where everything is.

Runs through the project's Dagster instance (DAGSTER_HOME, default .dagster_home/), so the runs,
materializations and check results show up in `dagster dev` afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from pipelines.process import available_cpus
from pipelines.registry import REPO_ROOT
from pipelines.sequences.splits import default_protocol


# What `make demo` trains: every model on every dataset, at budgets that fit the whole demo in about
# four minutes on two cores (`--full-training` trains at the registry's defaults instead, about ten).
# Small batches: on the generated datasets (800-1,500 training sequences) a model improves per optimizer
# step, not per epoch, and a batch of 16 or 32 takes two to eight times the steps of the defaults' at
# about the same cost per epoch, so these few epochs reach most of what the defaults reach in 20-30
# (README, "Demo and test time": the curves, and where each model beats popularity at these budgets).
# Early stopping still runs; the cap is the epoch count. `blade` gets one epoch: enough to show that it
# trains and scores, not to beat popularity (it needs about ten; README).
DEMO_TRAINING: dict[str, dict[str, int]] = {
    "sasrec": {"batch_size": 32, "epochs": 6},
    "behavior_set": {"batch_size": 16, "epochs": 8},
    "generative_sid": {"batch_size": 16, "epochs": 4},
    "blade": {"batch_size": 32, "epochs": 1},
}


def demo_budgets_line(training: dict[str, dict[str, int]]) -> str:
    """One line naming the budgets a demo trains at (printed before the runs start)."""
    if not training:
        return "training at the registry's defaults (--full-training)"
    return ("training at the demo's budgets (" + "; ".join(
        f"{m} {c['epochs']} epochs, batch {c['batch_size']}" for m, c in training.items())
        + "); --full-training for the registry's defaults (blade needs about 10 epochs to beat popularity)")


def demo_run_config(training: dict[str, dict] | None) -> dict:
    """Run config of one dataset's ``materialize_all`` run: quiet console, ``training`` per model."""
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}},
            "ops": {f"trained_{m}": {"config": c} for m, c in (training or {}).items()}}


def longest_first(keys: list[str], settings) -> list[str]:
    """Datasets in order of expected work, largest first (longest-processing-time-first keeps the two
    workers busy to the end): the raw files' bytes, or for generated data the events it will have
    (users x events per user, at about 60 bytes a line). Ties keep registry order."""
    def work(key: str) -> float:
        cfg, paths = settings.dataset(key), settings.paths(key)
        raw = paths.raw_dir
        files = [f for f in raw.rglob("*") if f.is_file() and not f.name.startswith(".")] if raw.is_dir() else []
        files = [f for f in files if f.name.lower() != "readme.md"]
        if files:
            return float(sum(f.stat().st_size for f in files))
        return cfg.synthetic.users * cfg.synthetic.events_per_user * 60.0
    return sorted(keys, key=lambda k: -work(k))


def _threads_per_job(jobs: int) -> int:
    """The CPUs this process may use (affinity, cgroup quota: a pinned or limited container), shared by the jobs."""
    return max(1, available_cpus() // max(jobs, 1))


def _limit_threads(n: int) -> None:
    """Thread pools of the libraries a run uses, set before they are imported (worker processes)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "POLARS_MAX_THREADS"):
        os.environ[var] = str(n)


def run_partition(key: str, threads: int | None = None, training: dict[str, dict] | None = None) -> dict:
    """Materialize every asset of one dataset partition in this process; returns what main prints.
    ``training``: run config of ``trained_<model>`` per model (models not named: registry defaults)."""
    if threads:
        _limit_threads(threads)
    import dagster as dg

    from assets.definitions import defs
    from pipelines.resources import PipelineSettings

    if threads:
        import torch

        torch.set_num_threads(threads)
    settings = PipelineSettings()
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("materialize_all").execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False,
            run_config=demo_run_config(training),
        )
        stats = {s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in instance.get_run_step_stats(result.run_id)}
    if _interrupted(result):
        return {"key": key, "ok": False, "interrupted": True, "lines": ["   interrupted"], "steps": stats}
    checks = result.get_asset_check_evaluations()
    bad_checks = [e.check_name for e in checks if not e.passed]
    ok = result.success and not bad_checks
    lines = [f"   {'ok' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s; "
             f"checks passed {len(checks) - len(bad_checks)}/{len(checks)}"]
    paths = settings.paths(key)
    report_path = paths.ingest_report()
    if report_path.is_file():
        r = json.loads(report_path.read_text())
        lines[0] += (f"; {r['rows_read']:,} rows read = {r['rows_kept']:,} kept + {r['rows_quarantined']:,} "
                     f"quarantined + {r['duplicates_dropped']:,} duplicates; {r['users']:,} users, {r['items']:,} items")
    audit_path = paths.leakage_audit()
    if audit_path.is_file():
        import polars as pl

        protocol = default_protocol(settings.dataset(key))
        a = pl.read_parquet(audit_path).filter((pl.col("protocol") == protocol) & (pl.col("k") == 10))
        if a.height == 2:
            before, after = (a.filter(pl.col("filter") == "off").row(0, named=True),
                             a.filter(pl.col("filter") != "off").row(0, named=True))
            lines.append(f"   leak ({protocol}, k=10): 'recent history' HR@10 {before['recent_hr']:.3f} unfiltered, "
                         f"{after['recent_hr']:.3f} after filter '{after['filter']}'")
    sid_path = paths.semantic_id_quality()
    if sid_path.is_file():
        q = json.loads(sid_path.read_text())
        depth1 = q["quality"]["coherence"][0] if q["quality"]["coherence"] else {"ratio": float("nan")}
        lines.append(f"   semantic IDs {'x'.join(map(str, q['sizes']))} ({q['method']}): collision rate before dedup "
                     f"{q['quality']['collisions']['collision_rate']:.3f} (floor of identical vectors "
                     f"{q['quality']['collisions'].get('floor', float('nan')):.3f}); depth-1 coherence {depth1['ratio']:.1f}x random")
    results = paths.evaluation_results()
    if results.is_file():
        import polars as pl

        r = pl.read_parquet(results).filter(pl.col("target_behavior") == "all")
        after = r.filter(pl.col("filter") != "off").sort("ndcg@10", descending=True)
        lines.append("   test NDCG@10 (filtered): " + ", ".join(f"{m} {v:.4f}" for m, v in after.select("model", "ndcg@10").rows()))
    if bad_checks:
        lines.append(f"   failed checks: {bad_checks}")
    return {"key": key, "ok": ok, "lines": lines, "steps": stats}


def _interrupted(result) -> bool:
    """Whether a run failed because it was interrupted (Ctrl-C / SIGTERM), not because a step failed."""
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            if error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                return True
            error = error.cause
    return False


class _Stop(Exception):
    """SIGTERM or Ctrl-C: stop the demo, start no other dataset."""


def _on_stop_signals(stop: dict[str, bool]) -> None:
    """SIGTERM behaves like Ctrl-C: the workers are stopped (every stage publishes atomically, so
    the last good outputs stay intact) and no other dataset starts."""
    def handler(signum, frame):
        stop["requested"] = True
        raise _Stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def asset_time_table(step_seconds: dict[str, dict[str, float]]) -> str:
    """Markdown table: seconds per asset (step) summed over datasets, its share, and the slowest dataset."""
    per_step: dict[str, float] = {}
    for steps in step_seconds.values():
        for step, s in steps.items():
            per_step[step] = per_step.get(step, 0.0) + s
    total = sum(per_step.values()) or 1.0
    rows = ["| asset (step) | seconds, all datasets | share | slowest dataset |", "|---|---|---|---|"]
    for step, s in sorted(per_step.items(), key=lambda kv: -kv[1]):
        worst = max(step_seconds, key=lambda k: step_seconds[k].get(step, 0.0))
        rows.append(f"| {step} | {s:.1f} | {s / total:.0%} | {worst} ({step_seconds[worst][step]:.1f} s) |")
    rows.append(f"| total (step time; the datasets ran side by side) | {total:.1f} | 100% | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="*", help="registry datasets to materialize (default: all)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="datasets materialized side by side, one worker process each (default 2)")
    parser.add_argument("--timings", action="store_true", help="print seconds per asset from the run records")
    parser.add_argument("--full-training", action="store_true",
                        help="train every model at the registry's defaults, not at the demo's short budgets")
    args = parser.parse_args(argv)
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    from assets.partitions import dataset_partitions
    from pipelines.resources import PipelineSettings
    from pipelines.training.stage import update_global_leaderboard

    settings = PipelineSettings()
    keys = args.datasets or longest_first(dataset_partitions.get_partition_keys(), settings)
    training = {} if args.full_training else DEMO_TRAINING
    failed = []
    began = time.perf_counter()
    jobs = max(1, min(args.jobs, len(keys)))
    print(f"materializing every asset of {len(keys)} dataset(s), {jobs} side by side ...", flush=True)
    print(demo_budgets_line(training), flush=True)
    done: dict[str, dict] = {}

    stop = {"requested": False}
    _on_stop_signals(stop)

    def report(out: dict) -> None:
        if out.get("interrupted"):
            stop["requested"] = True
            return
        done[out["key"]] = out
        print(f"== {out['key']}", flush=True)
        print("\n".join(out["lines"]), flush=True)
        if not out["ok"]:
            failed.append(out["key"])

    # every dataset runs in a worker process: an interruption stops workers, never half a stage in here
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import dagster as dg

    with dg.DagsterInstance.get():
        pass  # create the instance's storage here: workers creating it at once race on the schema
    pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"))
    try:
        waiting = list(keys)  # submitted one per free worker, so an interruption leaves nothing queued
        running: dict = {}
        while waiting or running:
            while waiting and len(running) < jobs and not stop["requested"]:
                key = waiting.pop(0)
                running[pool.submit(run_partition, key, _threads_per_job(jobs), training)] = key
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                try:
                    report(future.result())
                except Exception as e:  # a worker that died is that dataset's failure, not the demo's
                    report({"key": key, "ok": False, "lines": [f"   FAILED: {type(e).__name__}: {e}"], "steps": {}})
            if stop["requested"]:
                raise _Stop()
    except _Stop:
        stop["requested"] = True
        pool.shutdown(wait=False, cancel_futures=True)
        for child in mp.active_children():  # their stages publish atomically: outputs stay whole
            child.terminate()
        for child in mp.active_children():
            child.join(timeout=10)
            if child.is_alive():  # Dagster turns SIGTERM into a graceful interruption: do not wait on it
                child.kill()
                child.join()
    finally:
        pool.shutdown(wait=not stop["requested"], cancel_futures=stop["requested"])
    if stop["requested"]:
        print(f"\ninterrupted: stopped after {len(done)} of {len(keys)} dataset(s); no other dataset was started. "
              "Every stage publishes atomically, so the outputs of the last good runs are intact.", file=sys.stderr)
        return 130
    # each run refreshes the cross-dataset leaderboard; runs side by side could race, so once more here
    update_global_leaderboard(settings.paths(keys[0]).root)
    print(f"\nall {len(keys)} dataset(s) in {time.perf_counter() - began:.1f} s", flush=True)
    if args.timings:
        print("\nSeconds per asset (from the Dagster run records):")
        print(asset_time_table({k: done[k]["steps"] for k in keys if k in done}))
    root = settings.paths(keys[0]).root
    print("\nOutputs:")
    print(f"  tables and reports  {root / 'outputs'}/<dataset>/<stage>/")
    print(f"  leakage audits      {root / 'outputs'}/<dataset>/leakage/leakage_audit.md (+ .png)")
    print(f"  dataset cards       {root / 'outputs'}/<dataset>/card/dataset_card.html")
    print(f"  leaderboard         {root / 'outputs' / 'leaderboard.md'}   (every dataset and model"
          + ("; trained at the demo's budgets" if training else "") + ")")
    print(f"  semantic IDs        {root / 'outputs'}/<dataset>/semantic_ids/quality_report.md, exports/")
    print(f"  Data Docs           {root / 'outputs'}/<dataset>/quality/data_docs/*/index.html")
    print(f"  generated raw data  {root / 'generated'}/<dataset>/   (used because data/raw/<dataset>/ is empty)")
    print(f"  Dagster run history {os.environ['DAGSTER_HOME']}   (open with: make ui)")
    if failed:
        print(f"\nFAILED datasets: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
