"""One writer per dataset at a time: an advisory file lock under the dataset's outputs.

Two runs of the same dataset (a refresh and a manual run, two launches from the UI) would
otherwise interleave their publishes. ``dataset_lock`` holds ``outputs/<dataset>/.lock`` with
``fcntl.flock`` for the duration of a stage's publish; a second run waits for it (saying who holds
it) and fails with that name after ``timeout_s``. The kernel releases the lock when the holder
exits, killed or not, so a crashed run never leaves a stale lock. Runs of other datasets are never
blocked. (POSIX only: on an object-store data root it covers one working copy, and across machines
the run-queue limit in the Dagster instance keeps one run per dataset; see ``pipelines/remote.py``.)
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
DEFAULT_TIMEOUT_S = 6 * 3600.0


class DatasetLockedError(RuntimeError):
    """Another run held the dataset's lock for longer than the wait allowed."""


@contextmanager
def dataset_lock(dataset_dir: Path, what: str, *, timeout_s: float | None = None,
                 log: Callable[[str], None] = print, poll_s: float = 0.5) -> Iterator[None]:
    timeout_s = float(os.environ.get("MBREC_LOCK_TIMEOUT_S", DEFAULT_TIMEOUT_S)) if timeout_s is None else timeout_s
    dataset_dir.mkdir(parents=True, exist_ok=True)
    path = dataset_dir / LOCK_FILE
    with path.open("a+") as f:
        deadline = time.monotonic() + timeout_s
        said = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if time.monotonic() >= deadline:
                    raise DatasetLockedError(
                        f"{path}: {what} could not start: another run of this dataset holds the lock ({holder}) "
                        f"after waiting {timeout_s:.0f} s") from None
                if not said:
                    log(f"{what}: waiting for another run of this dataset to finish ({holder})")
                    said = True
                time.sleep(poll_s)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "what": what, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "unknown holder"
    return f"pid {info.get('pid')}: {info.get('what')} since {info.get('since')}" if info else "unknown holder"
