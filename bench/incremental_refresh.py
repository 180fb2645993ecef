"""Benchmark: refreshing after a 1% daily drop, incrementally vs a full rebuild, in one run.

    python bench/incremental_refresh.py                  # 2M generated Taobao rows
    python bench/incremental_refresh.py --rows 2e7       # the 20M-row figure in the README

A generated Taobao-format file is cut by time into a base drop (``events_1.csv``) and a daily drop
(``events_2.csv``: the newest 1% of the events, from every user active then, as a day's log file
would hold them; the generated file, like the real one, is ordered by user, so its last 1% of bytes
would be 1% of the users, nearly all new); the registry entry reads ``events_*.csv``. It prints how
many known users the drop touches. The base is ingested and its sequences and statistics built
once (not timed); then, after the drop arrives, this prints the wall time (Python's
``time.perf_counter``) of, side by side:

- incremental: the ingest (parses ``events_2.csv`` only), then steps (recomputes the users whose
  events changed), every split protocol that applies (each recomputes the users whose steps changed) and
  statistics;
- the same again with nothing new (a no-op refresh: every stage finds its inputs unchanged);
- full: the same stages into a fresh folder (what every refresh cost before);
- the model-ready arrays the refresh builds next (printed apart: the sums stop at statistics);
- the floor of any refresh that recomputes whole touched users: the downstream stages over the
  events of the users the drop touched, alone (their share of the events is printed);
- the floor of any refresh that keeps each table one complete user-ordered file: reading the
  tables it replaces (ingest, steps, splits) and writing them back, with no merging or computing.

The ingest, steps and split tables of both are checked to be the same bytes.
Generated data is cached in --work.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.layout import INGEST_FILES, DatasetLayout  # noqa: E402

TABLES = ("events", "user_id_map", "item_id_map", "item_side_info", "quarantine")


def generate(work: Path, rows: int, seed: int) -> Path:
    out = work / f"taobao_{rows}_{seed}"
    csv = out / "UserBehavior.csv"
    if not (out / ".done").is_file():
        print(f"generating {rows:,} Taobao rows into {out} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pipelines.synthetic", "--format", "taobao", "--rows", str(rows),
                        "--seed", str(seed), "--out", str(out)], check=True, cwd=REPO)
        (out / ".done").touch()
    return csv


def split_drop(csv: Path, raw: Path, drop_share: float) -> tuple[int, int]:
    """events_2.csv = the newest ``drop_share`` of the events by timestamp (the daily drop: every user
    active in that window), events_1.csv = the rest; both keep the file's line order and text."""
    import polars as pl

    raw.mkdir(parents=True, exist_ok=True)
    lines = pl.read_csv(csv, has_header=False, separator="\x1f", quote_char=None, new_columns=["line"],
                        infer_schema=False)["line"]
    ts = lines.str.extract(r",(-?\d+)$", 1).cast(pl.Int64)
    cut = ts.quantile(1 - drop_share, interpolation="lower")
    newest = (ts > cut).fill_null(False)  # a malformed line (no timestamp) stays in the base
    for name, part in (("events_1.csv", lines.filter(~newest)), ("events_2.csv", lines.filter(newest))):
        (raw / name).write_text("\n".join(part.to_list()) + "\n")
    return int((~newest).sum()), int(newest.sum())


def touched_only_floor(cfg, inc: DatasetLayout, touched: DatasetLayout, log) -> float:
    """Seconds to run the downstream stages over the events of the users the drop touched, alone.

    A refresh that recomputes every touched user's steps, splits and statistics (and only those)
    does at least this work, whatever its table layout: a lower bound for that design. Prints the
    touched users' share of the events."""
    import polars as pl

    from pipelines.augmentation.stage import materialize_statistics
    from pipelines.sequences import splits as sp
    from pipelines.sequences.stage import materialize_split, materialize_steps

    shutil.rmtree(touched.root, ignore_errors=True)
    events = pl.scan_parquet(inc.events())
    users = events.filter(pl.col("source_file") == "events_2.csv").select("user_id").unique()
    subset = events.join(users, on="user_id", how="semi", maintain_order="left").collect()
    touched.ingest_dir().mkdir(parents=True, exist_ok=True)
    subset.write_parquet(touched.events())
    total = pl.scan_parquet(inc.events()).select(pl.len()).collect().item()
    print(f"  the touched users hold {subset.height:,} of the {total:,} events ({subset.height / total:.1%})")
    _, t_steps = timed("touched only: steps", lambda: materialize_steps(cfg, touched, log=log))
    _, t_splits = timed(f"touched only: {len(applicable(cfg))} split protocols",
                        lambda: [materialize_split(cfg, touched, p, log=log) for p in applicable(cfg)])
    _, t_stats = timed("touched only: statistics", lambda: materialize_statistics(cfg, touched, log=log))
    return t_steps + t_splits + t_stats


def copy_floor(inc: DatasetLayout, tables: list[Path]) -> dict[str, float]:
    """Seconds to only *read and write back* the tables a refresh replaces (ingest, steps and split
    tables), into a scratch folder, with no merging or computing. While every table is one
    user-ordered file, and touched users sit in every part of it, a refresh that leaves complete
    files must get every untouched user's rows from the old file and write each file whole: this
    is its cost before it computes anything.

    Returns the seconds of: ``read`` (polars, both cores), ``write`` (the stages' own writer:
    pyarrow, zstd), and ``write_lz4`` (polars' writer on both cores with lz4, the fastest of the
    codecs tried: 1.4x larger files than zstd)."""
    import tempfile

    import polars as pl

    from pipelines.storage import ParquetAppender

    out = {"read": 0.0, "write": 0.0, "write_lz4": 0.0}
    with tempfile.TemporaryDirectory(dir=inc.root) as scratch:
        for i, f in enumerate(tables):
            started = time.perf_counter()
            frame = pl.read_parquet(f)
            out["read"] += time.perf_counter() - started
            started = time.perf_counter()
            with ParquetAppender(Path(scratch) / f"{i}.parquet") as w:
                w.write(frame)
            out["write"] += time.perf_counter() - started
            started = time.perf_counter()
            frame.write_parquet(Path(scratch) / f"{i}.lz4.parquet", compression="lz4", statistics=False,
                                row_group_size=1 << 20)
            out["write_lz4"] += time.perf_counter() - started
            del frame
    print(f"  the {len(tables)} tables a refresh replaces, and nothing else: read {out['read']:.2f} s, "
          f"written {out['write']:.2f} s (the stages' writer), {out['write_lz4']:.2f} s (polars, lz4)")
    return out


def downstream(cfg, layout: DatasetLayout, log, show: bool = False) -> dict[str, float]:
    """Steps, every split protocol, statistics; seconds of each (printed when ``show``)."""
    from pipelines.augmentation.stage import materialize_statistics
    from pipelines.sequences import splits as sp
    from pipelines.sequences.stage import materialize_model_ready, materialize_split, materialize_steps

    out = {}
    run = timed if show else (lambda _label, fn: (fn(), 0.0))
    steps, out["sequences: steps"] = run("sequences: steps", lambda: materialize_steps(cfg, layout, log=log))
    if show:
        print(f"    {steps.mode}, {steps.users_recomputed:,} users computed ({steps.mode_reason})")
    summaries, out[f"sequences: {len(applicable(cfg))} splits"] = run(
        f"sequences: {len(applicable(cfg))} split protocols",
        lambda: [materialize_split(cfg, layout, p, log=log) for p in applicable(cfg)])
    if show:
        for p, s in zip(applicable(cfg), summaries, strict=True):
            if s.applicable:
                print(f"    {p}: {s.mode}, {s.users_recomputed:,} users computed ({s.mode_reason})")
    _, out["statistics"] = run("statistics", lambda: materialize_statistics(cfg, layout, log=log))
    # the next stage a refresh runs (not in the sums: the figure is ingest to statistics)
    _, out[MODEL_READY] = run("model-ready arrays", lambda: materialize_model_ready(cfg, layout, log=log))
    return out


MODEL_READY = "model-ready arrays"


def applicable(cfg) -> list[str]:
    """The split protocols that apply to the dataset (``released`` needs a published release's files)."""
    from pipelines.sequences import splits as sp

    return [p for p in sp.PROTOCOLS if not sp.PROTOCOL_TABLE[p].not_applicable(cfg)]


def timed(label: str, fn):
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    print(f"  {label:<34} {seconds:8.2f} s", flush=True)
    return result, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e6, help="generated rows (default 2,000,000)")
    ap.add_argument("--drop", type=float, default=0.01, help="share of the rows in the daily drop (default 0.01)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mbrec_bench_incremental"))
    ap.add_argument("--no-downstream", action="store_true", help="time ingest only")
    args = ap.parse_args()

    from pipelines.ingest.core import ingest_dataset
    from pipelines.registry import load_registry
    from pipelines.sequences import splits as sp

    rows = int(args.rows)
    csv = generate(args.work, rows, args.seed)
    cfg = load_registry().get("taobao").model_copy(update={"files": {"events": "events_*.csv"}})
    inc = DatasetLayout(args.work / "incremental", cfg.name)
    full = DatasetLayout(args.work / "full", cfg.name)
    for layout in (inc, full):
        shutil.rmtree(layout.root, ignore_errors=True)
    base_rows, drop_rows = split_drop(csv, inc.raw_dir, args.drop)
    quiet = lambda _msg: None  # noqa: E731
    print(f"base drop {base_rows:,} rows, daily drop {drop_rows:,} rows ({args.drop:.0%})")
    import polars as pl

    def users_of(name: str) -> pl.DataFrame:
        return pl.scan_csv(inc.raw_dir / name, has_header=False, schema={"u": pl.Utf8, "i": pl.Utf8, "c": pl.Utf8,
                           "b": pl.Utf8, "t": pl.Utf8}).select("u").unique().collect()
    base_users, drop_users = users_of("events_1.csv"), users_of("events_2.csv")
    known = drop_users.join(base_users, on="u").height
    print(f"the drop touches {drop_users.height:,} users: {known:,} known ({known / base_users.height:.1%} of the "
          f"base's {base_users.height:,}), {drop_users.height - known:,} new")
    shutil.move(inc.raw_dir / "events_2.csv", args.work / "events_2.csv")
    timed("initial ingest of the base (setup)", lambda: ingest_dataset(cfg, inc.raw_dir, inc.ingest_dir(), log=quiet))
    if not args.no_downstream:
        timed("its sequences and statistics (setup)", lambda: downstream(cfg, inc, quiet))
    shutil.move(args.work / "events_2.csv", inc.raw_dir / "events_2.csv")

    print("after the daily drop:")
    s_inc, t_inc = timed("incremental ingest", lambda: ingest_dataset(cfg, inc.raw_dir, inc.ingest_dir(), log=quiet))
    s_full, t_full = timed("full ingest (fresh folder)", lambda: ingest_dataset(cfg, inc.raw_dir, full.ingest_dir(), log=quiet))
    assert s_inc.mode == "incremental" and s_inc.files_parsed == ["events_2.csv"], (s_inc.mode, s_inc.reason)
    same = all((inc.ingest_dir() / INGEST_FILES[t]).read_bytes() == (full.ingest_dir() / INGEST_FILES[t]).read_bytes()
               for t in TABLES)
    print(f"  tables byte-identical: {same}; {s_full.rows_read:,} rows read, {s_full.rows_kept:,} kept")

    print(f"\nside by side, {rows:,} rows, {args.drop:.0%} daily drop:")
    if args.no_downstream:
        print(f"  {'':<28}{'incremental':>12}{'full':>10}{'ratio':>8}")
        print(f"  {'ingest':<28}{t_inc:>11.2f}s{t_full:>9.2f}s{t_full / t_inc:>7.1f}x")
        return
    print("incremental (steps and splits recompute the users whose events or steps changed):")
    d_inc = downstream(cfg, inc, quiet, show=True)
    print("the same refresh again, with nothing new (the weekly net, or an ingest that found no new file):")
    _, t_noop_ingest = timed("ingest (no new file)", lambda: ingest_dataset(cfg, inc.raw_dir, inc.ingest_dir(), log=quiet))
    d_noop = downstream(cfg, inc, quiet, show=True)
    print("full (fresh folder):")
    d_full = downstream(cfg, full, quiet, show=True)
    tables = [f for p in sp.PROTOCOLS for f in inc.split_dir(p).glob("*.parquet")]
    tables += list(inc.steps().parent.glob("*.parquet"))
    same = all(f.read_bytes() == (full.outputs_dir / f.relative_to(inc.outputs_dir)).read_bytes() for f in tables)
    print(f"  steps and split tables byte-identical: {same} ({len(tables)} files)")
    t_floor = touched_only_floor(cfg, inc, DatasetLayout(args.work / "touched", cfg.name), quiet)
    copy = copy_floor(inc, [inc.ingest_dir() / INGEST_FILES[t] for t in TABLES] + tables)

    print(f"\nside by side, {rows:,} rows, {args.drop:.0%} daily drop:")
    print(f"  {'':<28}{'incremental':>12}{'full':>10}{'ratio':>8}")
    rows_out = [("ingest", t_inc, t_full), *[(k, d_inc[k], d_full[k]) for k in d_inc if k != MODEL_READY]]
    for label, a, b in rows_out:
        print(f"  {label:<28}{a:>11.2f}s{b:>9.2f}s{b / a:>7.1f}x")
    total_inc = t_inc + sum(v for k, v in d_inc.items() if k != MODEL_READY)
    total_full = t_full + sum(v for k, v in d_full.items() if k != MODEL_READY)
    print(f"  {'ingest+sequences+statistics':<28}{total_inc:>11.2f}s{total_full:>9.2f}s"
          f"{total_full / total_inc:>7.1f}x   = {total_inc / total_full:.0%} of the full rebuild")
    t_noop = t_noop_ingest + sum(v for k, v in d_noop.items() if k != MODEL_READY)
    print(f"  {'nothing new (no-op refresh)':<28}{t_noop:>11.2f}s{total_full:>9.2f}s{total_full / t_noop:>7.1f}x"
          f"   = {t_noop / total_full:.0%} of the full rebuild")
    print(f"  {'(then) ' + MODEL_READY:<28}{d_inc[MODEL_READY]:>11.2f}s{d_full[MODEL_READY]:>9.2f}s"
          f"{d_full[MODEL_READY] / d_inc[MODEL_READY]:>7.1f}x   rebuilt in full after any change; "
          f"{d_noop[MODEL_READY]:.2f} s with nothing new")
    floor = t_inc + t_floor
    print(f"  {'floor: touched users only':<28}{floor:>11.2f}s{'':>10}{total_full / floor:>7.1f}x"
          f"   = {floor / total_full:.0%} of the full rebuild")
    for label, t, what in (
            ("writes alone", copy["write"], "writing the replaced tables whole, nothing read or computed"),
            ("read + write alone", copy["read"] + copy["write"], "the replaced tables copied whole, nothing computed"),
            ("read + write, polars lz4", copy["read"] + copy["write_lz4"], "the same with the fastest writer tried")):
        print(f"  {label:<28}{t:>11.2f}s{'':>10}{total_full / t:>7.1f}x   = {t / total_full:.0%} of the full rebuild: {what}")
    print("  (the floor: this incremental ingest, then sequences and statistics computed over the touched "
              "users' events alone,\n   no reading or merging of the untouched users' rows: what any refresh "
              "that recomputes whole touched users costs at least)")


if __name__ == "__main__":
    main()
