"""What a process may use and what a step of it used: CPUs from the affinity mask (a worker pinned to
a core runs its stages on one thread, polars' included), and a step's own peak memory in a process
that ran a bigger step before it; the shard steps' Celery queue from the environment."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pipelines.process import available_cpus, peak_rss_mb, reset_peak_rss
from pipelines.registry import REPO_ROOT


def _python(code: str, env: dict[str, str] | None = None, cpus: set[int] | None = None) -> str:
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, preexec_fn=pin, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_a_process_pinned_to_one_core_runs_its_stages_on_one_thread():
    core = min(os.sched_getaffinity(0))
    env = {"POLARS_MAX_THREADS": "", "MBREC_SHARD_WORKERS": ""}  # not set: the defaults decide
    code = """
        import os, json
        for var in ("POLARS_MAX_THREADS", "MBREC_SHARD_WORKERS"):
            os.environ.pop(var, None)
        from pipelines.parallel import threads_used
        print(json.dumps(threads_used()))
    """
    pinned = json.loads(_python(code, env, cpus={core}))
    assert pinned == {"stage": 1, "polars": 1, "cpus": 1}
    if len(os.sched_getaffinity(0)) >= 2:
        free = json.loads(_python(code, env))
        assert free["stage"] == 2 and free["polars"] >= 2 and free["cpus"] == len(os.sched_getaffinity(0))
    # the explicit setting wins over the affinity
    assert json.loads(_python(code.replace('"MBREC_SHARD_WORKERS"', '"UNUSED"'),
                              {"MBREC_SHARD_WORKERS": "3"}, cpus={core}))["stage"] == 3


def test_available_cpus_is_within_the_affinity_mask():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_a_steps_peak_memory_is_its_own_after_a_bigger_step_in_the_same_process():
    code = """
        import numpy as np
        from pipelines.process import peak_rss_mb, reset_peak_rss
        big = np.ones(400 * 2**20 // 8); del big          # an earlier step: 400 MB touched, then freed
        before = peak_rss_mb()
        assert reset_peak_rss()
        small = np.ones(50 * 2**20 // 8)                  # this step: 50 MB
        print(before, peak_rss_mb())
    """
    before, after = map(float, _python(code).split())
    assert before > after + 300  # the lifetime peak holds the 400 MB; the step's does not
    assert reset_peak_rss() and peak_rss_mb() > 0


def test_shard_steps_go_to_the_shard_queue_only_when_one_is_named():
    code = """
        import json
        import dagster as dg
        import assets.definitions as d
        tags = {}
        for key in ("event_shards", "event_shard_ids", "dense_ids", "shard_sequences", "sharded_dataset",
                    "canonical_events"):
            tags[key] = d.defs.get_assets_def(dg.AssetKey(key)).op.tags.get("dagster-celery/queue")
        # the shard assets' contract checks run inside the asset's step (check specs): same op, same queue
        shard_ids = d.defs.get_assets_def(dg.AssetKey("event_shard_ids"))
        assert [k.name for k in shard_ids.check_keys] == ["event_shard_ids_contract"]
        print(json.dumps(tags))
    """
    named = json.loads(_python(code, {"MBREC_CELERY_SHARD_QUEUE": "shards"}))
    assert named == {"event_shards": None, "event_shard_ids": "shards", "dense_ids": None, "shard_sequences": "shards",
                     "sharded_dataset": None, "canonical_events": None}
    unset = json.loads(_python(code, {"MBREC_CELERY_SHARD_QUEUE": ""}))
    assert set(unset.values()) == {None}


def test_the_demo_shares_the_cpus_it_was_given_between_its_jobs():
    core = min(os.sched_getaffinity(0))
    code = """
        from assets.demo import _threads_per_job
        print(_threads_per_job(1), _threads_per_job(2))
    """
    assert _python(code, cpus={core}) == "1 1"
    if len(os.sched_getaffinity(0)) >= 2:
        n = len(os.sched_getaffinity(0))
        assert _python(code) == f"{n} {n // 2}"
