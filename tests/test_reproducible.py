"""The same inputs give the same bytes: two runs of the whole job from scratch, every output compared."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from conftest import materialize_project


def _digests(outputs: Path) -> dict[str, str]:
    """sha256 of every output file, by path relative to ``outputs`` (the versioned ingest folder is
    read through its link; GX Data Docs HTML carries GX's run timestamps and is left out)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(outputs, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # version folders: through the link
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(outputs).as_posix()
            if name.startswith(".") or "/data_docs/" in f"/{rel}":
                continue
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_two_runs_from_scratch_give_identical_bytes(kuaisar_project, tmp_path):
    again = materialize_project("kuaisar", tmp_path / "again")
    first, second = _digests(kuaisar_project / "outputs"), _digests(again.parent)
    assert len(first) > 40 and set(first) == set(second)
    differ = sorted(k for k in first if first[k] != second[k])
    assert differ == [], differ


def test_a_table_has_the_same_bytes_however_its_frame_is_chunked(tmp_path):
    """A streaming collect returns its rows in chunks that differ from run to run (the 20M-row item id
    map came out 6,072,207 and 6,078,580 bytes); polars writes pages chunk by chunk, so every table
    goes through ``write_frame``, which makes the frame one chunk first."""
    import polars as pl

    from pipelines.storage import write_frame

    whole = pl.DataFrame({"item_id": pl.arange(0, 300_000, eager=True).cast(pl.UInt32),
                          "raw_item_id": pl.arange(0, 300_000, eager=True) * 7})
    pieces = pl.concat([whole[:1_000], whole[1_000:150_000], whole[150_000:]], rechunk=False)
    assert pieces.n_chunks() == 3
    write_frame(whole, tmp_path / "whole.parquet")
    write_frame(pieces, tmp_path / "pieces.parquet")
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "pieces.parquet").read_bytes()
