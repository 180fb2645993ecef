"""The `released` protocol: a published split release (EIDP/BLADE files) is used as published.

The generated release carries the published QK-Video release's quirks (interleaved user blocks,
training-only users, users without a test line, click-only between lines, valid/test items seen in
train, all-zero lines), and the statistics must equal counting directly over `train.txt`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import ingested
from pipelines.augmentation.stage import materialize_statistics
from pipelines.ingest.core import ingest_dataset
from pipelines.registry import RegistryError
from pipelines.sequences import splits as sp
from pipelines.sequences.exports import blade_split_files
from pipelines.sequences.stage import materialize_exports, materialize_split, materialize_steps, split_dir, steps_path
from pipelines.storage import DatasetPaths
from schemas import columns as c

FILES = ("train.txt", "valid.txt", "between_val_test.txt", "test.txt")
COLS = ["user", "item", "b1", "b2", "b3", "b4"]
QUIET = {"log": lambda _: None}


def _read(d: Path, name: str) -> pl.DataFrame:
    return pl.read_csv(d / name, has_header=False, new_columns=COLS).with_row_index("line", offset=1)


def _materialize(cfg, paths: DatasetPaths):
    materialize_steps(cfg, paths, **QUIET)
    summary = materialize_split(cfg, paths, "released", **QUIET)
    materialize_statistics(cfg, paths, **QUIET)
    return summary


def _raw_roles(paths: DatasetPaths, protocol: str = "released") -> pl.DataFrame:
    """(raw user, raw item, behaviors, role) in sequence order: comparable across re-imports."""
    ingest = paths.stage_dir("ingest")
    steps = pl.read_parquet(steps_path(paths))
    roles = pl.read_parquet(split_dir(paths, protocol) / "roles.parquet")
    return (steps.join(roles, on=[c.USER_ID, "step"])
            .join(pl.read_parquet(ingest / "user_id_map.parquet"), on=c.USER_ID)
            .join(pl.read_parquet(ingest / "item_id_map.parquet"), on=c.ITEM_ID)
            .sort(c.RAW_USER_ID, "step").select(c.RAW_USER_ID, c.RAW_ITEM_ID, c.BEHAVIORS, "step", "role"))


@pytest.fixture(scope="module")
def release(tmp_path_factory, registry):
    """The generated blade_qk_video release, ingested and split with the released protocol."""
    cfg = registry.get("blade_qk_video")
    root = tmp_path_factory.mktemp("release")
    paths = ingested(cfg, root)
    summary = _materialize(cfg, paths)
    files = {f: _read(paths.generated_dir, f) for f in FILES}
    return cfg, paths, summary, files


def test_generated_release_has_the_published_quirks(release) -> None:
    _, _, _, files = release
    train, valid, between, test = (files[f] for f in FILES)
    # users' lines interleave in blocks: some user's train lines are not contiguous
    blocks = train.with_columns(block=(pl.col("user") != pl.col("user").shift(1)).cum_sum())
    multi = blocks.group_by("user").agg(pl.col("block").n_unique()).filter(pl.col("block") > 1)
    assert multi.height > 0.3 * train["user"].n_unique()
    users = set(train["user"])
    assert 0 < len(users - set(valid["user"])) < 0.2 * len(users)
    assert 0 < len(users - set(test["user"])) < 0.2 * len(users)
    assert set(valid["user"]) != set(test["user"])  # some users have a valid but no test line, or the reverse
    click_only = (pl.col("b1") == 1) & (pl.col("b2") + pl.col("b3") + pl.col("b4") == 0)
    assert between.height > 0 and between.filter(~click_only).height == 0
    assert set(valid["item"]) <= set(train["item"]) and set(test["item"]) <= set(train["item"])
    assert train.filter(pl.sum_horizontal("b1", "b2", "b3", "b4") == 0).height > 0  # all-zero lines exist


def test_roles_and_examples_are_the_releases(release) -> None:
    cfg, paths, summary, files = release
    train, valid, between, test = (files[f] for f in FILES)
    nonzero = pl.sum_horizontal("b1", "b2", "b3", "b4") > 0  # all-zero lines are exposures, dropped
    assert summary.roles == {"train": train.filter(nonzero).height, "valid": valid.height,
                             "between": between.height, "test": test.height}
    users = set(train["user"]) | set(valid["user"]) | set(test["user"]) | set(between["user"])
    assert summary.user_counts["users_without_valid"] == len(users - set(valid["user"])) > 0
    assert summary.user_counts["users_without_test"] == len(users - set(test["user"])) > 0
    assert summary.users_excluded == 0

    raw = _raw_roles(paths)
    # every role's steps are the file's non-zero lines, per user in file order
    for role, name in (("train", "train.txt"), ("valid", "valid.txt"), ("between", "between_val_test.txt"),
                       ("test", "test.txt")):
        got = raw.filter(pl.col("role") == role).select(c.RAW_USER_ID, c.RAW_ITEM_ID)
        want = files[name].filter(nonzero).sort("user", "line", maintain_order=True).select(
            pl.col("user").alias(c.RAW_USER_ID), pl.col("item").alias(c.RAW_ITEM_ID))
        assert got.rows() == want.rows(), role

    # examples: valid history = the user's train lines; test history = train + valid + between lines
    ex = pl.read_parquet(split_dir(paths, "released") / "examples_unfiltered.parquet")
    per_user = raw.group_by(c.RAW_USER_ID).agg(
        *(((pl.col("role") == r).sum()).alias(r) for r in ("train", "valid", "between")))
    umap = pl.read_parquet(paths.stage_dir("ingest") / "user_id_map.parquet")
    joined = ex.join(umap, on=c.USER_ID).join(per_user, on=c.RAW_USER_ID)
    v = joined.filter(pl.col("role") == "valid")
    t = joined.filter(pl.col("role") == "test")
    assert v.height == valid.height and t.height == test.height
    assert (v["history_end"].cast(pl.Int64) == v["train"]).all()
    assert (t["history_end"].cast(pl.Int64) == t["train"] + t["valid"] + t["between"]).all()


def test_statistics_equal_counting_over_train_txt(release) -> None:
    cfg, paths, _, files = release
    doc = json.loads((paths.stage_dir("statistics") / "released" / "statistics.json").read_text())
    train = files["train.txt"].filter(pl.sum_horizontal("b1", "b2", "b3", "b4") > 0)
    bits = train.select("b1", "b2", "b3", "b4").to_numpy().astype(np.int64)
    assert doc["m"] == bits.sum(axis=0).tolist()
    M = bits.T @ bits
    np.fill_diagonal(M, 0)
    assert doc["M"] == M.tolist()
    assert doc["set_size_counts"] == np.bincount(bits.sum(axis=1), minlength=5).tolist()
    # transitions: consecutive lines of one user in file order (blocks of other users in between)
    ordered = train.sort("user", "line", maintain_order=True)
    user = ordered["user"].to_numpy()
    b = ordered.select("b1", "b2", "b3", "b4").to_numpy().astype(np.int64)
    same = user[1:] == user[:-1]
    assert doc["T"] == (b[:-1][same].T @ b[1:][same]).tolist()
    # the eidp rule re-derives roles from the sequence, and so does not reproduce the release
    materialize_split(cfg, paths, "eidp", **QUIET)
    eidp_roles = pl.read_parquet(split_dir(paths, "eidp") / "roles.parquet")
    released_roles = pl.read_parquet(split_dir(paths, "released") / "roles.parquet")
    assert eidp_roles["role"].to_list() != released_roles["role"].to_list()


def test_export_then_reimport_gives_the_same_split(release, tmp_path, registry) -> None:
    cfg, paths, _, _ = release
    exported = materialize_exports(cfg, paths, **QUIET)
    assert exported["blade_split_protocol"] == "released"
    back_paths = DatasetPaths(tmp_path, cfg.name)
    ingest_dataset(cfg, paths.stage_dir("exports") / "blade", back_paths.stage_dir("ingest"), **QUIET)
    back_summary = _materialize(cfg, back_paths)
    assert back_summary.roles == materialize_split(cfg, paths, "released", **QUIET).roles
    # exported ids are dense + 1: map both sides back to the dense ids of the first import
    first = _raw_roles(paths).with_columns(pl.col(c.RAW_USER_ID).rank("dense"), pl.col(c.RAW_ITEM_ID))
    again = _raw_roles(back_paths)
    imap = pl.read_parquet(paths.stage_dir("ingest") / "item_id_map.parquet")
    umap = pl.read_parquet(paths.stage_dir("ingest") / "user_id_map.parquet")
    again = (again.join(umap.select((pl.col(c.USER_ID).cast(pl.Int64) + 1).alias(c.RAW_USER_ID),
                                    pl.col(c.RAW_USER_ID).alias("orig_user")), on=c.RAW_USER_ID)
             .join(imap.select((pl.col(c.ITEM_ID).cast(pl.Int64) + 1).alias(c.RAW_ITEM_ID),
                               pl.col(c.RAW_ITEM_ID).alias("orig_item")), on=c.RAW_ITEM_ID)
             .sort("orig_user", "step").select("orig_user", "orig_item", c.BEHAVIORS, "step", "role"))
    assert again.rows() == _raw_roles(paths).rows()
    assert first.height == again.height
    for name in ("statistics.json", "M.npy", "T.npy"):
        assert (back_paths.stage_dir("statistics") / "released" / name).read_bytes() == \
               (paths.stage_dir("statistics") / "released" / name).read_bytes(), name
    ex = [pl.read_parquet(split_dir(p, "released") / "examples.parquet").drop(c.USER_ID, c.ITEM_ID)
          for p in (paths, back_paths)]
    assert ex[0].equals(ex[1])


def test_recbole_benchmark_files_carry_our_targets(release) -> None:
    cfg, paths, _, files = release
    materialize_exports(cfg, paths, **QUIET)
    d = paths.stage_dir("exports") / "recbole_benchmark" / cfg.name
    read = lambda role: pl.read_csv(d / f"{cfg.name}.{role}.inter", separator="\t")  # noqa: E731
    test = read("test")
    assert test.columns == ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    ex = pl.read_parquet(split_dir(paths, "released") / "examples.parquet").filter(pl.col("role") == "test")
    assert ex.height == files["test.txt"].height
    # RecBole cannot hold an empty history: those examples (and only those) are left out, and counted
    ex = ex.filter(pl.col("history_end") > pl.col("dropped_steps").list.len())
    assert test.height == ex.height and test["item_id:token"].to_list() == ex[c.ITEM_ID].cast(pl.Int64).to_list()
    counts = materialize_exports(cfg, paths, **QUIET)["recbole_benchmark"]
    assert counts["test_examples_with_empty_history_left_out"] == files["test.txt"].height - test.height
    assert read("valid").height + counts["valid_examples_with_empty_history_left_out"] == files["valid.txt"].height
    # a training row per train step after a user's first: RecBole's own augmentation, made here
    roles = pl.read_parquet(split_dir(paths, "released") / "roles.parquet")
    n_train = roles.filter(pl.col("role") == "train").group_by(c.USER_ID).len()["len"]
    assert read("train").height == int((n_train - 1).clip(lower_bound=0).sum())


def test_released_protocol_is_the_default_for_releases_only(registry) -> None:
    from pipelines.training.stage import TrainingOptions

    blade, taobao = registry.get("blade_qk_video"), registry.get("taobao")
    assert sp.default_protocol(blade) == "released" and TrainingOptions.of(blade).protocol == "released"
    assert sp.default_protocol(taobao) == "leave_one_out"
    bad = taobao.model_copy(update={"stages": {"training": {"protocol": "released"}}})
    with pytest.raises(RegistryError, match="stages.training.protocol: .*not a split release"):
        TrainingOptions.of(bad)
    assert "not a split release" in sp.PROTOCOL_TABLE["released"].not_applicable(taobao)


def test_two_valid_lines_for_one_user_is_a_clear_error(registry) -> None:
    cfg = registry.get("blade_qk_video")
    order = lambda file, line: (file << c.LINE_BITS) + line  # noqa: E731
    steps = pl.DataFrame({c.USER_ID: [0, 0, 0], "step": [0, 1, 2], c.ITEM_ID: [1, 2, 3], c.BEHAVIORS: [1, 2, 2],
                          c.TIMESTAMP: [None, None, None], c.EVENT_ORDER: [order(0, 1), order(1, 1), order(1, 2)]},
                         schema_overrides={c.USER_ID: pl.UInt32, "step": pl.UInt32, c.ITEM_ID: pl.UInt32,
                                           c.BEHAVIORS: pl.UInt16, c.TIMESTAMP: pl.Int64})
    with pytest.raises(ValueError, match="more than one valid line"):
        sp.released(steps, cfg)


def test_placeholder_item_texts_are_not_embedded(release) -> None:
    """A release has no side information: every text is the fallback 'item <id>', so the text part
    of the embedding is skipped (and said), and the collaborative part alone is used."""
    from pipelines.semantic_ids.stage import materialize_embeddings, materialize_item_text

    cfg, paths, _, _ = release
    texts = materialize_item_text(cfg, paths, **QUIET)
    assert texts["fallback_texts"] == texts["items"] > 0
    meta = materialize_embeddings(cfg, paths, **QUIET)
    assert meta["source"] == "collaborative" and "text embedding skipped" in meta["text_skipped"]
    assert "embedded_now" not in meta and not paths.embedding_cache().exists()
    assert meta["dims"] == 64  # the collaborative SVD's dimensions only
