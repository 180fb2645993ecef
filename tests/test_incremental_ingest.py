"""Incremental ingest of daily drops: same bytes as a full rebuild, only new files parsed, and every
change that cannot be appended (replaced, shrunk, removed file; registry change) rebuilds in full."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from pipelines.ingest.core import ingest_dataset
from pipelines.layout import INGEST_FILES
from pipelines.synthetic import SyntheticSpec, write_synthetic
from tests.conftest import with_options

TABLES = ("events", "user_id_map", "item_id_map", "item_side_info", "quarantine")
COUNTS = ("rows_read", "rows_kept", "rows_quarantined", "duplicates_dropped", "users", "items", "exposures",
          "per_file", "quarantine_reasons")
DAYS = 3


def _cfg(registry):
    cfg = registry.get("taobao").model_copy(update={"files": {"events": "events_*.csv"}})
    return with_options(cfg, bad_row_threshold=0.01)  # small data: one bad line per drop is 0.1%


@pytest.fixture(scope="module")
def drops(tmp_path_factory) -> list[str]:
    """A small generated Taobao log cut into daily drops (3 days each) with the file name's day
    order; a row of each drop repeats in the next (an exact duplicate across the boundary), and one
    malformed line per later drop goes to the quarantine."""
    gen = tmp_path_factory.mktemp("gen")
    (path,) = write_synthetic("taobao", gen, SyntheticSpec(users=150, items=120, topics=4, seed=7, events_per_user=12))
    lines = path.read_text().splitlines()
    ts = pl.Series([int(line.rsplit(",", 1)[1]) for line in lines])
    day = ((ts - ts.min()) * DAYS // (ts.max() - ts.min() + 1)).to_list()
    texts = [[line for line, d in zip(lines, day, strict=True) if d == k] for k in range(DAYS)]
    last = [t[-1] for t in texts]
    for k in range(1, DAYS):
        texts[k] = [last[k - 1], *texts[k], f"{k},not-an-item,1,pv,1511600000"]
    return ["\n".join(t) + "\n" for t in texts]


def _ingest(cfg, raw: Path, out: Path, **kw):
    return ingest_dataset(cfg, raw, out, log=lambda _: None, **kw)


def _write_drop(raw: Path, k: int, text: str) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"events_{k + 1}.csv").write_text(text)


def _bytes(out: Path) -> dict[str, bytes]:
    return {t: (out / INGEST_FILES[t]).read_bytes() for t in TABLES}


def _counts(out: Path) -> dict:
    report = json.loads((out / INGEST_FILES["ingest_report"]).read_text())
    return {k: report[k] for k in COUNTS}


# one shard, and several: each shard then reads its user range of the published events and puts the
# drop's rows of that range after them (the path a 20M-row dataset takes)
@pytest.mark.parametrize("rows_per_shard", [5_000_000, 400])
def test_daily_drops_give_the_bytes_of_a_full_rebuild(registry, drops, tmp_path, rows_per_shard):
    cfg = _cfg(registry)
    raw, inc, full = tmp_path / "raw", tmp_path / "inc", tmp_path / "full"
    summaries, maps = [], []
    for k, text in enumerate(drops):
        _write_drop(raw, k, text)
        summaries.append(_ingest(cfg, raw, inc, rows_per_shard=rows_per_shard))
        maps.append((pl.read_parquet(inc / "user_id_map.parquet"), pl.read_parquet(inc / "item_id_map.parquet")))
    first, *later = summaries
    assert (first.mode, first.reason, first.files_parsed) == ("full", "no previous ingest", ["events_1.csv"])
    for k, s in enumerate(later, start=1):
        assert s.mode == "incremental", s.reason
        assert s.files_parsed == [f"events_{k + 1}.csv"]  # only the new drop was parsed
        assert s.files_reused == [f"events_{i + 1}.csv" for i in range(k)]
        assert s.reconciles
    # known ids never change; new ones continue after the largest
    for (u0, i0), (u1, i1) in zip(maps, maps[1:]):
        assert u1.head(u0.height).equals(u0) and i1.head(i0.height).equals(i0)
        assert u1.height > u0.height and i1.height > i0.height  # later drops bring new users and items

    rebuilt = _ingest(cfg, raw, full, rows_per_shard=rows_per_shard)
    assert rebuilt.mode == "full"
    assert _bytes(inc) == _bytes(full)
    assert _counts(inc) == _counts(full)
    assert rebuilt.duplicates_dropped >= DAYS - 1 and rebuilt.rows_quarantined == DAYS - 1
    # the duplicate across a boundary keeps the earlier file's row, as the full rebuild does
    events = pl.read_parquet(full / "events.parquet")
    assert events.filter((pl.col("source_file") == "events_2.csv") & (pl.col("source_line") == 1)).is_empty()
    # what was ingested is recorded in the published version, and listed in its manifest
    state = json.loads((inc / INGEST_FILES["ingest_state"]).read_text())
    assert [f["name"] for f in state["files"]] == [f"events_{k + 1}.csv" for k in range(DAYS)]
    assert INGEST_FILES["ingest_state"] in json.loads((inc / "_manifest.json").read_text())["files"]

    again = _ingest(cfg, raw, inc, rows_per_shard=rows_per_shard)  # nothing new: nothing parsed, outputs unchanged
    assert (again.mode, again.files_parsed, again.rows_kept) == ("incremental", [], rebuilt.rows_kept)
    assert _bytes(inc) == _bytes(full)


def _built(cfg, drops, tmp_path: Path) -> tuple[Path, Path]:
    raw, out = tmp_path / "raw", tmp_path / "out"
    for k, text in enumerate(drops[:2]):
        _write_drop(raw, k, text)
        _ingest(cfg, raw, out)
    return raw, out


@pytest.mark.parametrize("change, reason", [
    ("replaced", "file events_2.csv was replaced"),
    ("shrunk", "file events_2.csv was shrunk"),
    ("removed", "file events_2.csv was removed"),
    ("grown", "file events_2.csv was"),  # a small file hashed whole: an append reads as replaced
    ("sorts_before", "new file events_0.csv sorts before an already ingested file"),
    ("registry", "registry entry of 'taobao' changed"),
])
def test_changes_that_cannot_be_appended_rebuild_in_full(registry, drops, tmp_path, change, reason):
    cfg = _cfg(registry)
    raw, out = _built(cfg, drops, tmp_path)
    second = raw / "events_2.csv"
    lines = second.read_text().splitlines(keepends=True)
    if change == "replaced":
        second.write_text("".join(reversed(lines)))
    elif change == "shrunk":
        second.write_text("".join(lines[:-5]))
    elif change == "removed":
        second.unlink()
    elif change == "grown":
        second.write_text("".join(lines) + drops[2])
    elif change == "sorts_before":
        (raw / "events_0.csv").write_text(drops[2])
    elif change == "registry":
        cfg = with_options(cfg, bad_row_threshold=0.02)
    _write_drop(raw, 2, drops[2])
    summary = _ingest(cfg, raw, out)
    assert summary.mode == "full" and reason in summary.reason
    assert len(summary.files_parsed) == len(list(raw.glob("events_*.csv")))
    assert reason in json.loads((out / INGEST_FILES["ingest_report"]).read_text())["reason"]
    # the full rebuild equals a rebuild from scratch
    fresh = tmp_path / "fresh"
    _ingest(cfg, raw, fresh)
    assert _bytes(out) == _bytes(fresh) and _counts(out) == _counts(fresh)


def test_touched_file_is_unchanged_and_files_match_the_pattern_sorted(registry, drops, tmp_path):
    cfg = _cfg(registry)
    raw, out = _built(cfg, drops, tmp_path)
    copy = tmp_path / "copy.csv"
    shutil.copy2(raw / "events_1.csv", copy)
    shutil.copy(copy, raw / "events_1.csv")  # same bytes, new modification time
    (raw / "notes.txt").write_text("not an events file")
    _write_drop(raw, 2, drops[2])
    summary = _ingest(cfg, raw, out)
    assert summary.mode == "incremental" and summary.files_parsed == ["events_3.csv"]
    assert sorted(summary.per_file) == ["events_1.csv", "events_2.csv", "events_3.csv"]


def test_a_refresh_does_not_rehash_raw_files_already_ingested(registry, drops, tmp_path, monkeypatch):
    """source.json's SHA-256 of an old, unchanged file is reused from the published version; only new
    or changed files are read whole."""
    import pipelines.sources as sources
    from pipelines.layout import DatasetLayout

    cfg = _cfg(registry)
    paths = DatasetLayout(tmp_path, cfg.name)
    hashed: list[str] = []
    real = sources._sha256_file
    monkeypatch.setattr(sources, "_sha256_file", lambda p: hashed.append(p.name) or real(p))

    def refresh() -> dict:
        source = sources.resolve_raw_source(cfg, paths, log=lambda _: None)
        ingest_dataset(cfg, source.directory, paths.ingest_dir(), log=lambda _: None,
                       extra_files={sources.SOURCE_FILE: source.to_json()})
        return source.files

    _write_drop(paths.raw_dir, 0, drops[0])
    first = refresh()
    assert hashed == ["events_1.csv"]
    hashed.clear()
    _write_drop(paths.raw_dir, 1, drops[1])
    second = refresh()
    assert hashed == ["events_2.csv"]  # the old file's hash came from the published source.json
    assert second["events_1.csv"] == first["events_1.csv"]
    assert second["events_2.csv"]["sha256"] == real(paths.raw_dir / "events_2.csv")
    hashed.clear()
    _write_drop(paths.raw_dir, 0, drops[0].replace(",pv,", ",fav,", 1))  # an old file replaced: read again
    refresh()
    assert "events_1.csv" in hashed
