"""The distributed pieces, run for real: Celery workers on a real redis-server, the Dagster instance on
a real PostgreSQL, the executor switch and the cluster recipe (deploy/).

The servers are throwaway processes from tests/services.py (skipped with the reason when redis-server
or PostgreSQL is not installed; `make services` installs them). Kubernetes is not available here: the
Helm values are checked for the keys that matter, not applied. The object-store data root is
tests/test_object_store.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
import yaml

from assets.executors import EXECUTORS, k8s_run_tags
from tests.celery_jobs import FIRST_QUEUE, SECOND_QUEUE, two_step_celery_job, two_step_job
from tests.services import REPO, celery_workers, postgres_url, redis_url  # noqa: F401 (fixtures)

DEPLOY = REPO / "deploy"


def _instance_home(path: Path, extra: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n" + extra)
    return path


# ------------------------------------------------------------------------------------------------
# executor selection and run tags


def _resolved_execution(executor_def: dg.ExecutorDefinition) -> dict:
    @dg.op
    def noop():
        return None

    @dg.job(executor_def=executor_def)
    def probe():
        noop()

    return dg.validate_run_config(probe)["execution"]


def test_executor_from_env(monkeypatch):
    from assets.executors import executor_from_env

    monkeypatch.delenv("MBREC_EXECUTOR", raising=False)
    assert executor_from_env() is dg.in_process_executor
    monkeypatch.setenv("MBREC_EXECUTOR", "multiprocess")
    assert executor_from_env() is dg.multiprocess_executor

    monkeypatch.setenv("MBREC_EXECUTOR", "celery")
    monkeypatch.delenv("MBREC_CELERY_BROKER", raising=False)
    monkeypatch.delenv("MBREC_CELERY_BACKEND", raising=False)
    default = _resolved_execution(executor_from_env())["celery"]
    assert (default["broker"], default["backend"]) == ("redis://127.0.0.1:6379/0",) * 2
    monkeypatch.setenv("MBREC_CELERY_BROKER", "redis://broker.example:6379/3")
    configured = _resolved_execution(executor_from_env())["celery"]
    assert (configured["broker"], configured["backend"]) == ("redis://broker.example:6379/3",) * 2

    monkeypatch.setenv("MBREC_EXECUTOR", "dask")
    with pytest.raises(ValueError) as e:
        executor_from_env()
    assert all(name in str(e.value) for name in EXECUTORS)


def test_k8s_run_tags():
    assert k8s_run_tags(None, None) == {}
    tags = k8s_run_tags("4", "16Gi")
    assert list(tags) == ["dagster-k8s/config"]
    resources = json.loads(tags["dagster-k8s/config"])["container_config"]["resources"]
    assert resources == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}
    only_memory = json.loads(k8s_run_tags(None, "2Gi")["dagster-k8s/config"])["container_config"]["resources"]
    assert only_memory == {"requests": {"memory": "2Gi"}, "limits": {"memory": "2Gi"}}


def test_k8s_run_tags_parse_in_dagster_k8s():
    """With the cluster extra installed, dagster-k8s itself turns the tag into the run pod's resources."""
    job = pytest.importorskip("dagster_k8s.job", reason="dagster-k8s comes with the cluster extra")
    expected = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}
    config = job.get_user_defined_k8s_config(k8s_run_tags("500m", "1Gi"))
    assert config.container_config["resources"] == expected
    k8s_job = job.construct_dagster_k8s_job(
        job.DagsterK8sJobConfig(job_image="mbrec:test", dagster_home="/opt/dagster/dagster_home",
                                instance_config_map="dagster-instance"),
        ["dagster", "api", "execute_run"], "dagster-run-test", user_defined_k8s_config=config)
    resources = k8s_job.spec.template.spec.containers[0].resources
    assert (resources.requests, resources.limits) == (expected["requests"], expected["limits"])


# ------------------------------------------------------------------------------------------------
# Celery: two real workers on a real redis-server


# dagster-celery registers its task on every executor start; celery 5.7 warns about the re-registration
@pytest.mark.filterwarnings("ignore:Task name 'execute_plan' is already registered")
def test_celery_executor_runs_steps_on_real_workers(redis_url, tmp_path):  # noqa: F811
    started = time.perf_counter()
    # the Celery executor needs a persistent instance that the workers share: same DAGSTER_HOME
    home = _instance_home(tmp_path / "dagster_home")
    # opened first: it creates the SQLite storages, which the workers' CLIs would otherwise all create at
    # once (concurrent schema migrations of one SQLite file); on PostgreSQL that is not a concern
    with dg.DagsterInstance.from_config(str(home)) as instance, \
            celery_workers(redis_url, 2, cwd=REPO, env={"DAGSTER_HOME": str(home)},
                           queues=[[FIRST_QUEUE], [SECOND_QUEUE]]) as workers:
        workers_up = time.perf_counter()
        with dg.execute_job(
                dg.reconstructable(two_step_celery_job), instance=instance,
                run_config={"execution": {"config": {"broker": redis_url, "backend": redis_url}}}) as result:
            assert result.success, workers.log_text()
            first, second = result.output_for_node("first"), result.output_for_node("second")
            # each step ran in a pool process of its own worker (one queue per worker), not here
            assert first["pid"] != os.getpid() and second["pid"] != os.getpid()
            assert first["pid"] in workers.pids(0), workers.log_text()
            assert second["pid"] in workers.pids(1), workers.log_text()
            assert second["upstream"] == first  # the output crossed processes through the instance storage
            # the workers reported each step into the shared instance, naming themselves
            ran_on = {e.step_key: e.dagster_event.engine_event_data.metadata["Celery worker"].value
                      for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
                      if "in celery worker" in e.message}
            assert ran_on == {"first": workers.names[0], "second": workers.names[1]}
        ran = time.perf_counter()
    print(f"celery: workers up in {workers_up - started:.1f} s, run {ran - workers_up:.1f} s, "
          f"stop {time.perf_counter() - ran:.1f} s")


# ------------------------------------------------------------------------------------------------
# the instance on a real PostgreSQL


def test_instance_on_real_postgres(postgres_url, tmp_path):  # noqa: F811
    import psycopg2

    from tests.services import sqlalchemy_url

    home = _instance_home(tmp_path / "dagster_home",
                          f"storage:\n  postgres:\n    postgres_url: '{sqlalchemy_url(postgres_url)}'\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.execute_job(dg.reconstructable(two_step_job), instance=instance)
        assert result.success
        run_id = result.run_id
    # a second instance object (another process would do the same) sees the run and its events
    with dg.DagsterInstance.from_config(str(home)) as other:
        assert run_id in [run.run_id for run in other.get_runs()]
        assert other.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        step_successes = [e for e in other.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)]
        assert {e.step_key for e in step_successes} == {"first", "second"}
    # and they are rows in PostgreSQL, not in SQLite files under DAGSTER_HOME
    conn = psycopg2.connect(postgres_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
            assert cur.fetchone() == ("SUCCESS",)
            cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (run_id,))
            assert cur.fetchone()[0] > 5
    finally:
        conn.close()
    assert not list(home.rglob("*.db"))


# ------------------------------------------------------------------------------------------------
# the cluster recipe (deploy/)


def _local_instance() -> dict:
    return yaml.safe_load((REPO / ".dagster_home" / "dagster.yaml").read_text())


def test_helm_values_keys():
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["runK8sConfig"]["containerConfig"]["resources"]["requests"]
    user = values["dagster-user-deployments"]
    assert user["enabled"] and user["enableSubchart"]
    (deployment,) = user["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "assets.definitions"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    assert mounts == {m["name"]: m["mountPath"] for m in launcher["volumeMounts"]}
    assert deployment["env"]["MBREC_DATA_ROOT"] in mounts.values()
    assert values["postgresql"]["postgresqlHost"] and values["global"]["postgresqlSecretName"]
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"

    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runCoordinator"]["enabled"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    local = _local_instance()
    # one run per partition at a time, as locally
    assert queued["tagConcurrencyLimits"] == local["run_coordinator"]["config"]["tag_concurrency_limits"]
    instance = yaml.safe_load((DEPLOY / "dagster-instance-postgres.yaml").read_text())
    assert queued["maxConcurrentRuns"] == instance["run_coordinator"]["config"]["max_concurrent_runs"]
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": local["run_retries"]["max_retries"],
                                    "retryOnAssetOrOpFailure": local["run_retries"]["retry_on_asset_or_op_failure"]}
    monitoring = daemon["runMonitoring"]
    assert (monitoring["startTimeoutSeconds"], monitoring["pollIntervalSeconds"]) == (
        local["run_monitoring"]["start_timeout_seconds"], local["run_monitoring"]["poll_interval_seconds"])


def test_instance_yaml_keys():
    instance = yaml.safe_load((DEPLOY / "dagster-instance-postgres.yaml").read_text())
    local = _local_instance()
    db = instance["storage"]["postgres"]["postgres_db"]
    assert {key: value["env"] for key, value in db.items() if key != "scheme"} == {
        "hostname": "DAGSTER_PG_HOST", "port": "DAGSTER_PG_PORT", "db_name": "DAGSTER_PG_DB",
        "username": "DAGSTER_PG_USERNAME", "password": "DAGSTER_PG_PASSWORD"}
    assert db["scheme"] == "postgresql+psycopg2"  # dagster-postgres brings psycopg2, not psycopg 3
    assert instance["run_coordinator"]["class"] == local["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert instance["run_coordinator"]["config"]["tag_concurrency_limits"] == \
        local["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert instance["run_coordinator"]["config"]["max_concurrent_runs"] >= \
        local["run_coordinator"]["config"]["max_concurrent_runs"]
    assert instance["run_monitoring"] == local["run_monitoring"]
    assert instance["run_retries"] == local["run_retries"]
    worker = yaml.safe_load((DEPLOY / "celery-worker.yaml").read_text())
    assert worker["execution"]["config"]["broker"] == {"env": "MBREC_CELERY_BROKER"}


def test_deploy_instance_yaml_loads_on_real_postgres(postgres_url, tmp_path, monkeypatch):  # noqa: F811
    """Dagster's own config schema accepts the recipe's instance file, and a run is stored through it."""
    from dagster_celery.cli import get_validated_config

    from tests.services import create_database

    url = urlparse(create_database(postgres_url, "mbrec_deploy"))
    env = {"DAGSTER_PG_HOST": url.hostname, "DAGSTER_PG_PORT": str(url.port), "DAGSTER_PG_DB": url.path.lstrip("/"),
           "DAGSTER_PG_USERNAME": url.username, "DAGSTER_PG_PASSWORD": ""}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((DEPLOY / "dagster-instance-postgres.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "QueuedRunCoordinator"
        assert coordinator.get_run_queue_config().max_concurrent_runs == 16
        result = dg.execute_job(dg.reconstructable(two_step_job), instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS

    # the step workers' config file resolves its broker from the environment
    monkeypatch.setenv("MBREC_CELERY_BROKER", "redis://redis.mbrec.svc:6379/0")
    worker = get_validated_config(str(DEPLOY / "celery-worker.yaml"))
    assert worker["broker"] == worker["backend"] == "redis://redis.mbrec.svc:6379/0"
