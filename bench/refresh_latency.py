"""Time from a raw file landing to the refresh runs starting, with the real Dagster daemon.

    .venv/bin/python bench/refresh_latency.py                 # the shipped 30 s sensor interval
    .venv/bin/python bench/refresh_latency.py --interval 5

Starts ``dagster-daemon run`` on a temporary instance (the committed ``.dagster_home/dagster.yaml``:
queued runs) with a one-dataset registry (a small generated Taobao-format file, one training epoch
per model), drops the file into ``raw/shop/`` and prints, from the run records, when the sensor's
ingest run was created and started and finished, when the automation's downstream run was created
and started, and when it finished. Nothing is downloaded; everything runs in temporary folders.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=int, default=30, help="sensor interval, seconds (default: shipped 30)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args(argv)

    import dagster as dg

    from pipelines.synthetic import SyntheticSpec, write_synthetic

    tmp = Path(tempfile.mkdtemp(prefix="refresh_latency_"))
    home, root = tmp / "home", tmp / "data"
    home.mkdir()
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    base = yaml.safe_load((REPO / "data" / "datasets.yaml").read_text())
    shop = dict(base["datasets"]["taobao"])
    shop["synthetic"] = {"users": args.users, "items": max(args.users, 300), "topics": 8, "seed": 5}
    shop["stages"] = {**shop.get("stages", {}),
                      "semantic_ids": {**shop.get("stages", {}).get("semantic_ids", {}), "codes": 32},
                      "training": {"models": {m: {"epochs": 1} for m in
                                              ("sasrec", "behavior_set", "generative_sid", "blade")}}}
    (tmp / "datasets.yaml").write_text(yaml.safe_dump({"defaults": base.get("defaults", {}),
                                                       "datasets": {"shop": shop}}, sort_keys=False))
    staged = write_synthetic("taobao", tmp / "staged",
                             SyntheticSpec(users=args.users, items=max(args.users, 300), topics=8, seed=5))[0]
    env = {**os.environ, "DAGSTER_HOME": str(home), "MBREC_DATA_ROOT": str(root),
           "MBREC_REGISTRY": str(tmp / "datasets.yaml"), "MBREC_SENSOR_INTERVAL_S": str(args.interval)}
    log = open(home / "daemon.log", "wb")  # noqa: SIM115 (closed below)
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            time.sleep(max(10, args.interval))  # the daemon is up and the sensors have ticked once
            raw = root / "raw" / "shop"
            raw.mkdir(parents=True)
            shutil.copy(staged, raw / ".incoming")
            landed = time.time()
            (raw / ".incoming").rename(raw / "UserBehavior.csv")
            print(f"file landed; sensor interval {args.interval} s; waiting for the refresh runs ...", flush=True)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                records = instance.get_run_records()
                if len(records) >= 2 and all(r.dagster_run.is_finished for r in records):
                    break
                time.sleep(2)
            records = sorted(instance.get_run_records(), key=lambda r: r.create_timestamp)
            if len(records) < 2:
                print(f"only {len(records)} run(s) within {args.timeout} s; see {home / 'daemon.log'}")
                return 1
            rows = []
            for rec, what in zip(records[:2], ("ingest (raw_data_sensor)", "downstream (downstream_refresh)")):
                created = rec.create_timestamp.timestamp() - landed
                started = (rec.start_time or 0) - landed
                ended = (rec.end_time or 0) - landed
                rows.append((what, created, started, ended, rec.dagster_run.status.value))
            print(f"\n{'run':34} {'created':>9} {'started':>9} {'finished':>9}  status  (seconds after the file landed)")
            for what, created, started, ended, status in rows:
                print(f"{what:34} {created:9.1f} {started:9.1f} {ended:9.1f}  {status}")
            return 0
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
