"""Benchmark: generated Taobao events -> behavior sets, sessions, leave-one-out with the `all`
leakage filter, model-ready sequences; side by side with a straightforward pandas version.

    python bench/sequences_taobao.py                         # 100M events; pandas on the first 5M users' share
    python bench/sequences_taobao.py --rows 5e6 --compare-rows 2e6

Prints wall seconds and peak RSS (from /usr/bin/time -v, whole process) for the pipeline stage on
all rows, then pipeline and pandas on the same subsample and their ratio. Targets for 100M events
on a 2-core, 24 GB machine: <= 90 s and <= 8 GB peak RSS for the pipeline stage.
The canonical events come from the ingest benchmark's generator and ingest (cached in --work).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest_taobao import ensure_csv, print_side_by_side, timed  # noqa: E402

MAX_LEN = 50


def ensure_events(work: Path, rows: int, seed: int) -> Path:
    """Canonical events for `rows` generated Taobao rows (generate + ingest once, then reuse)."""
    root = work / f"seq_{rows}"
    events = root / "outputs" / "taobao" / "ingest" / "events.parquet"
    if events.is_file():
        return root
    csv = work / f"taobao_{rows}" / "UserBehavior.csv"
    ensure_csv(csv, rows, seed)
    raw = root / "raw" / "taobao"
    raw.mkdir(parents=True, exist_ok=True)
    link = raw / "UserBehavior.csv"
    if not link.exists():
        link.symlink_to(csv.resolve())
    print(f"ingesting {rows:,} rows into {root} ...", flush=True)
    subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; sys.path.insert(0, %r)\n"
        "from pipelines.ingest.core import ingest_dataset; from pipelines.registry import load_registry\n"
        "ingest_dataset(load_registry().get('taobao'), Path(%r), Path(%r), log=lambda m: None)"
    ) % (str(REPO), str(raw), str(events.parent))], check=True)
    return root


def subsample(root: Path, dst: Path, rows: int) -> Path:
    """The first users' events (the table is ordered by user) up to about `rows` rows."""
    import polars as pl

    out = dst / "outputs" / "taobao" / "ingest"
    if (out / "events.parquet").is_file():
        return dst
    out.mkdir(parents=True, exist_ok=True)
    pl.scan_parquet(root / "outputs" / "taobao" / "ingest" / "events.parquet").head(rows).sink_parquet(out / "events.parquet")
    return dst


def run_pipeline(root: str) -> None:
    from pipelines.registry import load_registry
    from pipelines.sequences.stage import materialize_model_ready, materialize_split, materialize_steps
    from pipelines.storage import DatasetPaths

    cfg = load_registry().get("taobao")  # defaults: same_timestamp merge, 60 min sessions, filter `all`, max_len 50
    paths = DatasetPaths(Path(root), "taobao")
    s = materialize_steps(cfg, paths, log=lambda m: None)
    split = materialize_split(cfg, paths, "leave_one_out", log=lambda m: None)
    mr = materialize_model_ready(cfg, paths, log=lambda m: None)
    print(f"pipeline: {s.events_kept:,} events -> {s.steps:,} steps, {split.examples:,} examples, "
          f"{split.leak_steps_removed:,} leaking steps removed; model-ready {mr['leave_one_out']}")


def run_pandas(root: str) -> None:
    """What research code typically does: pandas sort/groupby, then a loop over users for the split,
    the leakage filter and the padded sequences."""
    import numpy as np
    import pandas as pd

    ev = pd.read_parquet(Path(root) / "outputs" / "taobao" / "ingest" / "events.parquet",
                         columns=["user_id", "item_id", "behaviors", "timestamp", "event_order"])
    ev = ev.sort_values(["user_id", "timestamp", "event_order"], kind="stable")
    steps = (ev.groupby(["user_id", "item_id", "timestamp"], sort=False)
             .agg(behaviors=("behaviors", lambda b: np.bitwise_or.reduce(b.to_numpy())), event_order=("event_order", "min"))
             .reset_index().sort_values(["user_id", "timestamp", "event_order"], kind="stable"))
    gap = steps.groupby("user_id")["timestamp"].diff()
    steps["session"] = (gap > 3_600_000).astype(int).groupby(steps["user_id"]).cumsum()
    level_bits = {1: 0, 2: 1, 4: 1, 8: 2}
    rows = {"valid": [], "test": []}
    for user, g in steps.groupby("user_id", sort=True):
        items, beh = g["item_id"].to_numpy(), g["behaviors"].to_numpy()
        buys = np.flatnonzero(beh & 8)
        if len(buys) < 2:
            continue
        for role, t in (("valid", buys[-2]), ("test", buys[-1])):
            hist = list(range(max(0, t - MAX_LEN), t))
            hist = [h for h in hist if not (items[h] == items[t] and all(level_bits[b] < 2 for b in (1, 2, 4, 8) if beh[h] & b))]
            seq = [0] * (MAX_LEN - len(hist)) + [int(items[h]) + 1 for h in hist]
            rows[role].append((user, seq, int(items[t]) + 1))
    print(f"pandas: {len(steps):,} steps, {len(rows['test']):,} test examples")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=float, default=100e6)
    p.add_argument("--compare-rows", type=float, default=5e6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    p.add_argument("--run", nargs=2, metavar=("ENGINE", "ROOT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        {"pipeline": run_pipeline, "pandas": run_pandas}[a.run[0]](a.run[1])
        return 0
    rows, compare = int(a.rows), int(min(a.compare_rows, a.rows))
    root = ensure_events(a.work, rows, a.seed)
    me = [sys.executable, __file__, "--run"]
    r = timed([*me, "pipeline", str(root)])
    print(f"sequence stage, {rows:,} events: {r['wall_s']:.1f} s wall, {r['peak_rss_gb']:.2f} GB peak RSS "
          f"(targets: <= 90 s, <= 8 GB)", flush=True)
    sub = subsample(root, a.work / f"seq_{rows}_prefix_{compare}", compare)
    ours = timed([*me, "pipeline", str(sub)])
    theirs = timed([*me, "pandas", str(sub)])
    print_side_by_side(f"the same {compare:,} events", ours, theirs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
