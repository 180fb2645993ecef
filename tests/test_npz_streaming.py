"""Model-ready arrays stream to their .npz files: the same bytes as writing the concatenated arrays,
without holding them (at 100M Taobao events the session protocol's arrays are about 15 GB)."""

from __future__ import annotations

import numpy as np
import pytest

import polars as pl

from pipelines.sequences import model_ready
from pipelines.shards import ShardError, merge_model_ready, merge_table
from pipelines.storage import ArrayBlocks, NpzAppender, npz_members, write_frame, write_npz_atomic


def blocks(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in (5, 0, 17, 1):  # a block without rows too
        out.append({"items": rng.integers(0, 1000, (n, 50)).astype(np.int32),
                    "lengths": rng.integers(0, 50, n).astype(np.int32),
                    "user_ids": np.sort(rng.integers(0, 40, n)).astype(np.int32),
                    "gaps": rng.random((n, 3, 2))})
    return out


@pytest.mark.parametrize("declared", [None, 23], ids=["assembled", "in_place"])
def test_appended_blocks_give_the_bytes_of_the_concatenated_arrays(tmp_path, monkeypatch, declared):
    parts = blocks()
    monkeypatch.setattr(NpzAppender, "CHUNK", 1000)  # many chunks per array
    with NpzAppender(tmp_path / "streamed.npz", rows=declared) as out:
        for b in parts:
            out.append(b)
    assert out.rows == {"items": 23, "lengths": 23, "user_ids": 23, "gaps": 23}
    write_npz_atomic({k: np.concatenate([b[k] for b in parts]) for k in parts[0]}, tmp_path / "whole.npz")
    assert (tmp_path / "streamed.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    with np.load(tmp_path / "streamed.npz") as data:
        assert list(data.files) == ["items", "lengths", "user_ids", "gaps"]
        np.testing.assert_array_equal(data["items"], np.concatenate([b["items"] for b in parts]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.npz", "whole.npz"]  # no scratch left


def test_nothing_appended_is_an_empty_archive_and_a_failure_publishes_nothing(tmp_path):
    with NpzAppender(tmp_path / "empty.npz"):
        pass
    write_npz_atomic({}, tmp_path / "empty_whole.npz")
    assert (tmp_path / "empty.npz").read_bytes() == (tmp_path / "empty_whole.npz").read_bytes()

    (tmp_path / "kept.npz").write_bytes(b"previous")
    with pytest.raises(ValueError, match="block of 'items' is int64"):
        with NpzAppender(tmp_path / "kept.npz") as out:
            out.append({"items": np.zeros((2, 50), np.int32)})
            out.append({"items": np.zeros((2, 50), np.int64)})
    assert (tmp_path / "kept.npz").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz", "empty_whole.npz", "kept.npz"]


def test_declared_zero_rows_give_the_empty_arrays(tmp_path):
    empty = {k: v[:0] for k, v in blocks()[0].items()}
    with NpzAppender(tmp_path / "zero.npz", rows=0) as out:
        out.append(empty)
        out.append(empty)
    assert (tmp_path / "zero.npz").read_bytes() == write_npz_atomic(empty, tmp_path / "whole.npz").read_bytes()


@pytest.mark.parametrize("rows, error", [(22, "more than the 22 rows declared"), (24, "24 declared")])
def test_a_total_other_than_the_declared_rows_publishes_nothing(tmp_path, rows, error):
    (tmp_path / "kept.npz").write_bytes(b"previous")
    with pytest.raises(ValueError, match=error):
        with NpzAppender(tmp_path / "kept.npz", rows=rows) as out:
            for b in blocks():
                out.append(b)
    with pytest.raises(ValueError, match="no rows written, 3 declared"):
        with NpzAppender(tmp_path / "kept.npz", rows=3):
            pass
    with pytest.raises(ValueError, match="'extra' was not in the first block"):
        with NpzAppender(tmp_path / "kept.npz", rows=4) as out:
            out.append({"items": np.zeros((2, 50), np.int32)})
            out.append({"items": np.zeros((2, 50), np.int32), "extra": np.zeros(2)})
    assert (tmp_path / "kept.npz").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.npz"]  # no scratch left


def model_ready_arrays(rng: np.random.Generator, users: np.ndarray) -> dict[str, np.ndarray]:
    """One shard's model-ready arrays (``build``'s keys and order): 1-3 examples per user, user-ordered."""
    user_ids = np.repeat(users, rng.integers(1, 4, len(users))).astype(np.int32)
    n = len(user_ids)
    arrays = {name: rng.integers(0, 1000, (n, 50)).astype(np.int32) for name in model_ready.ARRAYS}
    return {**arrays, "lengths": rng.integers(0, 51, n).astype(np.int32),
            "target_items": rng.integers(1, 1000, n).astype(np.int32),
            "target_behaviors": rng.integers(1, 16, n).astype(np.int32), "user_ids": user_ids}


def test_merging_shards_model_ready_gives_the_user_ordered_bytes_from_the_tables_blocks(tmp_path):
    """The merge writes a role's arrays from its merged table's blocks, without reading the shards'
    arrays: the bytes of the shards' arrays concatenated and ordered by user."""
    rng = np.random.default_rng(0)
    users = rng.permutation(40)
    tables, arrays, loaded = [], [], []
    for k, shard_users in enumerate((np.sort(users[:15]), np.sort(users[15:22]), np.sort(users[22:]))):
        a = model_ready_arrays(rng, shard_users)
        loaded.append(a)
        arrays.append(write_npz_atomic(a, tmp_path / f"shard_{k}.npz"))
        write_frame(model_ready.to_frame(a, "test"), tmp_path / f"shard_{k}.parquet")
        tables.append(tmp_path / f"shard_{k}.parquet")
    arrays.append(tmp_path / "missing.npz")  # a shard without this role is skipped
    tables.append(tmp_path / "missing.parquet")
    empty = {k: v[:0] for k, v in loaded[0].items()}
    arrays.append(write_npz_atomic(empty, tmp_path / "no_rows.npz"))
    write_frame(model_ready.to_frame(empty, "test"), tmp_path / "no_rows.parquet")
    tables.append(tmp_path / "no_rows.parquet")

    n = merge_model_ready(arrays, tmp_path / "merged.parquet", tmp_path / "merged.npz", "test",
                          users_per_block=7, n_users=40)
    whole = {key: np.concatenate([a[key] for a in loaded]) for key in loaded[0]}
    order = np.argsort(whole["user_ids"], kind="stable")
    write_npz_atomic({key: v[order] for key, v in whole.items()}, tmp_path / "expected.npz")
    assert n == len(order) > 40
    assert (tmp_path / "merged.npz").read_bytes() == (tmp_path / "expected.npz").read_bytes()
    merged = pl.read_parquet(tmp_path / "merged.parquet")
    assert merged.equals(model_ready.to_frame({key: v[order] for key, v in whole.items()}, "test"))
    # the table has the contents of merging the shards' tables, and the bytes the single-machine
    # stage writes for the same arrays
    assert merge_table(tables, tmp_path / "from_tables.parquet", 7, 40) == n
    assert merged.equals(pl.read_parquet(tmp_path / "from_tables.parquet"))
    assert model_ready.write_table(tmp_path / "expected.npz", tmp_path / "expected.parquet", "test") == n
    assert (tmp_path / "merged.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left

    # no rows in any shard: the shards' empty arrays, and an empty table of their schema
    assert merge_model_ready(arrays[-2:], tmp_path / "e.parquet", tmp_path / "e.npz", "test", 7, 40) == 0
    assert (tmp_path / "e.npz").read_bytes() == write_npz_atomic(empty, tmp_path / "e2.npz").read_bytes()
    assert pl.read_parquet(tmp_path / "e.parquet").equals(model_ready.to_frame(empty, "test"))
    # none wrote any: an empty archive and a table without columns
    assert merge_model_ready(arrays[-2:-1], tmp_path / "n.parquet", tmp_path / "n.npz", "test", 7, 40) == 0
    assert (tmp_path / "n.npz").read_bytes() == write_npz_atomic({}, tmp_path / "n2.npz").read_bytes()
    assert pl.read_parquet(tmp_path / "n.parquet").width == 0


def test_shard_arrays_out_of_user_order_or_with_other_keys_are_refused_and_nothing_is_published(tmp_path):
    rng = np.random.default_rng(1)
    a = model_ready_arrays(rng, np.arange(10))
    unordered = {k: v[::-1].copy() for k, v in a.items()}
    write_npz_atomic(unordered, tmp_path / "u.npz")
    (tmp_path / "merged.npz").write_bytes(b"previous")
    with pytest.raises(ShardError, match="not ordered"):
        merge_model_ready([tmp_path / "u.npz"], tmp_path / "merged.parquet", tmp_path / "merged.npz", "valid", 4, 10)
    write_npz_atomic({**a, "extra": a["lengths"]}, tmp_path / "x.npz")
    with pytest.raises(ShardError, match="expected"):
        merge_model_ready([tmp_path / "x.npz"], tmp_path / "merged.parquet", tmp_path / "merged.npz", "valid", 4, 10)
    assert (tmp_path / "merged.npz").read_bytes() == b"previous"
    assert not (tmp_path / "merged.parquet").exists()


def test_npz_members_read_any_row_range_of_every_writer_s_archives(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"items": rng.integers(0, 9, (23, 50)).astype(np.int32), "lengths": np.arange(23, dtype=np.int64),
              "cube": rng.random((23, 3, 2)), "none": np.zeros((0, 4), np.int16)}
    write_npz_atomic(arrays, tmp_path / "atomic.npz")
    with NpzAppender(tmp_path / "appended.npz") as out:
        out.append({k: v[:10] for k, v in arrays.items() if k != "none"})
        out.append({k: v[10:] for k, v in arrays.items() if k != "none"})
    np.savez(tmp_path / "numpy.npz", **arrays)
    for name in ("atomic.npz", "appended.npz", "numpy.npz"):
        members = npz_members(tmp_path / name)
        assert list(members) == [k for k in arrays if name != "appended.npz" or k != "none"]
        for key, member in members.items():
            assert len(member) == len(arrays[key]) and member.dtype == arrays[key].dtype
            for a, b in ((0, 23), (5, 6), (7, 7), (20, 99), (0, 0)):
                np.testing.assert_array_equal(member.rows(a, b), arrays[key][a:b])
                assert member.rows(a, b).shape == arrays[key][a:b].shape
    np.savez_compressed(tmp_path / "deflated.npz", **arrays)
    with pytest.raises(ValueError, match="not a stored .npy array"):
        npz_members(tmp_path / "deflated.npz")


def test_array_blocks_write_the_bytes_of_the_whole_array_and_check_what_they_declare(tmp_path):
    rng = np.random.default_rng(3)
    items, lengths = rng.integers(0, 9, (30, 50)).astype(np.int32), np.arange(30, dtype=np.int32)
    cuts = [0, 4, 4, 17, 30]  # an empty block too
    write_npz_atomic({"items": ArrayBlocks(items.dtype, items.shape, lambda: (items[a:b] for a, b in zip(cuts, cuts[1:]))),
                      "lengths": lengths}, tmp_path / "blocks.npz")
    write_npz_atomic({"items": items, "lengths": lengths}, tmp_path / "whole.npz")
    assert (tmp_path / "blocks.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    for wrong, match in ((ArrayBlocks(items.dtype, (31, 50), lambda: [items]), "hold 30 rows, declared 31"),
                         (ArrayBlocks(np.dtype(np.int64), items.shape, lambda: [items]), "declared int64")):
        with pytest.raises(ValueError, match=match):
            write_npz_atomic({"items": wrong}, tmp_path / "wrong.npz")
        assert not (tmp_path / "wrong.npz").exists()
