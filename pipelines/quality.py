"""Great Expectations 1.x suites and HTML Data Docs (called directly: dagster-ge needs GX < 1.0).

GX has no polars data source, so each suite runs on a deterministic pandas sample (every k-th row,
at most ``max_rows``); the pandera contracts check every row. Data Docs are written to
data/outputs/<dataset>/quality/data_docs/ (open index.html).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipelines.registry import DatasetConfig
from schemas import columns as c

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass
class SuiteResult:
    success: bool
    evaluated: int
    failed: int
    failed_expectations: list[str]
    rows_checked: int
    docs_index: Path


def _sample(path: Path, max_rows: int, columns: list[str] | None = None) -> pl.DataFrame:
    lf = pl.scan_parquet(path)
    if columns:
        lf = lf.select(columns)
    n = lf.select(pl.len()).collect().item()
    stride = max(1, math.ceil(n / max_rows))
    return (lf.gather_every(stride) if stride > 1 else lf).collect()


@dataclass(frozen=True)
class Suite:
    """One expectation suite to run on one frame (a table's sample)."""

    name: str
    frame: pl.DataFrame
    expectations: list


def run_suites(suites: list[Suite], docs_dir: Path) -> dict[str, SuiteResult]:
    """Run every suite in one GX context and build one Data Docs site in ``docs_dir`` (a page per
    suite; one site build renders GX's templates once instead of once per suite)."""
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX's "Calculating Metrics" bars would flood the run log; tqdm's env switch is read at its import,
    # which may come before ours, so the context's own setting turns them off
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.add_data_docs_site(site_name="mbrec", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_pandas("pandas")
    results: dict[str, SuiteResult] = {}
    for s in suites:
        batch = source.add_dataframe_asset(name=s.name).add_batch_definition_whole_dataframe("sample")
        suite = context.suites.add(gx.ExpectationSuite(name=s.name))
        for e in s.expectations:
            suite.add_expectation(e)
        validation = context.validation_definitions.add(gx.ValidationDefinition(name=s.name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(name=s.name, validation_definitions=[validation]))
        result = checkpoint.run(batch_parameters={"dataframe": s.frame.to_pandas()})
        run = next(iter(result.run_results.values()))
        failed = [r.expectation_config.type + (f"({r.expectation_config.kwargs.get('column')})"
                                               if r.expectation_config.kwargs.get("column") else "")
                  for r in run.results if not r.success]
        stats = run.statistics
        results[s.name] = SuiteResult(bool(result.success), int(stats["evaluated_expectations"]),
                                      int(stats["unsuccessful_expectations"]), failed, s.frame.height,
                                      docs_dir / "index.html")
    context.build_data_docs(site_names=["mbrec"])
    return results


def run_suite(name: str, frame: pl.DataFrame, expectations: list, docs_dir: Path) -> SuiteResult:
    """Run ``expectations`` on ``frame`` and write its Data Docs in ``docs_dir``."""
    return run_suites([Suite(name, frame, expectations)], docs_dir)[name]


def _source_file_expectation(cfg: DatasetConfig):
    """Events come from the registry's files; a glob pattern (daily drops) admits every match."""
    import fnmatch
    import glob

    import great_expectations as gx

    names = cfg.all_file_names
    if not any(glob.has_magic(n) for n in names):
        return gx.expectations.ExpectColumnValuesToBeInSet(column=c.SOURCE_FILE, value_set=names)
    regex = "|".join(f"(?:{fnmatch.translate(n)})" for n in names)
    return gx.expectations.ExpectColumnValuesToMatchRegex(column=c.SOURCE_FILE, regex=regex)


def canonical_events_suite(cfg: DatasetConfig, events_path: Path, docs_dir: Path, max_rows: int = 200_000) -> SuiteResult:
    import great_expectations as gx

    e = gx.expectations
    frame = _sample(events_path, max_rows)
    full_mask = (1 << len(cfg.behaviors)) - 1
    expectations = [
        e.ExpectTableColumnsToMatchOrderedList(column_list=list(c.EVENT_COLUMNS)),
        *[e.ExpectColumnValuesToNotBeNull(column=col) for col in (c.USER_ID, c.ITEM_ID, c.BEHAVIORS, c.EVENT_ORDER)],
        e.ExpectColumnValuesToBeBetween(column=c.BEHAVIORS, min_value=0, max_value=full_mask),
        e.ExpectColumnValuesToBeUnique(column=c.EVENT_ORDER),
        e.ExpectColumnValuesToBeBetween(column=c.SOURCE_LINE, min_value=1),
        _source_file_expectation(cfg),
    ]
    if cfg.time.unit == "none":
        expectations.append(e.ExpectColumnValuesToBeNull(column=c.TIMESTAMP))
    else:
        expectations.append(e.ExpectColumnValuesToNotBeNull(column=c.TIMESTAMP))
    return run_suite("canonical_events", frame, expectations, docs_dir)


def model_ready_suite(cfg: DatasetConfig, table: Path, max_len: int, max_rows: int = 200_000) -> Suite:
    """The suite of one model-ready table (``model_ready/<protocol>/<role>.parquet``); run the tables'
    suites together with ``run_suites``."""
    import great_expectations as gx

    e = gx.expectations
    frame = _sample(table, max_rows, [c.USER_ID, "role", "length", "target_item", "target_behaviors"])
    expectations = [
        e.ExpectColumnValuesToBeBetween(column="length", min_value=0, max_value=max_len),
        e.ExpectColumnValuesToBeBetween(column="target_item", min_value=1),
        e.ExpectColumnValuesToBeBetween(column="target_behaviors", min_value=1, max_value=(1 << len(cfg.behaviors)) - 1),
        e.ExpectColumnMeanToBeBetween(column="length", min_value=1),
    ]
    if table.parent.name != "session":  # the session protocol has one target per held-out step
        expectations.append(e.ExpectColumnValuesToBeUnique(column=c.USER_ID))
    return Suite(f"model_ready_{table.parent.name}_{table.stem}", frame, expectations)
