"""Shard work two at a time: results in input order, errors surface, the worker count is checked."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.parallel import ordered_map, shard_workers


def test_results_come_back_in_input_order_with_calls_overlapping():
    running, peak, lock = [0], [0], threading.Lock()

    def slow_square(x: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 if x % 2 == 0 else 0.01)  # even items finish later than the next odd one
        with lock:
            running[0] -= 1
        return x * x

    assert list(ordered_map(slow_square, range(9), workers=2)) == [x * x for x in range(9)]
    assert peak[0] == 2  # two calls ran at once, never more
    assert list(ordered_map(slow_square, [], workers=2)) == []
    assert list(ordered_map(slow_square, [3], workers=4)) == [9]


def test_an_error_in_a_shard_is_raised_in_order():
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("shard 3 is broken")
        return x

    seen = []
    with pytest.raises(ValueError, match="shard 3 is broken"):
        for r in ordered_map(fail_on_three, range(6), workers=2):
            seen.append(r)
    assert seen == [0, 1, 2]


def test_worker_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("MBREC_SHARD_WORKERS", "3")
    assert shard_workers() == 3
    monkeypatch.setenv("MBREC_SHARD_WORKERS", "0")
    with pytest.raises(ValueError, match="MBREC_SHARD_WORKERS"):
        shard_workers()
    monkeypatch.delenv("MBREC_SHARD_WORKERS")
    assert 1 <= shard_workers() <= 2
