"""Whether an ingest can reuse the published version and parse only new raw files.

Each published ingest version records what it was built from (``ingest_state.json``, see
``pipelines.layout.INGEST_FILES``): the ingest code version, a hash of the dataset's registry fields
that ingest reads, and the fingerprint (``pipelines.ingest.fingerprints``) of every raw file in
ingest order. The next run compares them with the raw folder:

- incremental when every recorded file is still there and unchanged, the registry hash and code
  version are equal, the format's files are append-only drops (not ``behavior_set_splits``), side
  files (item properties, features) are unchanged, and every new event file sorts after the recorded
  ones (so recorded files keep their position in ingest order, hence their ``event_order``);
- a full rebuild otherwise, with the first reason found (e.g. "file events_2.csv was replaced").

A full rebuild over the same files gives the same bytes as the incremental run (see
``pipelines.ingest.core``: ids ordered by first file, then raw id; duplicates keep the first
occurrence in file order).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.ingest.fingerprints import Fingerprint, classify, fingerprint
from pipelines.ingest.formats import EVENT_ROLES
from pipelines.ingest.lines import RawFile
from pipelines.layout import INGEST_FILES
from pipelines.registry import DatasetConfig

# Bump when a code change alters what ingest writes for the same raw files: it forces a full rebuild.
INGEST_CODE_VERSION = 3  # 3: parquet statistics for user_id and timestamp only
# Formats whose files are not daily drops of one log (the release's train/valid/between/test): any
# run over them is a full rebuild, and their ids stay in plain raw-id order.
NOT_APPEND_ONLY = frozenset({"behavior_set_splits"})
# The registry fields ingest reads; a change to any of them forces a full rebuild.
INGEST_REGISTRY_FIELDS = ("format", "files", "behaviors", "time", "ingest")
STATE_FILE = INGEST_FILES["ingest_state"]
FULL, INCREMENTAL = "full", "incremental"


def registry_hash(cfg: DatasetConfig) -> str:
    fields = cfg.model_dump(mode="json", include=set(INGEST_REGISTRY_FIELDS))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def append_only(cfg: DatasetConfig) -> bool:
    return cfg.format not in NOT_APPEND_ONLY


@dataclass(frozen=True)
class IngestState:
    """What one published ingest version was built from."""

    code_version: int
    registry_hash: str
    files: list[tuple[str, Fingerprint]]  # (role, fingerprint) in ingest order

    @classmethod
    def of(cls, cfg: DatasetConfig, files: Mapping[str, list[RawFile]]) -> "IngestState":
        return cls(INGEST_CODE_VERSION, registry_hash(cfg),
                   [(role, fingerprint(f.path)) for role, fs in files.items() for f in fs])

    def to_json(self) -> str:
        return json.dumps({"code_version": self.code_version, "registry_hash": self.registry_hash,
                           # content only: modification times would make two builds of the same
                           # files differ byte-wise, and a copy with a new time is the same file
                           "files": [{"role": role, **{k: v for k, v in fp.to_json().items() if k != "mtime_ns"}}
                                     for role, fp in self.files]}, indent=1) + "\n"

    @classmethod
    def read(cls, out_dir: Path) -> "IngestState | None":
        path = out_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
            files = [(d.pop("role"), Fingerprint.from_json({"mtime_ns": 0, **d})) for d in data["files"]]
            return cls(int(data["code_version"]), str(data["registry_hash"]), files)
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Plan:
    mode: str  # FULL or INCREMENTAL
    reason: str
    new_files: list[str] = field(default_factory=list)  # event files to parse (incremental only)
    reused_files: list[str] = field(default_factory=list)  # event files whose rows are reused


def plan_ingest(cfg: DatasetConfig, now: IngestState, previous: IngestState | None, outputs_complete: bool) -> Plan:
    """Incremental when the previous version can be extended with the new files only; else why not."""
    if previous is None or not outputs_complete:
        return Plan(FULL, "no previous ingest")
    if previous.code_version != now.code_version:
        return Plan(FULL, f"ingest code version changed ({previous.code_version} -> {now.code_version})")
    if previous.registry_hash != now.registry_hash:
        return Plan(FULL, f"registry entry of '{cfg.name}' changed ({', '.join(INGEST_REGISTRY_FIELDS)})")
    if not append_only(cfg):
        return Plan(FULL, f"format {cfg.format} is not append-only")
    event_roles = set(EVENT_ROLES[cfg.format])
    old = {fp.name: fp for _, fp in previous.files}
    new = {fp.name: fp for _, fp in now.files}
    for name, fp in old.items():
        kind = classify(fp, new.get(name))
        if kind:
            return Plan(FULL, f"file {name} was {kind}")
    old_side = [(r, fp.name) for r, fp in previous.files if r not in event_roles]
    new_side = [(r, fp.name) for r, fp in now.files if r not in event_roles]
    if old_side != new_side:
        added = [n for r, n in new_side if (r, n) not in old_side]
        return Plan(FULL, f"side file(s) {added or [n for _, n in new_side]} changed")
    old_events = [fp.name for r, fp in previous.files if r in event_roles]
    now_events = [fp.name for r, fp in now.files if r in event_roles]
    if now_events[:len(old_events)] != old_events:
        first_new = next(n for n in now_events if n not in old)
        return Plan(FULL, f"new file {first_new} sorts before an already ingested file")
    added = now_events[len(old_events):]
    if not added:
        return Plan(INCREMENTAL, "no new raw files; the published outputs are current", [], old_events)
    return Plan(INCREMENTAL, f"{len(added)} new file(s) {added} after {len(old_events)} ingested", added, old_events)
