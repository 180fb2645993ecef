"""Refreshes without clicks: the raw-data sensor, declarative automation downstream, the run-failure
report, and the weekly safety net.

- ``raw_data_sensor`` (on by default) fingerprints every dataset's raw folder each tick and asks for an
  ingest run of exactly the dataset whose files changed (run key: the files' content, so one drop never
  runs twice). Its tick says what it saw.
- Every asset below ingest carries ``REFRESH``: Dagster's ``eager()`` condition (run when a dependency
  of the same dataset updated, never while one is missing or in progress) that also waits while a
  dependency's latest run failed. ``downstream_refresh`` is the automation-condition sensor that
  evaluates them (on by default), so a refreshed ``canonical_events`` partition re-materializes that
  dataset's downstream assets only.
- ``record_run_failure`` writes every failed run (steps and errors) into the dataset's failure report,
  which the dataset card shows.
- ``weekly_dataset_refresh`` (off by default) re-materializes everything as a safety net.

The plain logic (fingerprints, cursor, failure records) is ``pipelines.refresh``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import dagster as dg

from assets.partitions import dataset_partitions
from assets.executors import run_tags
from assets.shards import event_shards_job
from pipelines.refresh import decode_cursor, encode_cursor, record_failure, scan_raw_folder
from pipelines.resources import PipelineSettings

# How often the sensors look (seconds): 30 by default; tests and small deployments may set less.
SENSOR_INTERVAL_S = int(os.environ.get("MBREC_SENSOR_INTERVAL_S", "30"))

# Declarative automation --------------------------------------------------------------------------
REFRESH = (
    dg.AutomationCondition.eager()
    & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.execution_failed())
).with_label("eager, unless an upstream run of this dataset failed")

# The cross-dataset leaderboard has one partition; eager() would wait until *every* dataset has an
# evaluation (it never runs with a missing dependency), so it follows any dataset's update instead.
LEADERBOARD_REFRESH = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after any dataset's evaluation")

# Freshness: the weekly safety net refreshes everything, so older than 8 days is a failure; a daily
# drop that has not flowed through within 2 days is a warning.
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=2))
DATASET_FACING = ("canonical_events", "model_ready_sequences", "behavior_statistics", "semantic_ids", "evaluation")

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest"),
    description="Raw files -> canonical events for one dataset partition (the raw-data sensor's target).",
)


@dg.sensor(jobs=[ingest_job, event_shards_job], minimum_interval_seconds=SENSOR_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches data/raw/<dataset>/ of every registry dataset (name, size, modification time, "
                       "hashes of head and tail) and requests an ingest run of the dataset whose files are new, "
                       "grown, replaced or shrunk. Downstream assets follow through declarative automation.")
def raw_data_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettings) -> dg.SensorResult:
    state = decode_cursor(context.cursor)
    registry = settings.registry()
    loaded = set(dataset_partitions.get_partition_keys())
    requests, seen, notes = [], [], []
    remote = settings.remote()
    if remote is not None:  # an object-store data root: bring its raw folders into the working copy first
        remote.pull([f"raw/{name}" for name in registry.names if name in loaded], log=context.log.info)
    for name in registry.names:
        if name not in loaded:
            notes.append(f"{name} is in the registry but not a partition yet: reload the code location")
            continue
        paths = settings.paths(name)
        published = None
        if remote is not None and state.get(name) is None:  # first look: the store knows what was ingested
            published = remote.published_at_ns(paths.ingest_dir().relative_to(paths.root).as_posix())
        change = scan_raw_folder(name, paths, state.get(name), published)
        state[name] = change.files
        if not change.changed:
            continue
        seen.append(change.describe())
        if change.needs_run:
            cfg = registry.get(name) if name not in registry.broken else None
            sharded = cfg is not None and cfg.shards > 1  # the map step of the sharded path instead
            requests.append(dg.RunRequest(run_key=change.run_key, partition_key=name,
                                          job_name=(event_shards_job if sharded else ingest_job).name,
                                          tags={**run_tags(cfg),"mbrec/trigger": "raw files changed",
                                                "mbrec/changed_files": ", ".join(change.changed)[:200]}))
        else:
            notes.append(f"{name}: raw files removed and none left; no run (outputs kept)")
    for line in seen + notes:
        context.log.info(line)
    watched = len(registry.names)
    skip = None if requests else f"no new raw files in {watched} dataset(s)" + (f"; {'; '.join(notes)}" if notes else "")
    return dg.SensorResult(run_requests=requests, cursor=encode_cursor(state), skip_reason=skip)


downstream_refresh = dg.AutomationConditionSensorDefinition(
    "downstream_refresh",
    target=dg.AssetSelection.all() - dg.AssetSelection.groups("ingest"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    emit_backfills=False,  # plain runs, one per dataset, queued under the instance's run limits
    description="Evaluates the automation conditions of every asset below ingest: a refreshed dataset's "
                "downstream assets re-materialize, that dataset only.",
)


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=SENSOR_INTERVAL_S,
                       description="Writes each failed run (its failed steps and errors) into the dataset's "
                                   "failure report, outputs/<dataset>/reports/failures.jsonl, shown by the dataset card.")
def record_run_failure(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    # a shard run's partition is "<dataset>|<shard>"; its dataset has its own tag
    dataset = run.tags.get("dagster/partition/dataset") or run.tags.get("dagster/partition")
    if not dataset:
        return
    steps = [{"step": e.step_key, "error": _root_message(e.event_specific_data.error if e.event_specific_data else None)}
             for e in context.get_step_failure_events()]
    settings = PipelineSettings()
    remote, scope = settings.remote(), [settings.paths(dataset).failures().parent.relative_to(
        settings.data_root_path()).as_posix()]
    if remote is not None:
        remote.pull(scope, log=context.log.info)
    path = record_failure(settings.paths(dataset), {
        "run_id": run.run_id, "job": run.job_name,
        "trigger": run.tags.get("mbrec/trigger") or run.tags.get("dagster/sensor_name") or "manual",
        "failed_steps": steps,
        "error": (context.failure_event.message or "")[:2000],
    })
    if remote is not None:
        remote.push(scope, log=context.log.info)
    context.log.info(f"{dataset}: run {run.run_id} failed; recorded in {path}")


def _root_message(error) -> str:
    """The user's error under Dagster's wrappers (a step failure's cause chain), shortened."""
    if error is None:
        return ""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return (error.message or "").strip()[:2000]


all_assets_job = dg.define_asset_job(
    "materialize_all",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("shards"),
    description="Every asset (and its checks) for one dataset partition (the single-machine path; a sharded "
                "run is the 'shards' group).",
)


@dg.schedule(job=all_assets_job, cron_schedule="0 3 * * 1", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED)
def weekly_dataset_refresh(context: dg.ScheduleEvaluationContext):
    """Re-materialize every dataset weekly (Mondays 03:00 UTC): the safety net under the sensors."""
    for key in dataset_partitions.get_partition_keys():
        yield dg.RunRequest(run_key=f"{context.scheduled_execution_time:%Y-%m-%d}-{key}", partition_key=key)


def with_automation(assets: list[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """Attach the refresh conditions and freshness policies to every asset below ingest."""

    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        changes: dict[str, object] = {}
        if spec.group_name != "ingest":
            changes["automation_condition"] = LEADERBOARD_REFRESH if spec.partitions_def is None else REFRESH
        if name in DATASET_FACING:
            changes["freshness_policy"] = FRESHNESS
        return spec.replace_attributes(**changes) if changes else spec

    return dg.map_asset_specs(attach, assets)
