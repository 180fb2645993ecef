"""The Dagster code location: every stage's assets and checks, jobs, the refresh schedule, resources."""


import warnings

import dagster as dg

# Partition-aware asset checks are "preview" in Dagster 1.13; we rely on them knowingly.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from assets.augmentation import augmentation_assets, augmentation_checks
from assets.ingest import ingest, ingest_checks
from assets.quality import dataset_card, quality_checks
from assets.semantic_ids import semantic_id_assets, semantic_id_checks
from assets.sequences import sequence_assets, sequence_checks
from assets.training import training_assets, training_checks
from assets.partitions import dataset_partitions
from pipelines.resources import PipelineSettings

all_assets_job = dg.define_asset_job(
    "materialize_all",
    selection=dg.AssetSelection.all(),
    description="Every asset (and its checks) for one dataset partition.",
)
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest"),
    description="Raw files -> canonical events for one dataset partition.",
)


@dg.schedule(job=all_assets_job, cron_schedule="0 3 * * 1", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED)
def weekly_dataset_refresh(context: dg.ScheduleEvaluationContext):
    """Re-materialize every dataset weekly (Mondays 03:00 UTC) so new raw drops flow through."""
    for key in dataset_partitions.get_partition_keys():
        yield dg.RunRequest(run_key=f"{context.scheduled_execution_time:%Y-%m-%d}-{key}", partition_key=key)


defs = dg.Definitions(
    assets=[ingest, *sequence_assets, *augmentation_assets, *semantic_id_assets, *training_assets, dataset_card],
    asset_checks=[*ingest_checks, *sequence_checks, *augmentation_checks, *semantic_id_checks, *training_checks, *quality_checks],
    jobs=[all_assets_job, ingest_job],
    schedules=[weekly_dataset_refresh],
    resources={"settings": PipelineSettings()},
    # A dataset's steps form a chain, so each run executes in one process (a process per step would
    # mostly re-import libraries); parallelism comes from running partitions (datasets) side by side.
    executor=dg.in_process_executor,
)
