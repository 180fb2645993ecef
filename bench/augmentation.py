"""Benchmark: behavior statistics over 100M-event training histories, and augmentation throughput.

    python bench/augmentation.py                 # reuses the sequence benchmark's 100M-event outputs
    python bench/augmentation.py --rows 5e6

Prints the wall time and peak RSS (from /usr/bin/time -v, whole process) of computing the
behavior statistics of the leave-one-out split (target: <= 30 s on 2 cores for 100M events),
then sequences/s for each behavior-level operator and for GAMER-style views.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def run_statistics(root: str) -> None:
    from pipelines.augmentation.stage import materialize_statistics
    from pipelines.registry import load_registry
    from pipelines.storage import DatasetPaths

    docs = materialize_statistics(load_registry().get("taobao"), DatasetPaths(Path(root), "taobao"), log=lambda m: None)
    print(f"statistics: {docs['leave_one_out']['training_sets']:,} training sets (leave_one_out)")


def throughput(batch: int = 4096, max_len: int = 50, repeats: int = 5) -> None:
    import numpy as np
    import polars as pl

    from pipelines.augmentation.behavior_ops import auxiliary_flipping, cooccurrence_addition, frequency_masking
    from pipelines.augmentation.sequential import sequential_views
    from pipelines.registry import load_registry

    rng = np.random.default_rng(0)
    x = (rng.random((batch, max_len, 4)) < 0.3).astype(np.int8)
    x[:, : max_len // 3] = 0  # some left padding
    M = rng.integers(0, 100, (4, 4))
    M = M + M.T
    np.fill_diagonal(M, 0)
    q = np.array([0.4, 0.3, 0.2, 0.1])
    ops = {"cooccurrence_addition": lambda r: cooccurrence_addition(x, M, 0.5, r),
           "frequency_masking": lambda r: frequency_masking(x, q, 0.5, r),
           "auxiliary_flipping": lambda r: auxiliary_flipping(x, [0], 0.5, r)}
    for name, op in ops.items():
        started = time.perf_counter()
        for i in range(repeats):
            op(np.random.default_rng(i))
        per_s = batch * repeats / (time.perf_counter() - started)
        print(f"{name}: {per_s:,.0f} sequences/s (batches of {batch} x {max_len} steps x 4 behaviors)")
    cfg = load_registry().get("taobao")
    n = 1_000_000
    steps = pl.DataFrame({"user_id": np.repeat(np.arange(n // 50), 50).astype(np.uint32), "step": np.tile(np.arange(50), n // 50).astype(np.uint32),
                          "item_id": rng.integers(0, 10**6, n).astype(np.uint32),
                          "behaviors": rng.choice([1, 2, 4, 8], n, p=[0.86, 0.03, 0.06, 0.05]).astype(np.uint16)})
    started = time.perf_counter()
    sequential_views(steps, cfg, views=3, seed=0)
    seconds = time.perf_counter() - started
    print(f"sequential_views (3 views): {n / 50 / seconds:,.0f} sequences/s ({n / seconds:,.0f} steps/s)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=float, default=100e6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    p.add_argument("--run", nargs=2, metavar=("WHAT", "ROOT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        run_statistics(a.run[1])
        return 0
    from ingest_taobao import timed
    from sequences_taobao import ensure_events

    rows = int(a.rows)
    root = ensure_events(a.work, rows, a.seed)
    paths_split = root / "outputs" / "taobao" / "splits" / "leave_one_out" / "roles.parquet"
    if not paths_split.is_file():  # the sequence stage first (its own benchmark times it)
        import subprocess

        subprocess.run([sys.executable, str(REPO / "bench" / "sequences_taobao.py"), "--run", "pipeline", str(root)],
                       check=True)
    r = timed([sys.executable, __file__, "--run", "statistics", str(root)])
    print(f"behavior statistics over {rows:,} events' training histories: {r['wall_s']:.1f} s wall, "
          f"{r['peak_rss_gb']:.2f} GB peak RSS (target: <= 30 s)", flush=True)
    throughput()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
