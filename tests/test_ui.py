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
    for key, node in by_key.items():  # the cross-dataset leaderboard is the one unpartitioned asset
        if key in ("event_shard_ids", "shard_sequences"):  # dataset x shard (one shard each by default)
            assert node["partitionKeys"] == [f"{d}|0" for d in registry.names], key
            continue
        assert node["partitionKeys"] == ([] if key == "cross_dataset_leaderboard" else registry.names), key
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


def _pick_partition(page, dialog, key: str, shots: Path, attempts: int = 3) -> None:
    """Choose ``key`` in the launch dialog's partition selector. In one fresh-clone run (three test
    workers on two cores) the option did not show within 60 s after the filter was typed; the cause
    was not captured. So a try that times out closes the popover and opens it again, and the last
    failure leaves a screenshot beside the test's files."""
    import re

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(1, attempts + 1):
        dialog.get_by_text("Select a partition or create one").click()
        popover = page.locator(".dagster-popover")
        popover.locator("input").first.fill(key)
        try:
            popover.locator("span", has_text=re.compile(rf"^{re.escape(key)}$")).first.click(timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts:
                page.screenshot(path=str(shots / "partition_selector.png"))
                raise
            page.keyboard.press("Escape")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it when run as root)")
def test_the_ui_in_a_browser_shows_the_automation_and_materializes_a_partition(webserver, tmp_path):
    """Playwright drives Debian's chromium through the UI a user sees: the Automation page lists the
    sensors and the schedule (no first-run dialog in the way), and one partition of canonical_events
    materializes from its asset page with every check passing."""
    import re

    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{webserver}/automation")
            for name in ("raw_data_sensor", "downstream_refresh", "record_run_failure", "weekly_dataset_refresh"):
                expect(page.get_by_text(name, exact=True)).to_be_visible()
            expect(page.get_by_text("Automation condition sensor")).to_be_visible()
            assert page.locator(".dagster-dialog").count() == 0  # no first-run (community) dialog
            # switch the automation off here, from the page, so that the ingest below does not
            # start a full downstream run at the registry's training defaults
            row = page.locator("div[data-index]").filter(has_text="downstream_refresh")
            switch = row.locator("input[type=checkbox]").last
            expect(switch).to_be_checked()  # on by default
            row.locator("label").last.click()
            expect(switch).not_to_be_checked()

            page.goto(f"{webserver}/assets/canonical_events")
            page.locator("button", has_text="Materialize").first.click()
            page.get_by_role("button", name="Confirm").click()  # the multi-asset's other tables come along
            dialog = page.locator(".dagster-dialog")
            _pick_partition(page, dialog, "kuaisar", tmp_path)
            page.keyboard.press("Escape")
            dialog.get_by_role("button", name="Launch 1 run").click()
            expect(page.get_by_text(re.compile(r"Launched run"))).to_be_visible()

            deadline = time.monotonic() + 240
            while True:
                page.goto(f"{webserver}/assets/canonical_events?view=checks")
                page.wait_for_timeout(3000)
                passed = page.get_by_text("Succeeded", exact=True).count()
                if passed >= 4 or time.monotonic() > deadline:
                    break
            checks = page.locator("body").inner_text()
            assert passed >= 4, checks[:2000]
            for check in ("canonical_events_contract", "ingest_consistency_check", "raw_files_ingested"):
                assert check in checks
            assert "Failed" not in checks
        finally:
            browser.close()
