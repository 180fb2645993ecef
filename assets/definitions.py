"""The Dagster code location: every stage's assets and checks, jobs, sensors, automation, schedule, resources."""


import warnings

import dagster as dg

# Partition-aware asset checks are "preview" in Dagster 1.13; we rely on them knowingly.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from assets.automation import (
    all_assets_job,
    downstream_refresh,
    ingest_job,
    raw_data_sensor,
    SENSOR_INTERVAL_S,
    record_run_failure,
    weekly_dataset_refresh,
    with_automation,
)
from assets.augmentation import augmentation_assets, augmentation_checks
from assets.executors import executor_from_env
from assets.ingest import ingest, ingest_checks
from assets.quality import dataset_card, quality_checks
from assets.semantic_ids import semantic_id_assets, semantic_id_checks
from assets.sequences import sequence_assets, sequence_checks
from assets.shards import event_shards_job, shard_assets, sharded_downstream_job, sharded_downstream_sensor
from assets.training import training_assets, training_checks
from pipelines.resources import PipelineSettings

defs = dg.Definitions(
    assets=with_automation([ingest, *sequence_assets, *augmentation_assets, *semantic_id_assets, *training_assets,
                            dataset_card, *shard_assets]),
    asset_checks=[*ingest_checks, *sequence_checks, *augmentation_checks, *semantic_id_checks, *training_checks,
                  *quality_checks],
    jobs=[all_assets_job, ingest_job, event_shards_job, sharded_downstream_job],
    schedules=[weekly_dataset_refresh],
    sensors=[raw_data_sensor, downstream_refresh, record_run_failure, sharded_downstream_sensor(SENSOR_INTERVAL_S)],
    resources={"settings": PipelineSettings()},
    # MBREC_EXECUTOR: in_process (default: a dataset's steps form a chain, so one process per run;
    # parallelism comes from partitions side by side), multiprocess, or celery (steps on dagster-celery
    # workers through the broker MBREC_CELERY_BROKER); see assets/executors.py and deploy/.
    executor=executor_from_env(),
)
