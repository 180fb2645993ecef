"""Materialize the whole pipeline for every registry dataset, then say where everything is.

Runs through the project's Dagster instance (DAGSTER_HOME, default .dagster_home/), so the runs,
materializations and check results show up in `dagster dev` afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pipelines.registry import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="*", help="registry datasets to materialize (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    import dagster as dg

    from assets.partitions import dataset_partitions
    from pipelines.definitions import defs
    from pipelines.resources import PipelineSettings

    keys = args.datasets or dataset_partitions.get_partition_keys()
    job = defs.resolve_job_def("materialize_all")
    settings = PipelineSettings()
    failed = []
    with dg.DagsterInstance.get() as instance:
        for key in keys:
            started = time.perf_counter()
            print(f"== {key}: materializing every asset ...", flush=True)
            result = job.execute_in_process(
                partition_key=key, instance=instance, raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            )
            checks = result.get_asset_check_evaluations()
            bad_checks = [e.check_name for e in checks if not e.passed]
            ok = result.success and not bad_checks
            if not ok:
                failed.append(key)
            report_path = settings.paths(key).stage_dir("ingest") / "ingest_report.json"
            line = f"   {'ok' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s; checks passed {len(checks) - len(bad_checks)}/{len(checks)}"
            if report_path.is_file():
                r = json.loads(report_path.read_text())
                line += (f"; {r['rows_read']:,} rows read = {r['rows_kept']:,} kept + {r['rows_quarantined']:,} "
                         f"quarantined + {r['duplicates_dropped']:,} duplicates; {r['users']:,} users, {r['items']:,} items")
            print(line)
            audit_path = settings.paths(key).stage_dir("leakage") / "audit.parquet"
            if audit_path.is_file():
                import polars as pl

                a = pl.read_parquet(audit_path).filter((pl.col("protocol") == "leave_one_out") & (pl.col("k") == 10))
                if a.height == 2:
                    before, after = (a.filter(pl.col("filter") == "off").row(0, named=True),
                                     a.filter(pl.col("filter") != "off").row(0, named=True))
                    print(f"   leak (leave-one-out, k=10): 'recent history' HR@10 {before['recent_hr']:.3f} unfiltered, "
                          f"{after['recent_hr']:.3f} after filter '{after['filter']}'")
            sid_path = settings.paths(key).stage_dir("semantic_ids") / "quality.json"
            if sid_path.is_file():
                q = json.loads(sid_path.read_text())
                depth1 = q["quality"]["coherence"][0] if q["quality"]["coherence"] else {"ratio": float("nan")}
                print(f"   semantic IDs {'x'.join(map(str, q['sizes']))} ({q['method']}): collision rate before dedup "
                      f"{q['quality']['collisions']['collision_rate']:.3f} (floor of identical vectors "
                      f"{q['quality']['collisions'].get('floor', float('nan')):.3f}); depth-1 coherence {depth1['ratio']:.1f}x random")
            results = settings.paths(key).stage_dir("evaluation") / "results.parquet"
            if results.is_file():
                import polars as pl

                r = pl.read_parquet(results).filter(pl.col("target_behavior") == "all")
                after = r.filter(pl.col("filter") != "off").sort("ndcg@10", descending=True)
                print("   test NDCG@10 (filtered): " + ", ".join(f"{m} {v:.4f}" for m, v in after.select("model", "ndcg@10").rows()))
            if bad_checks:
                print(f"   failed checks: {bad_checks}")
    root = settings.paths(keys[0]).root
    print("\nOutputs:")
    print(f"  tables and reports  {root / 'outputs'}/<dataset>/<stage>/")
    print(f"  leakage audits      {root / 'outputs'}/<dataset>/leakage/leakage_audit.md (+ .png)")
    print(f"  dataset cards       {root / 'outputs'}/<dataset>/card/dataset_card.html")
    print(f"  leaderboard         {root / 'outputs' / 'leaderboard.md'}   (every dataset and model)")
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
