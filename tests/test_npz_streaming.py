"""Model-ready arrays stream to their .npz files: the same bytes as writing the concatenated arrays,
without holding them (at 100M Taobao events the session protocol's arrays are about 15 GB)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.shards import merge_arrays
from pipelines.storage import NpzAppender, write_npz_atomic


def blocks(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in (5, 0, 17, 1):  # a block without rows too
        out.append({"items": rng.integers(0, 1000, (n, 50)).astype(np.int32),
                    "lengths": rng.integers(0, 50, n).astype(np.int32),
                    "user_ids": np.sort(rng.integers(0, 40, n)).astype(np.int32),
                    "gaps": rng.random((n, 3, 2))})
    return out


def test_appended_blocks_give_the_bytes_of_the_concatenated_arrays(tmp_path, monkeypatch):
    parts = blocks()
    monkeypatch.setattr(NpzAppender, "CHUNK", 1000)  # many chunks per array
    with NpzAppender(tmp_path / "streamed.npz") as out:
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


def test_merging_shards_arrays_one_array_at_a_time_gives_the_user_ordered_bytes(tmp_path):
    shard_files = []
    for k, seed in enumerate((1, 2, 3)):
        parts = blocks(seed)
        shard_files.append(write_npz_atomic({key: np.concatenate([b[key] for b in parts]) for key in parts[0]},
                                            tmp_path / f"shard_{k}.npz"))
    shard_files.append(tmp_path / "missing.npz")  # a shard without this role is skipped
    write_npz_atomic({}, tmp_path / "no_rows.npz")
    shard_files.append(tmp_path / "no_rows.npz")
    n = merge_arrays(shard_files, tmp_path / "merged.npz")
    loaded = [dict(np.load(p)) for p in shard_files[:3]]
    whole = {key: np.concatenate([a[key] for a in loaded]) for key in loaded[0]}
    order = np.argsort(whole["user_ids"], kind="stable")
    write_npz_atomic({key: v[order] for key, v in whole.items()}, tmp_path / "expected.npz")
    assert n == 69 and (tmp_path / "merged.npz").read_bytes() == (tmp_path / "expected.npz").read_bytes()
