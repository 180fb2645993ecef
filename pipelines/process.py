"""What this process may use, and what one step of it used: CPUs, and the step's peak memory.

* ``available_cpus()``: the CPUs the process was given, not the machine's: its affinity mask (a
  Celery worker started under ``taskset -c 0``) capped by a cgroup CPU quota (a Kubernetes pod's CPU
  limit). polars sizes its thread pool the same way, so the stage threads (``pipelines.parallel``)
  and polars' agree; two workers pinned to one core each then run one thread each instead of four
  threads fighting over two cores.
* ``reset_peak_rss()`` / ``peak_rss_mb()``: a step's own peak resident memory in a process that ran
  other steps before it (a reused Celery pool process, the in-process executor): the kernel's
  high-water mark is reset when the step starts (``/proc/self/clear_refs``, Linux 4.0+) and read
  when it ends (``VmHWM``). Where that is not possible, the process's lifetime peak (``ru_maxrss``).
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None when unlimited."""
    candidates = [(Path("/sys/fs/cgroup/cpu.max"), None),
                  (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, math.floor(quota))
    return max(1, n)


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_rss() -> bool:
    """Start a step's memory measurement here; False where the kernel does not allow it (then
    ``peak_rss_mb`` is the process's lifetime peak)."""
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory in MB since ``reset_peak_rss`` (else since the process started)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:  # pragma: no cover - not Linux
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
