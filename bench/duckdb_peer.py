"""Benchmark: the pipeline against DuckDB (and pandas) on the same generated Taobao files, same run.

    pip install -e '.[bench]'                    # duckdb
    python bench/duckdb_peer.py                  # 100M rows; pandas on a 20M-row / 5M-event prefix
    python bench/duckdb_peer.py --rows 2e7 --pandas-rows 5e6 --pandas-events 2e6
    python bench/duckdb_peer.py --stages ingest --pandas-rows 0 --repeat 3   # 3 pairs, alternating order

Two stages, each run by every engine in its own child process under /usr/bin/time -v (wall seconds
and peak RSS of that process):
- **ingest**: UserBehavior.csv -> typed, validated (bad ids, unknown behaviors, times outside the
  window are counted and quarantined), exact duplicates dropped (first line kept), dense ids in
  raw-id order, events parquet ordered by (user, file line) plus the id maps.
- **sequences**: canonical events -> behavior-set steps (same-timestamp merge) with 60-minute
  sessions -> leave-one-out on `buy` -> the `all` leakage filter on valid/test histories -> padded
  [N, 50] model-ready arrays (items, behaviors, time gaps, sessions) for train/valid/test.
Both engines read the same input files. The DuckDB side is straightforward SQL (group-by, window
functions, list aggregates), the way a data engineer would write it; it checks its counts against
the pipeline's. Pandas (the existing baselines in ingest_taobao.py / sequences_taobao.py) runs on a
prefix, because at 100M rows it needs most of the machine's memory; its ratio is against the
pipeline on that same prefix.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest_taobao import ensure_csv, prefix  # noqa: E402
from sequences_taobao import ensure_events, subsample  # noqa: E402

MAX_LEN = 50
SESSION_GAP_MS = 60 * 60_000
BITS = {"pv": 1, "fav": 2, "cart": 4, "buy": 8}
WINDOW_S = (1511539200, 1512316800)  # [2017-11-25, 2017-12-04) China time, the registry's window


def _connect(threads: int | None = None):
    import duckdb

    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = true")
    if threads:
        con.execute(f"SET threads = {threads}")
    return con


def duckdb_ingest(raw_dir: str, out_dir: str) -> None:
    """CSV -> typed, deduplicated, dense-id events parquet, in DuckDB SQL."""
    con = _connect()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = Path(raw_dir) / "UserBehavior.csv"
    behavior = " ".join(f"WHEN '{k}' THEN {v}" for k, v in BITS.items())
    # every field as text, then TRY_CAST: a bad row is kept with a reason, not a failed read
    good = (f"raw_user_id IS NOT NULL AND raw_item_id IS NOT NULL AND behaviors IS NOT NULL "
            f"AND ts >= {WINDOW_S[0]} AND ts < {WINDOW_S[1]}")
    # every field as text, then TRY_CAST: a bad row is kept with a reason (and its text), not a failed read
    con.execute(f"""
        CREATE TEMP TABLE parsed AS
        WITH typed AS (
            SELECT row_number() OVER () AS source_line,
                   TRY_CAST(u AS BIGINT) AS raw_user_id, TRY_CAST(i AS BIGINT) AS raw_item_id,
                   CASE b {behavior} END::USMALLINT AS behaviors, TRY_CAST(t AS BIGINT) AS ts, u, i, c, b, t
            FROM read_csv('{csv}', header = false, all_varchar = true, null_padding = true,
                          columns = {{'u': 'VARCHAR', 'i': 'VARCHAR', 'c': 'VARCHAR', 'b': 'VARCHAR', 't': 'VARCHAR'}}))
        SELECT source_line, raw_user_id, raw_item_id, behaviors, ts, {good} AS ok,
               CASE WHEN NOT ({good}) THEN concat_ws(',', u, i, c, b, t) END AS raw_text
        FROM typed
    """)
    con.execute("""
        CREATE TEMP TABLE good AS
        SELECT raw_user_id, raw_item_id, behaviors, ts * 1000 AS timestamp, min(source_line) AS source_line
        FROM parsed WHERE ok
        GROUP BY ALL  -- exact duplicates: the first line is kept
    """)
    con.execute(f"""
        COPY (SELECT source_line, CASE WHEN raw_user_id IS NULL THEN 'unparsable user_id'
                                       WHEN raw_item_id IS NULL THEN 'unparsable item_id'
                                       WHEN behaviors IS NULL THEN 'unknown behavior'
                                       ELSE 'timestamp outside the valid range' END AS reason, raw_text
              FROM parsed WHERE NOT ok ORDER BY source_line) TO '{out / "quarantine.parquet"}' (FORMAT parquet)
    """)
    for side, raw in (("user", "raw_user_id"), ("item", "raw_item_id")):
        con.execute(f"""CREATE TEMP TABLE {side}_map AS
                        SELECT (row_number() OVER (ORDER BY {raw}) - 1)::UINTEGER AS {side}_id, {raw}
                        FROM (SELECT DISTINCT {raw} FROM good)""")
        con.execute(f"COPY {side}_map TO '{out / f'{side}_id_map.parquet'}' (FORMAT parquet)")
    con.execute(f"""
        COPY (SELECT u.user_id, m.item_id, g.behaviors, g.timestamp, g.source_line::BIGINT AS event_order,
                     'UserBehavior.csv' AS source_file, g.source_line::UINTEGER AS source_line
              FROM good g JOIN user_map u USING (raw_user_id) JOIN item_map m USING (raw_item_id)
              ORDER BY u.user_id, g.source_line) TO '{out / "events.parquet"}' (FORMAT parquet)
    """)
    n_read = con.execute("SELECT count(*) FROM parsed").fetchone()[0]
    n_kept = con.execute("SELECT count(*) FROM good").fetchone()[0]
    n_bad = con.execute(f"SELECT count(*) FROM '{out / 'quarantine.parquet'}'").fetchone()[0]
    users, items = (con.execute(f"SELECT count(*) FROM {s}_map").fetchone()[0] for s in ("user", "item"))
    print(json.dumps({"rows_read": n_read, "rows_kept": n_kept, "quarantined": n_bad,
                      "duplicates": n_read - n_bad - n_kept, "users": users, "items": items}))


def duckdb_sequences(root: str) -> None:
    """Events -> steps, sessions, leave-one-out + `all` filter, padded model-ready arrays, in DuckDB SQL."""
    import numpy as np

    con = _connect()
    events = Path(root) / "outputs" / "taobao" / "ingest" / "events.parquet"
    out = Path(root) / "duckdb_sequences"
    out.mkdir(parents=True, exist_ok=True)
    buy = BITS["buy"]
    # steps: a user's events on one item at one timestamp merge; order (time, first event); sessions
    con.execute(f"""
        CREATE TEMP TABLE steps AS
        WITH merged AS (
            SELECT user_id, item_id, timestamp, bit_or(behaviors) AS behaviors,
                   min(event_order) AS event_order, count(*) AS n_events
            FROM read_parquet('{events}') WHERE behaviors <> 0
            GROUP BY user_id, item_id, timestamp),
        ordered AS (
            SELECT *, (row_number() OVER w - 1)::UINTEGER AS step,
                   coalesce(timestamp - lag(timestamp) OVER w > {SESSION_GAP_MS}, false)::INTEGER AS new_session
            FROM merged WINDOW w AS (PARTITION BY user_id ORDER BY timestamp, event_order))
        SELECT user_id, step, item_id, behaviors, timestamp, event_order, n_events,
               (sum(new_session) OVER (PARTITION BY user_id ORDER BY step))::UINTEGER AS session
        FROM ordered ORDER BY user_id, step
    """)
    con.execute(f"COPY steps TO '{out / 'steps.parquet'}' (FORMAT parquet)")
    # leave-one-out: last buy step = test, the previous one = valid; users with < 2 buys excluded
    con.execute(f"""
        CREATE TEMP TABLE cut AS
        SELECT user_id, max(step::BIGINT) FILTER (WHERE rk = 2) AS valid, max(step::BIGINT) FILTER (WHERE rk = 1) AS test
        FROM (SELECT user_id, step, row_number() OVER (PARTITION BY user_id ORDER BY step DESC) AS rk
              FROM steps WHERE behaviors & {buy} <> 0)
        WHERE rk <= 2 GROUP BY user_id HAVING count(*) = 2
    """)
    con.execute(f"""
        COPY (SELECT s.user_id, s.step,
                     CASE WHEN c.user_id IS NULL OR s.step > c.test THEN 'excluded' WHEN s.step < c.valid THEN 'train'
                          WHEN s.step = c.valid THEN 'valid' WHEN s.step < c.test THEN 'between' ELSE 'test' END AS role
              FROM steps s LEFT JOIN cut c USING (user_id) ORDER BY s.user_id, s.step)
        TO '{out / 'roles.parquet'}' (FORMAT parquet)
    """)
    # examples: valid/test targets (history = steps before them), train = last train step (>= 2 train steps)
    con.execute("""
        CREATE TEMP TABLE examples AS
        SELECT c.user_id, r.role, s.step AS target_step, s.step::BIGINT AS history_end, s.item_id, s.behaviors, s.timestamp
        FROM cut c, (VALUES ('train'), ('valid'), ('test')) r(role), steps s
        WHERE s.user_id = c.user_id
          AND s.step = CASE r.role WHEN 'train' THEN c.valid - 1 WHEN 'valid' THEN c.valid ELSE c.test END
          AND (r.role <> 'train' OR c.valid >= 2)
    """)
    # history windows: the last MAX_LEN steps before the target; on valid/test the `all` filter drops
    # every same-item step holding only behaviors below the target's highest level
    con.execute(f"""
        CREATE TEMP TABLE history AS
        SELECT e.user_id, e.role, h.step, h.item_id, h.behaviors, h.timestamp, h.session
        FROM examples e JOIN steps h ON h.user_id = e.user_id
             AND h.step >= e.history_end - {MAX_LEN} AND h.step < e.history_end
        WHERE e.role = 'train' OR NOT (
            h.item_id = e.item_id AND h.behaviors & ~(CASE WHEN e.behaviors & {buy} <> 0 THEN {BITS['pv'] | BITS['fav'] | BITS['cart']}
                                                          WHEN e.behaviors & {BITS['fav'] | BITS['cart']} <> 0 THEN {BITS['pv']}
                                                          ELSE 0 END) = 0)
    """)
    con.execute(f"""
        CREATE TEMP TABLE model_ready AS
        WITH gaps AS (
            SELECT *, coalesce((timestamp - lag(timestamp) OVER (PARTITION BY user_id, role ORDER BY step)) // 1000, 0) AS gap
            FROM history),
        lists AS (
            SELECT user_id, role, list(item_id + 1 ORDER BY step) AS items, list(behaviors ORDER BY step) AS behaviors,
                   list(gap ORDER BY step) AS time_gaps, list(session + 1 ORDER BY step) AS sessions
            FROM gaps GROUP BY user_id, role)
        SELECT e.user_id, e.role, coalesce(len(l.items), 0) AS length, e.item_id + 1 AS target_item,
               e.behaviors AS target_behaviors,
               {', '.join(f"list_concat(list_resize([]::INTEGER[], {MAX_LEN} - coalesce(len(l.{a}), 0), 0), "
                          f"coalesce(l.{a}, []::INTEGER[])::INTEGER[])::INTEGER[{MAX_LEN}] AS {a}"
                          for a in ('items', 'behaviors', 'time_gaps', 'sessions'))}
        FROM examples e LEFT JOIN lists l USING (user_id, role)
    """)
    counts = {}
    for role in ("train", "valid", "test"):
        query = f"SELECT * FROM model_ready WHERE role = '{role}' ORDER BY user_id"
        con.execute(f"COPY ({query}) TO '{out / f'{role}.parquet'}' (FORMAT parquet)")
        table = con.execute(query).to_arrow_table()
        arrays = {a: table[a].combine_chunks().flatten().to_numpy().reshape(-1, MAX_LEN).astype(np.int32)
                  for a in ("items", "behaviors", "time_gaps", "sessions")}
        arrays.update(lengths=table["length"].to_numpy().astype(np.int32),
                      target_items=table["target_item"].to_numpy().astype(np.int32),
                      target_behaviors=table["target_behaviors"].to_numpy().astype(np.int32),
                      user_ids=table["user_id"].to_numpy().astype(np.int32))
        np.savez(out / f"{role}.npz", **arrays)
        counts[role] = len(arrays["user_ids"])
    n_steps = con.execute("SELECT count(*) FROM steps").fetchone()[0]
    removed = con.execute(f"""SELECT count(*) FROM examples e JOIN steps h ON h.user_id = e.user_id
                              AND h.step >= e.history_end - {MAX_LEN} AND h.step < e.history_end
                              WHERE e.role <> 'train'""").fetchone()[0] - con.execute(
        "SELECT count(*) FROM history WHERE role <> 'train'").fetchone()[0]
    print(json.dumps({"steps": n_steps, "model_ready": counts, "leak_steps_removed": removed}))


def same_arrays(ours: Path, theirs: Path) -> bool:
    import numpy as np

    for role in ("train", "valid", "test"):
        with np.load(ours / f"{role}.npz") as a, np.load(theirs / f"{role}.npz") as b:
            if set(a.files) != set(b.files) or any(not np.array_equal(a[k], b[k]) for k in a.files):
                return False
    return True


def warm(paths: list[Path]) -> None:
    """Read the input files once, untimed, so every engine starts with them in the page cache (the
    engine that ran first used to pay for reading the 3.3 GB CSV from disk, the second did not)."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def run_child(engine: str, stage: str, *args: str, inputs: list[Path] = ()) -> dict:
    """One engine's stage in a fresh process under /usr/bin/time -v; wall s, peak RSS GB, its summary line.
    ``inputs`` are read once first (untimed), so each engine starts with a warm page cache."""
    warm(list(inputs))
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, __file__, "--run", engine, stage, *args],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{engine} {stage} failed")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for kind in ("User", "System"))
    print(f"    {engine}: {proc.stdout.strip().splitlines()[-1]}", flush=True)
    return {"wall_s": wall, "peak_rss_gb": rss_kb / 1024**2, "cpu_s": cpu}


def child(engine: str, stage: str, args: list[str]) -> None:
    if engine == "duckdb":
        {"ingest": duckdb_ingest, "sequences": duckdb_sequences}[stage](*args)
        return
    import ingest_taobao
    import sequences_taobao

    module = ingest_taobao if stage == "ingest" else sequences_taobao
    {"pipeline": module.run_pipeline, "pandas": module.run_pandas}[engine](*args)


def row(name: str, r: dict[str, float], ours: dict[str, float]) -> str:
    """One engine's figures and its ratios to the pipeline's (CPU = user + system seconds, which a
    busy machine inflates less than wall time)."""
    return (f"  {name:<24} {r['wall_s']:8.1f} s {r['cpu_s']:8.1f} s {r['peak_rss_gb']:7.2f} GB   "
            f"{r['wall_s'] / ours['wall_s']:6.2f}x wall {r['cpu_s'] / ours['cpu_s']:6.2f}x CPU "
            f"{r['peak_rss_gb'] / ours['peak_rss_gb']:6.2f}x RSS")


def alternate(ours: Callable[[], dict], theirs: Callable[[], dict], repeat: int,
              label: str) -> tuple[dict, dict, float]:
    """Run both engines ``repeat`` times, alternating which goes first (a slow spell of a noisy host
    then hits both); print every pair; return the pair with the median wall ratio (the lower middle
    one for an even count: the figure less favourable to the pipeline) and that ratio."""
    pairs = []
    for i in range(repeat):
        if i % 2 == 0:
            a, b = ours(), theirs()
        else:
            b, a = theirs(), ours()
        pairs.append((a, b))
        if repeat > 1:
            print(f"  pair {i + 1}/{repeat} ({'pipeline' if i % 2 == 0 else 'DuckDB'} first):")
        print(f"  {'engine':<24} {'wall':>10} {'CPU':>10} {'peak RSS':>10}   relative to the pipeline")
        print(row(label, a, a))
        print(row("DuckDB SQL", b, a), flush=True)
    pairs.sort(key=lambda ab: ab[1]["wall_s"] / ab[0]["wall_s"])
    a, b = pairs[(len(pairs) - 1) // 2]
    if repeat > 1:
        ratios = ", ".join(f"{y['wall_s'] / x['wall_s']:.2f}x" for x, y in pairs)
        print(f"  wall ratios of the {repeat} pairs, sorted: {ratios}; the median pair is reported")
    return a, b, b["wall_s"] / a["wall_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=float, default=100e6)
    p.add_argument("--pandas-rows", type=float, default=20e6, help="CSV prefix for the pandas ingest (0: skip)")
    p.add_argument("--pandas-events", type=float, default=5e6, help="event prefix for the pandas sequences (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    p.add_argument("--stages", nargs="+", default=["ingest", "sequences"], choices=["ingest", "sequences"])
    p.add_argument("--repeat", type=int, default=1,
                   help="pairs of runs per stage, alternating which engine goes first; the median is reported")
    p.add_argument("--run", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        child(a.run[0], a.run[1], a.run[2:])
        return 0

    rows = int(a.rows)
    csv = a.work / f"taobao_{rows}" / "UserBehavior.csv"
    ensure_csv(csv, rows, a.seed)
    results: dict[str, dict[str, dict[str, float]]] = {}
    if "ingest" in a.stages:
        print(f"ingest, {rows:,} rows (the same CSV for both):", flush=True)
        ours, duck, _ = alternate(
            lambda: run_child("pipeline", "ingest", str(csv.parent), str(a.work / "peer_ingest_pipeline"), inputs=[csv]),
            lambda: run_child("duckdb", "ingest", str(csv.parent), str(a.work / "peer_ingest_duckdb"), inputs=[csv]),
            a.repeat, "pipeline (polars)")
        results["ingest"] = {"pipeline": ours, "duckdb": duck}
        if a.pandas_rows:
            n = int(min(a.pandas_rows, rows))
            sub = csv if n == rows else a.work / f"taobao_{rows}_prefix_{n}" / "UserBehavior.csv"
            if not sub.is_file():
                prefix(csv, sub, n)
            ours_p = run_child("pipeline", "ingest", str(sub.parent), str(a.work / "peer_ingest_pipeline_prefix"),
                               inputs=[sub])
            pandas = run_child("pandas", "ingest", str(sub.parent), str(a.work / "peer_ingest_pandas"), inputs=[sub])
            print(f"  on the first {n:,} rows:")
            print(row("pipeline (polars)", ours_p, ours_p))
            print(row("pandas", pandas, ours_p))
            results["ingest"].update(pipeline_prefix=ours_p, pandas=pandas)
        print(f"  DuckDB/pipeline wall ratio: {duck['wall_s'] / ours['wall_s']:.2f}x (target >= 1.0)", flush=True)
    if "sequences" in a.stages:
        events = a.work / f"seq_{rows}" / "outputs" / "taobao" / "ingest" / "events.parquet"
        ingested = a.work / "peer_ingest_pipeline" / "events.parquet"
        if not events.is_file() and "ingest" in a.stages and ingested.is_file():
            events.parent.mkdir(parents=True, exist_ok=True)  # the pipeline's events from the ingest above
            ingested.replace(events)
        root = ensure_events(a.work, rows, a.seed)
        print(f"sequences, the events of {rows:,} rows (the same events parquet for both):", flush=True)
        inputs = [root / "outputs" / "taobao" / "ingest" / "events.parquet"]
        ours, duck, _ = alternate(lambda: run_child("pipeline", "sequences", str(root), inputs=inputs),
                                  lambda: run_child("duckdb", "sequences", str(root), inputs=inputs),
                                  a.repeat, "pipeline (polars+numpy)")
        results["sequences"] = {"pipeline": ours, "duckdb": duck}
        same = same_arrays(root / "outputs" / "taobao" / "model_ready" / "leave_one_out", root / "duckdb_sequences")
        print(f"  model-ready arrays identical (pipeline vs DuckDB, train/valid/test): {same}", flush=True)
        if a.pandas_events:
            n = int(a.pandas_events)
            sub = subsample(root, a.work / f"seq_{rows}_prefix_{n}", n)
            sub_inputs = [sub / "outputs" / "taobao" / "ingest" / "events.parquet"]
            ours_p = run_child("pipeline", "sequences", str(sub), inputs=sub_inputs)
            pandas = run_child("pandas", "sequences", str(sub), inputs=sub_inputs)
            print(f"  on the first {n:,} events:")
            print(row("pipeline (polars+numpy)", ours_p, ours_p))
            print(row("pandas", pandas, ours_p))
            results["sequences"].update(pipeline_prefix=ours_p, pandas=pandas)
        print(f"  DuckDB/pipeline wall ratio: {duck['wall_s'] / ours['wall_s']:.2f}x (target >= 2.0)", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
