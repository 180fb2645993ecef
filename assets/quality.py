"""Data-quality reports: Great Expectations suites as asset checks that write HTML Data Docs.

Non-blocking: they are the human-readable report; the blocking pandera contracts enforce.
"""

import warnings

import dagster as dg

from assets.object_store import synced
from assets.partitions import dataset_partitions
from assets.sequences import model_ready_sequences
from pipelines.layout import producers_of
from pipelines.quality import SuiteResult, canonical_events_suite, model_ready_suite, run_suites
from pipelines.resources import PipelineSettings
from pipelines.sequences.options import SequenceOptions

warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def _result(results: dict[str, SuiteResult]) -> dg.AssetCheckResult:
    failed = {k: r.failed_expectations for k, r in results.items() if not r.success}
    return dg.AssetCheckResult(
        passed=not failed,
        description="all expectations met" if not failed else f"failed: {failed}",
        metadata={
            "suites": dg.MetadataValue.json({k: {"evaluated": r.evaluated, "failed": r.failed,
                                                 "rows_checked": r.rows_checked} for k, r in results.items()}),
            **{f"data_docs_{k}": dg.MetadataValue.path(str(r.docs_index)) for k, r in results.items()},
        },
    )


@dg.asset_check(asset="canonical_events", blocking=False, partitions_def=dataset_partitions,
                description="Great Expectations suite on a deterministic sample; HTML Data Docs under "
                            "outputs/<dataset>/quality/data_docs/canonical_events/.")
@synced
def canonical_events_expectations(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    docs = paths.data_docs("canonical_events")
    return _result({"canonical_events": canonical_events_suite(cfg, paths.events(), docs)})


@dg.asset_check(asset=model_ready_sequences, blocking=False, partitions_def=dataset_partitions,
                description="Great Expectations suites on every model-ready table; HTML Data Docs under "
                            "outputs/<dataset>/quality/data_docs/model_ready/ (a page per table).")
@synced
def model_ready_expectations(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    cfg = settings.dataset(context.partition_key)
    paths = settings.paths(cfg.name)
    max_len = SequenceOptions.of(cfg).max_len
    suites = [model_ready_suite(cfg, table, max_len) for table in paths.model_ready_tables()]
    results = run_suites(suites, paths.data_docs("model_ready"))
    return _result({name.removeprefix("model_ready_"): r for name, r in results.items()})


quality_checks = [canonical_events_expectations, model_ready_expectations]


def latest_check_results(instance: dg.DagsterInstance, partition_key: str, keys: list[dg.AssetCheckKey],
                         runs_back: int = 25) -> list[dict[str, str]]:
    """The newest evaluation of each check for one dataset partition, from its recent runs.

    Public instance API only: the partition's runs (``get_run_records`` by the partition tag), newest
    first, and each run's check-evaluation events (``all_logs``).
    """
    wanted = set(keys)
    newest: dict[dg.AssetCheckKey, object] = {}
    runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": partition_key}), limit=runs_back)
    for run in runs:  # newest first
        for entry in instance.all_logs(run.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
            key = getattr(evaluation, "asset_check_key", None)
            if key in wanted and key not in newest:
                newest[key] = evaluation
        if len(newest) == len(wanted):
            break
    rows = []
    for key in sorted(newest, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        evaluation = newest[key]
        rows.append({"asset": key.asset_key.to_user_string(), "check": key.name,
                     "result": "passed" if getattr(evaluation, "passed", False) else "FAILED",
                     "message": (getattr(evaluation, "description", None) or "")[:200]})
    return rows


@dg.asset(
    deps=producers_of("leakage_audit", "statistics", "model_ready", "sequential_views", "exports", "semantic_ids",
                      "evaluation_results"),
    partitions_def=dataset_partitions, group_name="reports", kinds={"html", "markdown"},
    description="A readable report per dataset: counts, behavior/set-size/sequence-length distributions, "
                "sessions, splits, leakage audit, behavior statistics, semantic-ID quality, leaderboard, "
                "latest check results, provenance.",
)
@synced
def dataset_card(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    from pipelines.dataset_card import write_card

    cfg = settings.dataset(context.partition_key)
    from assets.augmentation import augmentation_checks
    from assets.ingest import ingest_checks
    from assets.semantic_ids import semantic_id_checks
    from assets.sequences import sequence_checks
    from assets.training import training_checks

    keys = [k for chk in (*ingest_checks, *sequence_checks, *augmentation_checks, *semantic_id_checks,
                          *training_checks, *quality_checks)
            for k in chk.check_keys]
    checks = latest_check_results(context.instance, context.partition_key, keys)
    files = write_card(cfg, settings.paths(cfg.name), checks)
    return dg.MaterializeResult(metadata={
        "html": dg.MetadataValue.path(str(files["html"])), "markdown": dg.MetadataValue.path(str(files["markdown"])),
        "checks_listed": len(checks),
        "checks_failed": sum(1 for ch in checks if ch["result"] == "FAILED"),
    })
