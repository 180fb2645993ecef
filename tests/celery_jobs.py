"""A tiny two-step job for the distributed tests (tests/test_distributed.py).

Importable as ``tests.celery_jobs`` from the repository root, which is how the Celery workers load
it (``dg.reconstructable`` records the module name and the working directory). Each step returns
where it ran (pid, host), so a test can tell that the steps ran in the worker processes; the second
step reads the first one's output, which crosses processes through the instance's file storage.
"""

from __future__ import annotations

import os
import socket

import dagster as dg
from dagster_celery import celery_executor

# step -> Celery queue; the test starts one worker per queue, so each step lands on its own worker
QUEUE_TAG = "dagster-celery/queue"  # dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG
FIRST_QUEUE, SECOND_QUEUE = "mbrec-first", "mbrec-second"


def _where() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname()}


@dg.op(tags={QUEUE_TAG: FIRST_QUEUE})
def first() -> dict:
    return _where()


@dg.op(tags={QUEUE_TAG: SECOND_QUEUE})
def second(upstream: dict) -> dict:
    return {**_where(), "upstream": upstream}


@dg.job(executor_def=celery_executor)
def two_step_celery_job():
    second(first())


@dg.job(executor_def=dg.in_process_executor)
def two_step_job():
    second(first())
