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
