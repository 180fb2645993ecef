"""Plain logic behind the dataset refreshes: what changed in a raw folder, and what failed where.

The raw-data sensor (``assets/automation.py``) keeps, per dataset, the fingerprints of the raw files
it saw last (its cursor). A tick compares them with the folder now; a new, grown, replaced or shrunk
file asks for an ingest run of that dataset. A dataset the sensor has never seen is compared with its
published outputs instead: files older than the published ingest count as already ingested, so
switching the sensor on does not rebuild every dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipelines.ingest.fingerprints import Fingerprint, changes, digest, fingerprint_dir
from pipelines.layout import DatasetLayout
from pipelines.storage import write_text_atomic


@dataclass(frozen=True)
class RawChange:
    dataset: str
    changed: dict[str, str]  # file -> new | grown | replaced | shrunk | removed
    run_key: str
    files: dict[str, Fingerprint]

    def describe(self) -> str:
        parts = [f"{name} ({kind})" for name, kind in self.changed.items()]
        return f"{self.dataset}: " + ", ".join(parts)

    @property
    def needs_run(self) -> bool:
        # files gone and nothing else: the next ingest would fail or fall back to generated data,
        # which the data-safety rules refuse; say it in the tick, do not start a run
        return bool(self.files) and any(kind != "removed" for kind in self.changed.values())


def newest_raw_mtime_ns(files: dict[str, Fingerprint]) -> int:
    return max((f.mtime_ns for f in files.values()), default=0)


def published_at_ns(paths: DatasetLayout) -> int | None:
    """When the dataset's current ingest outputs were written (None: never ingested)."""
    events = paths.events()
    return events.stat().st_mtime_ns if events.exists() else None


def scan_raw_folder(dataset: str, paths: DatasetLayout, seen: dict[str, Fingerprint] | None,
                    published_ns: int | None = None) -> RawChange:
    """What changed in ``raw/<dataset>/`` since ``seen`` (the sensor's last view; None: never looked).
    ``published_ns``: when the ingest outputs were published, where the caller knows it better than
    the local events file (an object-store data root: the store's link object)."""
    now = fingerprint_dir(paths.raw_dir)
    if seen is None:
        published = published_ns if published_ns is not None else published_at_ns(paths)
        if published is not None:  # first look: what the published outputs already hold counts as seen
            seen = {name: fp for name, fp in now.items() if fp.mtime_ns <= published}
        else:
            seen = {}
    # the key names the content and the newest modification: a drop that sensor ticks see twice
    # never runs twice, while going back to an earlier file (A, B, then A again) still runs
    return RawChange(dataset, changes(seen, now), f"{dataset}:{digest(now)}:{newest_raw_mtime_ns(now)}", now)


def encode_cursor(state: dict[str, dict[str, Fingerprint]]) -> str:
    return json.dumps({d: {n: fp.to_json() for n, fp in files.items()} for d, files in sorted(state.items())},
                      sort_keys=True)


def decode_cursor(cursor: str | None) -> dict[str, dict[str, Fingerprint]]:
    if not cursor:
        return {}
    try:
        raw = json.loads(cursor)
        return {d: {n: Fingerprint.from_json(fp) for n, fp in files.items()} for d, files in raw.items()}
    except (ValueError, TypeError):  # a cursor from another version: look again from scratch
        return {}


def raw_newer_than_outputs(paths: DatasetLayout) -> list[str]:
    """Raw files modified after the dataset's ingest outputs were published (sorted); [] when fresh."""
    published = published_at_ns(paths)
    files = fingerprint_dir(paths.raw_dir)
    if published is None:
        return sorted(files)
    return sorted(name for name, fp in files.items() if fp.mtime_ns > published)


# --------------------------------------------------------------------------------- failures
def record_failure(paths: DatasetLayout, record: dict[str, object], keep: int = 50) -> Path:
    """Append one failed run to the dataset's failure report (newest last, the last ``keep`` kept)."""
    path = paths.failures()
    rows = read_failures(paths)
    rows.append({"recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record})
    write_text_atomic("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows[-keep:]), path)
    return path


def read_failures(paths: DatasetLayout) -> list[dict[str, object]]:
    path = paths.failures()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
