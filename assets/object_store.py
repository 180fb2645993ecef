"""Steps on an object-store data root: pull before, push after (``pipelines.remote`` does the work).

Every asset and asset check carries ``@synced``, under its Dagster decorator. With a data root that
is a folder it does nothing. With an object-store URL it pulls the step's scopes into the working
copy before the step runs and pushes what the step published after it succeeded, inside the step:
a failed push fails the step (a resource's teardown could only log it), and a failed step pushes
nothing. The scopes are the dataset's folders (``raw/``, ``generated/``, ``outputs/``), from the
partition key (the ``dataset`` dimension of a shard partition); an unpartitioned asset names its
own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import dagster as dg

from pipelines.remote import dataset_scopes
from pipelines.resources import PipelineSettings

Scopes = Callable[[Any, PipelineSettings], list[str]]


def partition_dataset(context: Any) -> str:
    key = context.partition_key
    dims = getattr(key, "keys_by_dimension", None)
    return dims["dataset"] if dims else str(key)


def _by_partition(context: Any, settings: PipelineSettings) -> list[str]:
    return dataset_scopes(partition_dataset(context))


def synced(fn: Callable | None = None, *, scopes: Scopes = _by_partition) -> Callable:
    """Pull the step's scopes before ``fn`` and push them after it (an object-store data root only)."""

    def decorate(fn: Callable) -> Callable:
        def begin(context: Any, kwargs: dict[str, Any]):
            settings = next((v for v in kwargs.values() if isinstance(v, PipelineSettings)), None)
            if settings is None:
                raise dg.DagsterInvariantViolationError(f"{fn.__name__}: @synced needs the settings resource")
            remote = settings.remote()
            if remote is None:
                return None, []
            where = scopes(context, settings)
            remote.pull(where, log=context.log.info)
            return remote, where

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def generator(context, *args, **kwargs):
                remote, where = begin(context, kwargs)
                results = list(fn(context, *args, **kwargs))  # reported once the push succeeded
                if remote is not None:
                    remote.push(where, log=context.log.info)
                yield from results

            return generator

        @functools.wraps(fn)
        def plain(context, *args, **kwargs):
            remote, where = begin(context, kwargs)
            result = fn(context, *args, **kwargs)
            if remote is not None:
                remote.push(where, log=context.log.info)
            return result

        return plain

    return decorate(fn) if fn is not None else decorate
