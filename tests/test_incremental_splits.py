"""Steps and splits after a daily drop recompute only the users whose events (steps) changed, and
write the bytes of a full recompute; anything that makes the published tables unusable falls back
to a full recompute."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from pipelines.augmentation.stage import materialize_statistics
from pipelines.ingest.core import ingest_dataset
from pipelines.layout import DatasetLayout
from pipelines.sequences import splits as sp
from pipelines.sequences import stage, state
from pipelines.synthetic import SyntheticSpec, write_synthetic
from tests.conftest import with_options

REFRESHED = ("leave_one_out", "eidp", "session", "temporal")
ROWS_PER_SHARD = 1_500  # several user ranges: the merge must keep every range's row groups
quiet = lambda _msg: None  # noqa: E731


@pytest.fixture(scope="module")
def drops(tmp_path_factory) -> list[str]:
    """Generated Taobao events cut by time: a base (90%), then two daily drops (5% each) of the
    users active in them, as a day's log file holds them."""
    gen = tmp_path_factory.mktemp("gen")
    (path,) = write_synthetic("taobao", gen, SyntheticSpec(users=400, items=150, topics=5, seed=3, events_per_user=14))
    lines = path.read_text().splitlines()
    ts = pl.Series([int(line.rsplit(",", 1)[1]) for line in lines])
    cuts = [ts.quantile(0.90, "lower"), ts.quantile(0.95, "lower")]
    day = [0 if t <= cuts[0] else 1 if t <= cuts[1] else 2 for t in ts.to_list()]
    return ["\n".join(line for line, d in zip(lines, day, strict=True) if d == k) + "\n" for k in range(3)]


def _cfg(registry, **sequences):
    cfg = registry.get("taobao").model_copy(update={"files": {"events": "events_*.csv"}})
    if sequences:
        cfg = cfg.model_copy(update={"stages": {**cfg.stages, "sequences": {**cfg.stages.get("sequences", {}),
                                                                             **sequences}}})
    return with_options(cfg, bad_row_threshold=0.05)


def _build(cfg, layout: DatasetLayout, **kw) -> dict[str, stage.SplitSummary]:
    """Ingest, steps and every split; the steps' summary under "steps"."""
    ingest_dataset(cfg, layout.raw_dir, layout.ingest_dir(), log=quiet)
    out = {"steps": stage.materialize_steps(cfg, layout, log=quiet, rows_per_shard=ROWS_PER_SHARD, **kw)}
    return out | {p: stage.materialize_split(cfg, layout, p, log=quiet, rows_per_shard=ROWS_PER_SHARD, **kw)
                  for p in sp.PROTOCOLS}


def _split_bytes(layout: DatasetLayout) -> dict[str, bytes]:
    tables = [f for p in REFRESHED for f in sorted(layout.split_dir(p).glob("*.parquet"))]
    tables += sorted(layout.steps().parent.glob("*.parquet"))  # steps, their digests, the events' digests
    return {str(f.relative_to(layout.outputs_dir)): f.read_bytes() for f in tables}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _made(summary: stage.SplitSummary) -> stage.SplitSummary:
    return dataclasses.replace(summary, mode="", mode_reason="", users_recomputed=0)


def _drop(layout: DatasetLayout, k: int, text: str) -> None:
    layout.raw_dir.mkdir(parents=True, exist_ok=True)
    (layout.raw_dir / f"events_{k + 1}.csv").write_text(text)


def test_daily_drops_recompute_the_changed_users_only_with_the_bytes_of_a_full_recompute(registry, drops, tmp_path):
    cfg = _cfg(registry)
    inc = DatasetLayout(tmp_path / "inc", cfg.name)
    _drop(inc, 0, drops[0])
    first = _build(cfg, inc)
    assert {p: first[p].mode for p in REFRESHED} == dict.fromkeys(REFRESHED, "full")
    assert first["leave_one_out"].mode_reason == "no previous split state"
    assert (first["steps"].mode, first["steps"].mode_reason) == ("full", "no previous steps state")
    users = pl.read_parquet(inc.user_digests()).height

    for k in (1, 2):
        _drop(inc, k, drops[k])
        refreshed = _build(cfg, inc)
        full = DatasetLayout(tmp_path / f"full{k}", cfg.name)  # the same files, built from scratch
        for j in range(k + 1):
            _drop(full, j, drops[j])
        rebuilt = _build(cfg, full)
        steps = refreshed["steps"]
        assert (steps.mode, steps.mode_reason) == ("incremental", "users whose events changed")
        assert 0 < steps.users_recomputed < users / 2 and rebuilt["steps"].mode == "full"
        assert _made(steps) == _made(rebuilt["steps"])
        for p in REFRESHED:
            s = refreshed[p]
            assert s.mode == "incremental", (p, s.mode_reason)
            assert 0 < s.users_recomputed < users / 2, (p, s.users_recomputed)
            assert rebuilt[p].mode == "full"
            assert _made(s) == _made(rebuilt[p]), p  # every count, over every user
        assert refreshed["temporal"].users_recomputed > refreshed["leave_one_out"].users_recomputed  # cuts moved
        assert "the cuts moved" in refreshed["temporal"].mode_reason
        assert _split_bytes(inc) == _split_bytes(full)
        assert refreshed["eidp"].user_counts["users_training_only"] == rebuilt["eidp"].user_counts["users_training_only"]
        assert materialize_statistics(cfg, inc, log=quiet) == materialize_statistics(cfg, full, log=quiet)
        assert _tree_bytes(inc.statistics_dir()) == _tree_bytes(full.statistics_dir())
        ready = stage.materialize_model_ready(cfg, inc, log=quiet, rows_per_shard=ROWS_PER_SHARD)
        assert ready == stage.materialize_model_ready(cfg, full, log=quiet, rows_per_shard=ROWS_PER_SHARD)
        assert _tree_bytes(inc.model_ready_dir()) == _tree_bytes(full.model_ready_dir())

    # nothing new: nothing is recomputed or rewritten, and the summaries are the last run's
    files = {f: f.stat().st_mtime_ns for f in inc.outputs_dir.rglob("*") if f.is_file() and f.name != ".lock"}
    statistics = materialize_statistics(cfg, inc, log=quiet)
    again = _build(cfg, inc)
    assert materialize_statistics(cfg, inc, log=quiet) == statistics
    assert stage.materialize_model_ready(cfg, inc, log=quiet, rows_per_shard=ROWS_PER_SHARD) == ready
    assert {k: again[k].mode for k in ("steps", *REFRESHED)} == dict.fromkeys(["steps", *REFRESHED], "unchanged")
    assert all(_made(again[k]) == _made(refreshed[k]) for k in again)
    assert {f: f.stat().st_mtime_ns for f in inc.outputs_dir.rglob("*") if f.is_file() and f.name != ".lock"} == files


@pytest.mark.parametrize("change, reason", [
    ("option", "the registry entry or the split code changed"),
    ("edited", "the published split files differ from its state"),
    ("no_digests", "the steps table has no digests of its own"),
    ("interrupted", "no previous split state"),
    ("forced", "a full recompute was asked for"),
])
def test_what_makes_the_published_split_unusable_recomputes_in_full(registry, drops, tmp_path, monkeypatch,
                                                                      change, reason):
    cfg = _cfg(registry)
    layout = DatasetLayout(tmp_path / "d", cfg.name)
    _drop(layout, 0, drops[0])
    _build(cfg, layout)
    _drop(layout, 1, drops[1])
    kw = {}
    if change == "option":
        cfg = _cfg(registry, max_len=20)
    elif change == "edited":
        roles = layout.roles("leave_one_out")
        pl.read_parquet(roles).head(10).write_parquet(roles)
    elif change == "no_digests":
        ingest_dataset(cfg, layout.raw_dir, layout.ingest_dir(), log=quiet)
        stage.materialize_steps(cfg, layout, log=quiet, rows_per_shard=ROWS_PER_SHARD)
        layout.user_digests().unlink()
    elif change == "interrupted":  # a refresh that fails midway leaves no state behind
        ingest_dataset(cfg, layout.raw_dir, layout.ingest_dir(), log=quiet)
        stage.materialize_steps(cfg, layout, log=quiet, rows_per_shard=ROWS_PER_SHARD)

        def fail(*_a, **_k):
            raise RuntimeError("killed")
        with monkeypatch.context() as m:
            m.setattr(stage, "find_leaks", fail)
            with pytest.raises(RuntimeError, match="killed"):
                stage.materialize_split(cfg, layout, "leave_one_out", log=quiet, rows_per_shard=ROWS_PER_SHARD)
        assert not layout.split_state("leave_one_out").exists()
    elif change == "forced":
        kw = {"full": True}
    if change in ("no_digests", "interrupted"):
        s = stage.materialize_split(cfg, layout, "leave_one_out", log=quiet, rows_per_shard=ROWS_PER_SHARD)
    else:
        built = _build(cfg, layout, **kw)
        s = built["leave_one_out"]
        steps_reason = {"option": "the registry entry or the steps code changed", "edited": "users whose events changed",
                        "forced": "a full recompute was asked for"}[change]
        assert built["steps"].mode_reason == steps_reason
    assert (s.mode, s.mode_reason) == ("full", reason)


def test_steps_fall_back_to_a_full_recompute_when_their_files_changed_or_k_core_is_on(registry, drops, tmp_path):
    cfg = _cfg(registry)
    layout = DatasetLayout(tmp_path / "d", cfg.name)
    _drop(layout, 0, drops[0])
    _build(cfg, layout)
    _drop(layout, 1, drops[1])
    ingest_dataset(cfg, layout.raw_dir, layout.ingest_dir(), log=quiet)
    steps = pl.read_parquet(layout.steps())
    steps.head(steps.height - 1).write_parquet(layout.steps())  # an edited steps table
    s = stage.materialize_steps(cfg, layout, log=quiet, rows_per_shard=ROWS_PER_SHARD)
    assert (s.mode, s.mode_reason) == ("full", "the published steps files differ from their state")
    kcore = _cfg(registry, min_user_steps=2)
    stage.materialize_steps(kcore, layout, log=quiet)
    s = stage.materialize_steps(kcore, layout, log=quiet)
    assert (s.mode, s.mode_reason) == ("full", "the k-core needs every user's steps")
    assert not layout.steps_state().exists()


@pytest.mark.parametrize("digests", ["kept", "missing"])
def test_steps_take_unchanged_users_digests_from_the_published_ones_or_hash_them(registry, drops, tmp_path, digests):
    """An unchanged user's steps digest is copied from the published ``user_digests``; without a
    usable one (missing, or stamped for other steps) every user's steps are hashed: the same bytes."""
    cfg = _cfg(registry)
    inc, full = DatasetLayout(tmp_path / "inc", cfg.name), DatasetLayout(tmp_path / "full", cfg.name)
    _drop(inc, 0, drops[0])
    _build(cfg, inc)
    for layout, k in ((full, 0), (full, 1), (inc, 1)):
        _drop(layout, k, drops[k])
    if digests == "missing":
        inc.user_digests().unlink()
    for layout in (inc, full):
        ingest_dataset(cfg, layout.raw_dir, layout.ingest_dir(), log=quiet)
    s = stage.materialize_steps(cfg, inc, log=quiet, rows_per_shard=ROWS_PER_SHARD)
    assert s.mode == "incremental" and 0 < s.users_recomputed
    stage.materialize_steps(cfg, full, log=quiet, rows_per_shard=ROWS_PER_SHARD)
    for name in ("steps.parquet", "user_digests.parquet", "event_digests.parquet"):
        assert (inc.steps().parent / name).read_bytes() == (full.steps().parent / name).read_bytes(), name


def test_the_split_user_table_and_digests_hold_their_contracts(registry, drops, tmp_path):
    from pipelines.contracts import validate_parquet
    from schemas.sequences import SplitUsers, UserDigests

    cfg = _cfg(registry)
    layout = DatasetLayout(tmp_path / "d", cfg.name)
    _drop(layout, 0, drops[0])
    summaries = _build(cfg, layout)
    assert validate_parquet(layout.user_digests(), UserDigests).passed
    for p in REFRESHED:
        assert validate_parquet(layout.split_users(p), SplitUsers).passed
        users = pl.read_parquet(layout.split_users(p))
        excluded = int((users["flags"] & 1).sum())
        assert excluded == summaries[p].users_excluded
    # the digests describe this steps table only: a steps table written by anyone else has none
    stage.materialize_steps(cfg, layout, log=quiet, rows_per_shard=ROWS_PER_SHARD)
    assert state.current_user_digests(layout) is not None
    steps = pl.read_parquet(layout.steps())
    steps.head(steps.height - 1).write_parquet(layout.steps())
    assert state.current_user_digests(layout) is None


def test_a_user_digest_changes_with_any_change_to_the_users_steps(registry, drops, tmp_path):
    from pipelines.sequences.steps import user_digests

    cfg = _cfg(registry)
    layout = DatasetLayout(tmp_path / "d", cfg.name)
    _drop(layout, 0, drops[0])
    ingest_dataset(cfg, layout.raw_dir, layout.ingest_dir(), log=quiet)
    stage.materialize_steps(cfg, layout, log=quiet)
    steps = pl.read_parquet(layout.steps())
    base = user_digests(steps)
    user = steps["user_id"][0]
    for change in (pl.col("behaviors") | 8, pl.col("item_id") + 1, pl.col("timestamp") + 1, pl.col("session") + 1):
        column = change.meta.root_names()[0]
        edited = steps.with_columns(pl.when((pl.col("user_id") == user) & (pl.col("step") == 0)).then(change)
                                    .otherwise(pl.col(column)).cast(steps.schema[column]).alias(column))
        after = user_digests(edited)
        differs = base.join(after, on="user_id").filter(pl.col("digest") != pl.col("digest_right"))["user_id"]
        assert differs.to_list() == [user], column
    dropped = user_digests(steps.filter(~((pl.col("user_id") == user) & (pl.col("step") == 1))))
    assert base.join(dropped, on="user_id").filter(pl.col("digest") != pl.col("digest_right"))["user_id"].to_list() \
        == [user]


def test_replaced_files_that_lose_users_drop_them_from_steps_and_splits(registry, drops, tmp_path):
    """Ingest rebuilds in full when files are replaced; the steps and splits still recompute only the
    users whose events changed, and users whose events are gone leave every table."""
    cfg = _cfg(registry)
    inc, full = DatasetLayout(tmp_path / "inc", cfg.name), DatasetLayout(tmp_path / "full", cfg.name)
    _drop(inc, 0, drops[0])
    _drop(inc, 1, drops[1])
    before = _build(cfg, inc)["steps"].users

    def without(text: str, users: set[str]) -> str:
        return "\n".join(line for line in text.splitlines() if line.split(",")[0] not in users) + "\n"
    # these users vanish: the largest raw ids, so every other user keeps its dense id (the ingest
    # rebuilds in full and numbers users by first file, then raw id)
    gone = set(sorted({line.split(",")[0] for line in drops[0].splitlines()}, key=int)[-3:])
    for layout in (inc, full):
        _drop(layout, 0, without(drops[0], gone))
        _drop(layout, 1, without(drops[1], gone))
    refreshed, rebuilt = _build(cfg, inc), _build(cfg, full)
    assert refreshed["steps"].mode == "incremental" and refreshed["leave_one_out"].mode == "incremental"
    assert refreshed["steps"].users == before - len(gone)
    assert _made(refreshed["steps"]) == _made(rebuilt["steps"])
    assert _split_bytes(inc) == _split_bytes(full)


def test_ranges_where_most_users_changed_are_recomputed_whole(registry, drops, tmp_path):
    """A replaced file with a new user whose raw id is the smallest renumbers every user: each range's
    steps are recomputed whole (no merge with the published rows), with a full recompute's bytes."""
    cfg = _cfg(registry)
    inc, full = DatasetLayout(tmp_path / "inc", cfg.name), DatasetLayout(tmp_path / "full", cfg.name)
    _drop(inc, 0, drops[0])
    users = _build(cfg, inc)["steps"].users
    item, cat, _, ts = drops[0].splitlines()[0].split(",")[1:]
    first = f"0,{item},{cat},pv,{ts}\n" + drops[0]  # raw user 0: dense id 0, everyone else moves up one
    for layout in (inc, full):
        _drop(layout, 0, first)
    refreshed, rebuilt = _build(cfg, inc), _build(cfg, full)
    steps = refreshed["steps"]
    assert steps.mode == "incremental" and steps.users_recomputed == users + 1
    assert "user ranges recomputed whole" in steps.mode_reason
    assert _made(steps) == _made(rebuilt["steps"])
    assert _split_bytes(inc) == _split_bytes(full)
