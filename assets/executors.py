"""Which Dagster executor runs a run's steps, and the Kubernetes resources of a run's pod.

``executor_from_env()`` picks the executor from ``MBREC_EXECUTOR``:

* ``in_process`` (default): every step of a run in the run's own process. A dataset's steps form a
  chain, so one process per run is cheapest; parallelism comes from running partitions (datasets,
  user-hash shards) side by side as separate runs.
* ``multiprocess``: one process per step, on the run's machine.
* ``celery``: each step is a Celery task picked up by ``dagster-celery`` workers on other machines.
  The broker (and result backend) is ``MBREC_CELERY_BROKER`` (default ``redis://127.0.0.1:6379/0``),
  ``MBREC_CELERY_BACKEND`` when the results go elsewhere. Workers must import this repository's code,
  share the Dagster instance (PostgreSQL, deploy/dagster-instance-postgres.yaml) and the data root
  (a shared POSIX file system, deploy/README.md).

``shard_step_tags()``: with ``MBREC_CELERY_SHARD_QUEUE`` set, the shard runs' steps (the per-shard
assets and their checks) go to that Celery queue, the dataset-level steps to the default one, so a
platform can size two worker pools apart: many small shard workers (one core each, e.g. started
under ``taskset -c <core>`` or in one-CPU pods; the stages then run one thread, see
``pipelines.process.available_cpus``) and a few larger workers for the merge and what follows it.
Unset (the default), every step goes to the default queue.

``dagster_celery`` is imported only for ``celery``; it comes with ``pip install -e '.[cluster]'``.

``k8s_run_tags(cpu, memory)`` gives the ``dagster-k8s/config`` run tag that the K8sRunLauncher reads
for the run pod's container resources (requests and limits).
"""

from __future__ import annotations

import json
import os

import dagster as dg

EXECUTOR_ENV = "MBREC_EXECUTOR"
CELERY_BROKER_ENV = "MBREC_CELERY_BROKER"
CELERY_BACKEND_ENV = "MBREC_CELERY_BACKEND"
SHARD_QUEUE_ENV = "MBREC_CELERY_SHARD_QUEUE"
CELERY_QUEUE_TAG = "dagster-celery/queue"  # dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG, a literal (optional extra)
DEFAULT_CELERY_BROKER = "redis://127.0.0.1:6379/0"
EXECUTORS = ("in_process", "multiprocess", "celery")

# the run tag dagster-k8s reads (dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY), kept as a literal so
# that this module does not need dagster-k8s installed
K8S_CONFIG_TAG = "dagster-k8s/config"


def celery_broker_from_env() -> tuple[str, str]:
    """(broker, backend) URLs for the Celery executor and its workers."""
    broker = os.environ.get(CELERY_BROKER_ENV) or DEFAULT_CELERY_BROKER
    return broker, os.environ.get(CELERY_BACKEND_ENV) or broker


def shard_step_tags() -> dict[str, str]:
    """Op tags of the per-shard steps: the Celery queue named by ``MBREC_CELERY_SHARD_QUEUE``, if set
    (read when the definitions load, like the executor)."""
    queue = (os.environ.get(SHARD_QUEUE_ENV) or "").strip()
    return {CELERY_QUEUE_TAG: queue} if queue else {}


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor named by ``MBREC_EXECUTOR`` (``in_process`` when unset)."""
    name = (os.environ.get(EXECUTOR_ENV) or "in_process").strip().lower()
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                f"{EXECUTOR_ENV}=celery needs dagster-celery (and redis): pip install -e '.[cluster]'"
            ) from e
        broker, backend = celery_broker_from_env()
        return celery_executor.configured({"broker": broker, "backend": backend}, name="celery")
    raise ValueError(f"{EXECUTOR_ENV}={name!r} is not an executor; valid values: {', '.join(EXECUTORS)}")


def k8s_run_tags(cpu: str | None, memory: str | None) -> dict[str, str]:
    """The run tag that sizes a run's pod under the K8sRunLauncher, e.g. ``k8s_run_tags("4", "16Gi")``.

    Requests and limits are the same (Kubernetes "Guaranteed" class): the scheduler places the pod
    where the registry's figures fit, and a run that outgrows its memory is stopped instead of
    squeezing its neighbours. Values are Kubernetes quantities (``"500m"``, ``"2"``, ``"8Gi"``).
    Empty when both are None (the launcher's defaults apply).
    """
    resources = {key: value for key, value in (("cpu", cpu), ("memory", memory)) if value is not None}
    if not resources:
        return {}
    container_config = {"resources": {"requests": dict(resources), "limits": dict(resources)}}
    return {K8S_CONFIG_TAG: json.dumps({"container_config": container_config}, sort_keys=True)}


def run_tags(cfg) -> dict[str, str]:
    """A dataset's run tags from its registry entry (``resources: {cpu, memory}``), for the runs the
    sensors request: the run pod's CPU and memory under the K8sRunLauncher. Empty for None."""
    return k8s_run_tags(cfg.resources.cpu, cfg.resources.memory) if cfg is not None else {}
