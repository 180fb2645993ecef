"""Nothing silent, nothing half-published: the data-safety defects found by fault and bad-input
testing, each reproduced here (killed processes are real child processes)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from conftest import run_ingest, with_options, write
from pipelines.contracts import ingest_consistency
from pipelines.ingest.core import ingest_dataset
from pipelines.layout import failed_attempt_dir
from pipelines.ingest.errors import IngestError
from pipelines.locks import DatasetLockedError, dataset_lock
from pipelines.registry import DEFAULT_REGISTRY, RegistryError, load_registry
from pipelines.sources import SourceError, resolve_raw_source
from pipelines.storage import DatasetPaths, VersionedOutputs, current_version

QUIET = {"log": lambda _: None}
ROOT = Path(__file__).resolve().parent.parent


def _taobao_lines(n_users: int, per_user: int = 5) -> str:
    return "".join(f"{u},{100 + (u * 7 + k) % 50},7,{('pv', 'cart', 'buy')[k % 3]},{1511600000 + 60 * k}\n"
                   for u in range(1, n_users + 1) for k in range(per_user))


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


# 1 ---------------------------------------------------------------- real outputs never replaced by generated ones
def test_missing_raw_files_never_replace_real_outputs(tmp_path, registry):
    cfg = registry.get("taobao")
    paths = DatasetPaths(tmp_path, "taobao")
    write(paths.raw_dir, "UserBehavior.csv", _taobao_lines(30))
    resources = {"settings": __import__("pipelines.resources", fromlist=["x"]).PipelineSettings(data_root=str(tmp_path))}
    from assets.ingest import ingest

    assert dg.materialize([ingest], partition_key="taobao", resources=resources).success
    before = _digest(paths.stage_dir("ingest"))
    assert json.loads((paths.stage_dir("ingest") / "source.json").read_text())["kind"] == "raw"

    # the file replaced by a folder of the same name, then a broken link, then the folder removed
    (paths.raw_dir / "UserBehavior.csv").unlink()
    (paths.raw_dir / "UserBehavior.csv").mkdir()
    with pytest.raises(SourceError, match=r"UserBehavior.csv is not a readable file"):
        resolve_raw_source(cfg, paths, **QUIET)
    (paths.raw_dir / "UserBehavior.csv").rmdir()
    (paths.raw_dir / "UserBehavior.csv").symlink_to(tmp_path / "gone.csv")
    with pytest.raises(SourceError, match="not a readable file"):
        resolve_raw_source(cfg, paths, **QUIET)
    (paths.raw_dir / "UserBehavior.csv").unlink()
    paths.raw_dir.rmdir()
    with pytest.raises(SourceError, match=r"built from real files[\s\S]*allow_synthetic"):
        resolve_raw_source(cfg, paths, **QUIET)
    result = dg.materialize([ingest], partition_key="taobao", resources=resources, raise_on_error=False)
    assert not result.success
    assert _digest(paths.stage_dir("ingest")) == before  # the real outputs are untouched
    # replacing them on purpose is one run-config switch away
    assert dg.materialize([ingest], partition_key="taobao", resources=resources,
                          run_config={"ops": {"ingest": {"config": {"allow_synthetic": True}}}}).success
    assert json.loads((paths.stage_dir("ingest") / "source.json").read_text())["kind"] == "synthetic"


# 2 ---------------------------------------------------------------- one publish, one unit
def _ingest_version(out: Path) -> tuple[str | None, dict[str, str]]:
    return current_version(out), _digest(out)


def test_a_fault_at_the_publish_switch_leaves_the_previous_version_whole(tmp_path, registry, monkeypatch):
    cfg = registry.get("taobao")
    raw, out = tmp_path / "raw", tmp_path / "out" / "ingest"
    write(raw, "UserBehavior.csv", _taobao_lines(20))
    run_ingest(cfg, raw, out)
    before = _ingest_version(out)
    assert before[0] is not None and out.is_symlink()

    write(raw, "UserBehavior.csv", _taobao_lines(40))  # new data: new users in events and the id map
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out:
            raise OSError("injected: killed at the publish switch")
        return real_replace(src, dst)

    monkeypatch.setattr("pipelines.storage.os.replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        ingest_dataset(cfg, raw, out, **QUIET)
    monkeypatch.undo()
    assert _ingest_version(out) == before
    assert ingest_consistency(out).passed  # events and id maps still belong together
    # every file the manifest names is there with its size: one consistent version
    manifest = json.loads((out / VersionedOutputs.MANIFEST).read_text())
    assert {n: (out / n).stat().st_size for n in manifest["files"]} == manifest["files"]
    ingest_dataset(cfg, raw, out, **QUIET)
    assert current_version(out) != before[0] and pl.read_parquet(out / "user_id_map.parquet").height == 40
    leftovers = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".ingest."))
    # the current and the previous version only: the failed run's staging folder and link are pruned
    assert leftovers == sorted([os.readlink(out), f".ingest.v-{before[0]}"])


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipelines.registry import load_registry
    from pipelines.ingest.core import ingest_dataset
    cfg = load_registry().get("taobao")
    ingest_dataset(cfg, Path(sys.argv[1]), Path(sys.argv[2]), log=lambda m: print(m, flush=True),
                   rows_per_shard=20_000)
""")


def test_sigkill_at_any_moment_leaves_old_or_new_outputs_and_no_debris(tmp_path, registry):
    cfg = registry.get("taobao")
    raw, out = tmp_path / "raw", tmp_path / "out" / "ingest"
    write(raw, "UserBehavior.csv", _taobao_lines(50))
    run_ingest(cfg, raw, out)
    old = _ingest_version(out)
    write(raw, "UserBehavior.csv", _taobao_lines(30_000, per_user=4))  # 120k rows: several shards
    for delay in (0.5, 1.5, 3.0):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(raw), str(out)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        version = _ingest_version(out)
        assert ingest_consistency(out).passed
        assert version == old or pl.read_parquet(out / "user_id_map.parquet").height == 30_000
        old = version
    # the next run (holding the lock) removes the killed runs' staging folders
    run_ingest(cfg, raw, out)
    assert len([p for p in out.parent.iterdir() if p.name.startswith(".ingest.")]) == 2  # current + previous


# 3-5, 11 ---------------------------------------------------------- bad bytes and values are bad rows
def test_overflow_bad_utf8_bom_and_signed_ids_are_rows_not_crashes(tmp_path, registry):
    cfg = with_options(registry.get("taobao"), bad_row_threshold=1.0)
    good = _taobao_lines(3)
    lines = ("\ufeff" + good).encode()  # a BOM before the first event (no header)
    lines += b"9,9,7,pv,2305843010725593953\n"  # seconds x 1000 would wrap Int64 into 2017
    lines += b"8,\xff\xfe9,7,pv,1511600000\n"  # invalid UTF-8
    lines += b"+7,10,7,pv,1511600000\n-3,10,7,pv,1511600000\n"  # signed ids are not ids
    lines += "1\u200b2,10,7,pv,1511600000\n".encode()  # an invisible character inside an id
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "UserBehavior.csv").write_bytes(lines)
    summary, t = run_ingest(cfg, raw, tmp_path / "out")
    q = t["quarantine"]
    n_good = good.count("\n")
    assert summary.rows_kept == n_good  # the first event kept despite the BOM
    reasons = dict(zip(q["source_line"].to_list(), q["reason"].to_list(), strict=True))
    assert "outside the valid range" in reasons[n_good + 1]
    assert reasons[n_good + 2] == "invalid UTF-8 bytes in the line"
    assert reasons[n_good + 3] == "unparsable user_id '+7'" and reasons[n_good + 4] == "unparsable user_id '-3'"
    assert reasons[n_good + 5] == "unparsable user_id '1\\u200b2'"  # shown escaped, not invisible
    assert summary.reconciles and summary.rows_read == n_good + 5


def test_utf8_scan_finds_bad_lines_past_the_ascii_shortcut(tmp_path):
    """Pure-ASCII files skip decoding; any other byte (first bytes included) gets the line-by-line scan."""
    from pipelines.ingest.lines import ByteFacts, inspect_bytes

    f = tmp_path / "events.csv"
    f.write_bytes(b"1,2,3,pv,4\n" * 50)
    assert inspect_bytes(f, block_bytes=16) == ByteFacts(False, [], needs_trim=False)
    f.write_bytes("\u00e9,2\n".encode() + b"1,2\n" * 30 + b"1,\xff\n" + b"1,2\n" * 30 + b"\xfe\n")
    assert inspect_bytes(f, block_bytes=16) == (False, [32, 63], True)  # 'é' is valid; blocks cut anywhere
    f.write_bytes(b"1,2\n" * 30 + b"1,\xff\n")
    assert inspect_bytes(f, block_bytes=16) == (False, [31], True)
    f.write_bytes(b"\xef\xbb\xbf1,2\n")
    assert inspect_bytes(f) == (True, [], True)


@pytest.mark.parametrize("blank", [b" ", b"\t", b"\r", b"\x0b", b"\x0c"])
def test_a_whitespace_byte_anywhere_means_fields_are_trimmed(tmp_path, blank):
    """Skipping the trim is safe only when no byte of the file is one ``strip_chars`` removes: one such
    byte in the head, in a later block or at a block's edge turns trimming back on."""
    from pipelines.ingest.lines import inspect_bytes

    f = tmp_path / "events.csv"
    for data in (blank + b"1,2\n" * 40, b"1,2\n" * 40 + blank, b"1,2\n" * 8 + b"1" + blank + b",2\n" + b"1,2\n" * 30):
        f.write_bytes(data)
        assert inspect_bytes(f, block_bytes=16).needs_trim
    f.write_bytes(b"1,2\n" * 40 + b"\n\n")  # blank lines hold only the newline: nothing to trim
    assert not inspect_bytes(f, block_bytes=16).needs_trim


# 6 ---------------------------------------------------------------- run monitoring configured in the instance
def test_committed_instance_marks_abandoned_runs_failed():
    cfg = yaml.safe_load((ROOT / ".dagster_home" / "dagster.yaml").read_text())
    assert cfg["run_monitoring"]["enabled"] is True and cfg["run_monitoring"]["max_runtime_seconds"] > 0
    with dg.DagsterInstance.from_config(str(ROOT / ".dagster_home")) as instance:
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_runtime_seconds == 21600


# 7 ---------------------------------------------------------------- a failed run keeps its full quarantine
def test_over_threshold_run_keeps_its_whole_quarantine(tmp_path, registry):
    cfg = registry.get("taobao")
    raw, out = tmp_path / "raw", tmp_path / "out" / "ingest"
    write(raw, "UserBehavior.csv", _taobao_lines(5) + "x,1,1,pv,1\n" * 40)
    with pytest.raises(IngestError, match="ingest_failed_attempt") as err:
        ingest_dataset(cfg, raw, out, **QUIET)
    kept = pl.read_parquet(failed_attempt_dir(out) / "quarantine.parquet")
    assert kept.height == 40 and str(failed_attempt_dir(out)) in str(err.value)
    assert not out.exists()  # nothing published
    write(raw, "UserBehavior.csv", _taobao_lines(5))
    ingest_dataset(cfg, raw, out, **QUIET)
    assert not failed_attempt_dir(out).exists()  # superseded by a good run


# 8 ---------------------------------------------------------------- one writer per dataset
def test_a_second_run_of_a_dataset_waits_for_the_first(tmp_path, registry, monkeypatch):
    cfg = registry.get("taobao")
    raw, out = tmp_path / "raw", tmp_path / "out" / "ingest"
    write(raw, "UserBehavior.csv", _taobao_lines(5))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from pipelines.locks import dataset_lock
        with dataset_lock(Path({str(out.parent)!r}), "ingest of taobao (other run)"):
            print("held", flush=True)
            time.sleep(60)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("MBREC_LOCK_TIMEOUT_S", "1")
        with pytest.raises(DatasetLockedError, match=rf"pid {holder.pid}: ingest of taobao \(other run\)"):
            ingest_dataset(cfg, raw, out, **QUIET)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    ingest_dataset(cfg, raw, out, **QUIET)  # the kernel released the killed holder's lock
    with dataset_lock(tmp_path / "other", "another dataset", timeout_s=0):
        pass  # other datasets are never blocked


# 9 ---------------------------------------------------------------- registry errors: all at once, once each
def _registry_with(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    mutate(raw)
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_registry_reports_every_error_once_and_keeps_good_datasets(tmp_path):
    def mutate(r):
        r["defaults"]["ingest"]["bad_row_treshold"] = 0.1  # typo under defaults
        r["datasets"]["tmall"]["format"] = "csv"
    path = _registry_with(tmp_path, mutate)
    with pytest.raises(RegistryError) as err:
        load_registry(path)
    msg = str(err.value)
    assert msg.count("bad_row_treshold") == 1 and "defaults.ingest.bad_row_treshold" in msg
    assert "datasets.tmall.format" in msg  # every error at once
    lenient = load_registry(path, strict=False)
    assert set(lenient.broken) == set(lenient.names) and lenient.names[0] == "taobao"  # defaults break all

    def mutate2(r):
        r["datasets"]["taobao"]["targets"] = ["purchase"]
        r["datasets"]["tmall"]["format"] = "csv"
    path = _registry_with(tmp_path, mutate2)
    with pytest.raises(RegistryError) as err:
        load_registry(path)
    assert "  datasets.taobao: Value error, targets: behavior 'purchase'" in str(err.value)  # no empty key
    assert "datasets.tmall.format" in str(err.value)
    lenient = load_registry(path, strict=False)
    assert set(lenient.broken) == {"taobao", "tmall"} and lenient.get("kuaisar").format == "kuaisar"
    assert "tmall" in lenient.names
    with pytest.raises(RegistryError, match=r"datasets\.tmall\.format"):
        lenient.get("tmall")
