"""Shards of one stage computed two at a time, consumed in order.

The per-shard work of the sequence stages is polars and numpy, which release the GIL, so two
threads keep two cores busy where one shard at a time left the second mostly idle. Results come
back in shard order (the writer appends them in that order), so the output bytes are the same as
one shard at a time; at most ``workers`` shards are in memory beyond the one being written.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pipelines.process import available_cpus

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def shard_workers() -> int:
    """Threads for shard work: ``MBREC_SHARD_WORKERS`` if set, else 2, or 1 where this process may
    run on one CPU only (one core, or a worker pinned to one: ``pipelines.process.available_cpus``)."""
    value = os.environ.get("MBREC_SHARD_WORKERS")
    if value is not None:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"MBREC_SHARD_WORKERS must be a positive integer, got {value!r}")
        return int(value)
    return min(2, available_cpus())


def threads_used() -> dict[str, int]:
    """The threads a stage runs with here: the stage's own (``shard_workers``) and polars'."""
    import polars as pl

    return {"stage": shard_workers(), "polars": pl.thread_pool_size(), "cpus": available_cpus()}


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` with up to ``workers`` calls running at once; results in input order.
    An exception in ``fn`` is raised when its result is reached (later calls are cancelled)."""
    items = list(items)
    workers = min(workers or shard_workers(), len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard") as pool:
        pending: deque = deque()
        it = iter(items)
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(it, _DONE)
                if nxt is not _DONE:
                    pending.append(pool.submit(fn, nxt))
                yield result
        finally:
            for f in pending:
                f.cancel()
