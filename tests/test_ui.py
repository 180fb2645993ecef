"""`dagster dev -w workspace.yaml` serves the code location: every asset with one partition per dataset."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, query: str) -> dict:
    req = urllib.request.Request(url, data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def webserver(tmp_path_factory, data_root):
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "MBREC_DATA_ROOT": str(data_root)}
    # a file, not a pipe: nobody reads a pipe while the test waits, and run workers that write more
    # than the pipe buffer (training logs) would block on it
    log = open(home / "dagster_dev.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = (home / "dagster_dev.log").read_text(errors="replace")
                    pytest.fail(f"dagster dev did not come up: {out[-3000:]}")
                time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_ui_lists_every_asset_with_its_dataset_partitions(webserver, registry):
    deadline = time.monotonic() + 60
    while True:  # the code location loads in the background after the server answers
        data = _post(f"{webserver}/graphql", "{ assetNodes { assetKey { path } groupName partitionKeys } }")
        nodes = (data.get("data") or {}).get("assetNodes") or []
        if nodes or time.monotonic() > deadline:
            break
        time.sleep(1)
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_key) >= {"canonical_events", "user_id_map", "item_id_map", "item_side_info", "ingest_quarantine"}
    for node in by_key.values():
        assert node["partitionKeys"] == registry.names
    assert by_key["canonical_events"]["groupName"] == "ingest"


def test_a_partition_materializes_through_the_webserver(webserver, data_root):
    """What the UI's Materialize button does: launch the job for one partition and wait for it."""
    from dagster_graphql import DagsterGraphQLClient

    host, port = webserver.removeprefix("http://").split(":")
    client = DagsterGraphQLClient(host, port_number=int(port))
    fast = {f"trained_{m}": {"config": {"epochs": 1}} for m in ("sasrec", "behavior_set", "generative_sid", "blade")}
    run_id = client.submit_job_execution("materialize_all", tags={"dagster/partition": "blade_qk_video"},
                                         run_config={"ops": fast})
    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"
    out = data_root / "outputs" / "blade_qk_video"
    assert (out / "ingest" / "events.parquet").is_file() and (out / "leakage" / "audit.parquet").is_file()
    assert (out / "model_ready" / "released" / "test.npz").is_file()  # a release trains on its own split
    # raw logs to the leaderboard: semantic IDs, checkpoints, evaluation
    assert (out / "semantic_ids" / "exports" / "blade_qk_video.index.json").is_file()
    assert (out / "training" / "released" / "generative_sid" / "checkpoint.pt").is_file()
    assert "blade_qk_video" in (data_root / "outputs" / "leaderboard.md").read_text()
