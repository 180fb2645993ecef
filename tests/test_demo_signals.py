"""SIGTERM (or Ctrl-C) during the demo stops it: no further dataset starts, the exit code says so,
and the outputs already published stay whole (each stage publishes atomically)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_stops_the_demo_and_starts_no_other_dataset(tmp_path, jobs):
    env = {**os.environ, "MBREC_DATA_ROOT": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home"),
           "HF_HUB_OFFLINE": "1"}
    datasets = ["taobao", "tmall", "retailrocket"][: jobs + 1]  # one more than run at once
    proc = subprocess.Popen([sys.executable, "-m", "assets.demo", "--jobs", str(jobs), "--datasets", *datasets],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "data" / "generated" / datasets[0]).exists():  # the first dataset is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "interrupted: stopped" in err
    assert not (tmp_path / "data" / "generated" / datasets[-1]).exists()  # never started
