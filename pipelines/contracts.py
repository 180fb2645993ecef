"""Running the pandera contracts and the semantic checks on written tables (no Dagster here)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandera.errors
import pandera.polars as pa
import polars as pl

from pipelines.layout import INGEST_FILES, DatasetLayout
from pipelines.storage import VersionedOutputs
from schemas import columns as c

# Above this many rows a contract checks values on an evenly strided sample (schema on all).
FULL_VALIDATION_ROWS = 5_000_000


@dataclass
class ContractResult:
    passed: bool
    table: str
    rows: int
    rows_checked: int
    message: str
    failure_cases: pl.DataFrame | None = None
    details: dict[str, object] = field(default_factory=dict)


def combined(results: list[ContractResult]) -> ContractResult:
    """Several tables' results as one: the first failure, or every table's rows and messages."""
    for r in results:
        if not r.passed:
            return r
    return ContractResult(True, ", ".join(dict.fromkeys(r.table for r in results)), sum(r.rows for r in results),
                          sum(r.rows_checked for r in results), "; ".join(r.message for r in results))


def validate_parquet(path: Path, model: type[pa.DataFrameModel], *, max_rows: int = FULL_VALIDATION_ROWS) -> ContractResult:
    """Validate a parquet file against a pandera model; failure cases name column, check and value."""
    name = model.__name__
    if not path.is_file():
        return ContractResult(False, name, 0, 0, f"{path}: table not found (was the asset materialized?)")
    lf = pl.scan_parquet(path)
    rows = lf.select(pl.len()).collect().item()
    stride = max(1, math.ceil(rows / max_rows))
    frame = (lf.gather_every(stride) if stride > 1 else lf).collect()
    try:
        model.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as e:
        cases = e.failure_cases
        checks = sorted(set(cases["check"].cast(pl.String).to_list())) if "check" in cases.columns else []
        cols = sorted({str(x) for x in cases["column"].to_list()}) if "column" in cases.columns else []
        first = [str(v) for v in cases["failure_case"].head(5).to_list()] if "failure_case" in cases.columns else []
        return ContractResult(
            False, name, rows, frame.height,
            f"{name} contract failed on {path.name}: {len(cases)} failure case(s) in column(s) {cols}, "
            f"check(s) {checks}; first failing values: {first}",
            failure_cases=cases,
        )
    scope = "all rows" if stride == 1 else f"every {stride}th row ({frame.height:,} of {rows:,})"
    return ContractResult(True, name, rows, frame.height, f"{name} contract holds on {scope} of {path.name}")


def ingest_consistency(out_dir: Path) -> ContractResult:
    """Semantic checks across the ingest tables: counts reconcile, id maps dense, events reference them."""
    report = json.loads((out_dir / INGEST_FILES["ingest_report"]).read_text())
    problems: list[str] = []
    manifest = out_dir / VersionedOutputs.MANIFEST
    if manifest.is_file():  # one published version: every file it names, at the size it was written
        files = json.loads(manifest.read_text())["files"]
        torn = [n for n, size in files.items() if not (out_dir / n).is_file() or (out_dir / n).stat().st_size != size]
        if torn:
            problems.append(f"files differ from the published version's manifest: {torn}")
    read, kept, bad, dup = (report[k] for k in ("rows_read", "rows_kept", "rows_quarantined", "duplicates_dropped"))
    if read != kept + bad + dup:
        problems.append(f"rows read {read} != kept {kept} + quarantined {bad} + duplicates {dup}")
    events = pl.scan_parquet(out_dir / INGEST_FILES["events"])
    stats = events.select(
        pl.len().alias("rows"), pl.col(c.USER_ID).max().alias("max_user"), pl.col(c.ITEM_ID).max().alias("max_item"),
        pl.col(c.USER_ID).n_unique().alias("users"), pl.col(c.ITEM_ID).n_unique().alias("items"),
    ).collect().row(0, named=True)
    if stats["rows"] != kept:
        problems.append(f"events has {stats['rows']} rows but the report says {kept} were kept")
    quarantined = pl.scan_parquet(out_dir / INGEST_FILES["quarantine"]).select(pl.len()).collect().item()
    if quarantined != bad:
        problems.append(f"quarantine has {quarantined} rows but the report says {bad}")
    for table, dense, raw, used, max_used in (
        ("user_id_map", c.USER_ID, c.RAW_USER_ID, stats["users"], stats["max_user"]),
        ("item_id_map", c.ITEM_ID, c.RAW_ITEM_ID, stats["items"], stats["max_item"]),
    ):
        m = pl.read_parquet(out_dir / INGEST_FILES[table])
        if m[dense].to_list() != list(range(m.height)):
            problems.append(f"{table}: dense ids are not exactly 0..{m.height - 1} in order")
        if m[raw].n_unique() != m.height:
            problems.append(f"{table}: raw ids repeat (not a bijection)")
        if used != m.height or (max_used is not None and max_used >= m.height):
            problems.append(f"{table}: events use {used} ids (max {max_used}) but the map holds {m.height}")
    side = pl.scan_parquet(out_dir / INGEST_FILES["item_side_info"]).select(pl.len()).collect().item()
    if side != stats["items"]:
        problems.append(f"item_side_info has {side} rows for {stats['items']} items")
    message = "; ".join(problems) if problems else (
        f"{read:,} rows read = {kept:,} kept + {bad:,} quarantined + {dup:,} duplicates; id maps dense and bijective"
    )
    return ContractResult(not problems, "ingest_consistency", read, read, message, details={"problems": problems})


def split_consistency(paths: DatasetLayout, protocol: str, leakage_filter: str, max_len: int, cfg) -> ContractResult:
    """Semantic checks of one split: one role per step, histories strictly before targets, targets
    in their role, and (for filters 'all'/'merge') no leaking step left in any history window."""
    from pipelines.sequences.leakage import find_leaks

    steps = pl.read_parquet(paths.steps())
    roles = pl.read_parquet(paths.roles(protocol))
    examples = pl.read_parquet(paths.examples(protocol))
    problems: list[str] = []
    if roles.height != steps.height or not roles.select(c.USER_ID, "step").is_unique().all():
        problems.append(f"roles cover {roles.height} rows for {steps.height} steps, or repeat a step")
    if (examples["history_end"] > examples["target_step"]).any():
        problems.append("a history reaches its own target step")
    target_roles = examples.join(roles, left_on=[c.USER_ID, "target_step"], right_on=[c.USER_ID, "step"])
    if (target_roles["role"] != target_roles["role_right"]).any():
        problems.append("a target step's role differs from its example's role")
    if leakage_filter in ("all", "merge"):
        remaining = find_leaks(steps, examples.drop("dropped_steps"), cfg, "all", max_len)
        dropped = examples.with_row_index("example").select("example", pl.col("dropped_steps").alias("step")).explode("step")
        left = remaining.join(dropped.drop_nulls(), on=["example", "step"], how="anti")
        if left.height:
            problems.append(f"{left.height} leaking history steps remain after the '{leakage_filter}' filter")
    message = "; ".join(problems) if problems else (
        f"{steps.height:,} steps in exactly one role; {examples.height:,} histories end before their targets"
        + ("; no same-item lower-level step left in any history window" if leakage_filter in ("all", "merge") else ""))
    return ContractResult(not problems, "split_consistency", steps.height, steps.height, message)


def model_ready_consistency(directory: Path, max_len: int) -> ContractResult:
    """Arrays are [N, max_len], left-padded (exactly `length` non-zero items, all at the end), and
    the parquet and npz copies agree."""
    import numpy as np

    problems: list[str] = []
    n_total = 0
    for npz in sorted(directory.glob("*/*.npz")):
        with np.load(npz) as a:
            n = len(a["user_ids"])
            n_total += n
            for k in ("items", "behaviors", "time_gaps", "sessions"):
                if a[k].shape != (n, max_len):
                    problems.append(f"{npz.parent.name}/{npz.name}: {k} has shape {a[k].shape}, expected ({n}, {max_len})")
            nonzero = a["items"] != 0
            if (nonzero.sum(axis=1) != a["lengths"]).any():
                problems.append(f"{npz.parent.name}/{npz.name}: lengths disagree with the non-padding items")
            expected = np.arange(max_len)[None, :] >= (max_len - a["lengths"])[:, None]
            if (nonzero != expected).any():
                problems.append(f"{npz.parent.name}/{npz.name}: padding is not strictly on the left")
            frame = pl.read_parquet(npz.with_suffix(".parquet"), columns=["items", "length"])
            if frame.height != n or not np.array_equal(frame["items"].to_numpy(), a["items"]):
                problems.append(f"{npz.parent.name}/{npz.name}: parquet and npz disagree")
    if not n_total:
        problems.append(f"{directory}: no model-ready arrays found")
    message = "; ".join(problems) if problems else f"{n_total:,} sequences left-padded to {max_len}; parquet = npz"
    return ContractResult(not problems, "model_ready_consistency", n_total, n_total, message)


def statistics_consistency(stats_json: Path, roles_path: Path, steps_path: Path) -> ContractResult:
    """M symmetric with zero diagonal and consistent with m; computed over training steps only."""
    import json

    import numpy as np

    doc = json.loads(stats_json.read_text())
    m, M = np.array(doc["m"]), np.array(doc["M"])
    problems = []
    if not (M == M.T).all():
        problems.append("M is not symmetric")
    if (np.diag(M) != 0).any():
        problems.append("M has a non-zero diagonal")
    if (M > np.minimum.outer(m, m)).any():
        problems.append("some M[i, j] exceeds min(m[i], m[j])")
    if sum(doc["set_size_counts"]) != doc["training_sets"]:
        problems.append("set sizes do not add up to the training sets")
    train = (pl.scan_parquet(steps_path).join(pl.scan_parquet(roles_path).filter(pl.col("role") == "train"),
                                              on=[c.USER_ID, "step"], how="semi")
             .select(pl.len()).collect().item())
    if doc["training_sets"] != train:
        problems.append(f"statistics count {doc['training_sets']} sets but the split has {train} training steps")
    message = "; ".join(problems) if problems else (
        f"M symmetric, zero diagonal, bounded by m; {train:,} sets = the split's training steps only")
    return ContractResult(not problems, "statistics_consistency", train, train, message)


def validate_frame(frame: pl.DataFrame, model: type[pa.DataFrameModel], label: str) -> ContractResult:
    """A pandera model on an in-memory frame (for files that are not parquet)."""
    try:
        model.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as e:
        cases = e.failure_cases
        first = [str(v) for v in cases["failure_case"].head(5).to_list()] if "failure_case" in cases.columns else []
        cols = sorted({str(x) for x in cases["column"].to_list()}) if "column" in cases.columns else []
        checks = sorted(set(cases["check"].cast(pl.String).to_list())) if "check" in cases.columns else []
        return ContractResult(False, model.__name__, frame.height, frame.height,
                              f"{model.__name__} contract failed on {label}: column(s) {cols}, check(s) {checks}; "
                              f"first failing values: {first}", failure_cases=cases)
    return ContractResult(True, model.__name__, frame.height, frame.height,
                          f"{model.__name__} contract holds on all {frame.height:,} rows of {label}")


def exports_contract(paths: DatasetLayout) -> ContractResult:
    """The exported BLADE split files and RecBole files parse and satisfy their contracts."""
    from schemas.sequences import BladeSplitLine, RecBoleBenchmarkInter, RecBoleInter

    results = []
    exports_dir = paths.exports_dir()
    for f in paths.blade_files():
        if f.stat().st_size == 0:
            continue
        frame = pl.read_csv(f, has_header=False, infer_schema_length=0).cast(pl.Int64)
        frame.columns = ["user", "item", *[f"b{i}" for i in range(1, frame.width - 1)]]
        results.append(validate_frame(frame, BladeSplitLine, f"{f.parent.name}/{f.name}"))
    for f in [paths.recbole_inter()] if paths.recbole_inter().is_file() else []:
        frame = pl.read_csv(f, separator="\t", schema_overrides={"user_id:token": pl.Int64, "item_id:token": pl.Int64,
                                                                   "timestamp:float": pl.Float64,
                                                                   "behaviors:token_seq": pl.String,
                                                                   "session_id:token": pl.Int64})
        results.append(validate_frame(frame, RecBoleInter, f"{f.parent.name}/{f.name}"))
    for f in [p for p in map(paths.recbole_benchmark, ("train", "valid", "test")) if p.is_file()]:
        frame = pl.read_csv(f, separator="\t", schema_overrides={"user_id:token": pl.Int64, "item_id:token": pl.Int64,
                                                                   "item_id_list:token_seq": pl.String})
        results.append(validate_frame(frame, RecBoleBenchmarkInter, f"{f.parent.parent.name}/{f.parent.name}/{f.name}"))
    failed = [r for r in results if not r.passed]
    if not results:
        return ContractResult(False, "exports", 0, 0, f"{exports_dir}: no exported files found")
    if failed:
        return failed[0]
    rows = sum(r.rows for r in results)
    return ContractResult(True, "exports", rows, rows, f"{len(results)} exported files hold their contracts ({rows:,} rows)")
