"""Benchmark: ingest a generated Taobao-format UserBehavior.csv, side by side with pandas.

    python bench/ingest_taobao.py                       # 100M rows; pandas on the first 20M rows
    python bench/ingest_taobao.py --rows 5e6 --compare-rows 5e6

Prints, for each run, wall seconds and peak RSS (from /usr/bin/time -v, the whole process), then
the pandas/pipeline ratio measured on the same file in the same run. Targets for 100M rows on a
2-core, 24 GB machine: <= 120 s and <= 4 GB peak RSS for the pipeline's ingest.
The pandas baseline is `read_csv` + the same cleaning (bad ids, unknown behaviors, times outside
the window, exact duplicates, dense ids) + parquet; it runs on a prefix of the file because at
100M rows it needs most of the machine's memory.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def timed(cmd: list[str]) -> dict[str, float]:
    """Run cmd under /usr/bin/time -v; return wall seconds and peak RSS in GB."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"benchmark step failed: {' '.join(cmd)}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"wall_s": wall, "peak_rss_gb": rss_kb / 1024**2}


def print_side_by_side(what: str, ours: dict[str, float], theirs: dict[str, float]) -> None:
    print(f"side by side on {what}:")
    print(f"  pipeline: {ours['wall_s']:.1f} s, {ours['peak_rss_gb']:.2f} GB peak RSS")
    print(f"  pandas:   {theirs['wall_s']:.1f} s, {theirs['peak_rss_gb']:.2f} GB peak RSS")
    print(f"  ratio pandas/pipeline: wall {theirs['wall_s'] / ours['wall_s']:.2f}x, "
          f"peak RSS {theirs['peak_rss_gb'] / ours['peak_rss_gb']:.2f}x")


def ensure_csv(path: Path, rows: int, seed: int) -> None:
    marker = path.with_suffix(f".{rows}.{seed}.done")
    if marker.is_file() and path.is_file():
        return
    print(f"generating {rows:,} Taobao rows into {path} ...", flush=True)
    t = timed([sys.executable, "-m", "pipelines.synthetic", "--format", "taobao", "--rows", str(rows),
               "--seed", str(seed), "--out", str(path.parent)])
    print(f"  generated in {t['wall_s']:.1f} s (peak RSS {t['peak_rss_gb']:.2f} GB)")
    marker.touch()


def prefix(src: Path, dst: Path, rows: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as f, dst.open("wb") as g:
        for i, line in enumerate(f):
            if i >= rows:
                break
            g.write(line)


def run_pipeline(raw_dir: str, out_dir: str) -> None:
    from pipelines.ingest.core import ingest_dataset
    from pipelines.registry import load_registry

    # full: a previous run's output in out_dir must not turn this into an incremental no-op
    s = ingest_dataset(load_registry().get("taobao"), Path(raw_dir), Path(out_dir), log=lambda m: None, full=True)
    print(f"pipeline: {s.rows_read:,} read = {s.rows_kept:,} kept + {s.rows_quarantined:,} quarantined + "
          f"{s.duplicates_dropped:,} duplicates; {s.users:,} users, {s.items:,} items")


def run_pandas(raw_dir: str, out_dir: str) -> None:
    """A straightforward pandas implementation of the same cleaning."""
    import pandas as pd

    df = pd.read_csv(Path(raw_dir) / "UserBehavior.csv", header=None,
                     names=["user_id", "item_id", "category_id", "behavior_type", "timestamp"], dtype=str)
    n = len(df)
    for col in ("user_id", "item_id", "timestamp"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    bits = {"pv": 1, "fav": 2, "cart": 4, "buy": 8}
    df["behaviors"] = df["behavior_type"].map(bits)
    lo, hi = 1511539200, 1512316800
    good = df["user_id"].notna() & df["item_id"].notna() & df["behaviors"].notna() & df["timestamp"].between(lo, hi - 1)
    bad = int((~good).sum())
    df = df[good]
    df = df.drop_duplicates(subset=["user_id", "item_id", "behaviors", "timestamp"], keep="first")
    out = pd.DataFrame({
        "user_id": pd.factorize(df["user_id"], sort=True)[0].astype("uint32"),
        "item_id": pd.factorize(df["item_id"], sort=True)[0].astype("uint32"),
        "behaviors": df["behaviors"].astype("uint16"),
        "timestamp": df["timestamp"].astype("int64") * 1000,
        "source_line": (df.index + 1).astype("uint32"),
    })
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out.to_parquet(Path(out_dir) / "events.parquet", index=False)
    print(f"pandas: {n:,} read = {len(out):,} kept + {bad:,} bad + {n - bad - len(out):,} duplicates")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=float, default=100e6)
    p.add_argument("--compare-rows", type=float, default=20e6, help="rows both pipeline and pandas ingest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    p.add_argument("--skip-full", action="store_true", help="only the side-by-side comparison")
    p.add_argument("--run", nargs=3, metavar=("ENGINE", "RAW", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        {"pipeline": run_pipeline, "pandas": run_pandas}[a.run[0]](a.run[1], a.run[2])
        return 0

    rows, compare = int(a.rows), int(min(a.compare_rows, a.rows))
    full = a.work / f"taobao_{rows}" / "UserBehavior.csv"
    ensure_csv(full, rows, a.seed)
    me = [sys.executable, __file__, "--run"]
    if not a.skip_full:
        r = timed([*me, "pipeline", str(full.parent), str(a.work / "out_full")])
        print(f"pipeline ingest, {rows:,} rows: {r['wall_s']:.1f} s wall, {r['peak_rss_gb']:.2f} GB peak RSS "
              f"(targets: <= 120 s, <= 4 GB)")
    sub = a.work / f"taobao_{rows}_prefix_{compare}" / "UserBehavior.csv"
    if compare == rows:
        sub = full
    elif not sub.is_file():
        prefix(full, sub, compare)
    ours = timed([*me, "pipeline", str(sub.parent), str(a.work / "out_cmp_pipeline")])
    theirs = timed([*me, "pandas", str(sub.parent), str(a.work / "out_cmp_pandas")])
    print_side_by_side(f"the same {compare:,} rows", ours, theirs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
