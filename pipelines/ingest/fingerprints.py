"""Fingerprints of raw files: what the raw-data sensor and incremental ingest compare.

A fingerprint is cheap to take on a 10 GB file (no full read): name, size, modification time and a
SHA-256 of the first and last 64 KiB. Two fingerprints of one name classify the change:

- ``new``: the name was not seen before;
- ``grown``: larger, with the same head (an append to the same file);
- ``replaced``: anything else that changed (another head, or the same size with other bytes);
- ``shrunk``: smaller than before (a replaced file, or truncation);
- ``removed``: the name is gone.

A touched file (new modification time, same size, head and tail) counts as unchanged: a copy that
preserves content must not trigger a refresh.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

EDGE_BYTES = 64 * 1024
CHANGE_KINDS = ("new", "grown", "replaced", "shrunk", "removed")


@dataclass(frozen=True)
class Fingerprint:
    name: str
    size: int
    mtime_ns: int
    head: str  # sha256 of the first EDGE_BYTES
    tail: str  # sha256 of the last EDGE_BYTES (the whole file when smaller)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "Fingerprint":
        return cls(**data)  # type: ignore[arg-type]

    def same_content(self, other: "Fingerprint") -> bool:
        return (self.size, self.head, self.tail) == (other.size, other.head, other.tail)


def fingerprint(path: Path, name: str | None = None) -> Fingerprint:
    """Fingerprint one file; ``name`` defaults to the file name (use a path relative to the raw folder)."""
    stat = path.stat()
    with path.open("rb") as f:
        head = f.read(EDGE_BYTES)
        if stat.st_size > EDGE_BYTES:
            f.seek(max(stat.st_size - EDGE_BYTES, 0))
            tail = f.read(EDGE_BYTES)
        else:
            tail = head
    return Fingerprint(name or path.name, stat.st_size, stat.st_mtime_ns, hashlib.sha256(head).hexdigest(),
                       hashlib.sha256(tail).hexdigest())


def fingerprint_dir(directory: Path) -> dict[str, Fingerprint]:
    """Every regular, non-hidden file under ``directory`` by relative path (sorted); {} when missing."""
    if not directory.is_dir():
        return {}
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = fingerprint(path, rel.as_posix())
    return out


def classify(old: Fingerprint | None, new: Fingerprint | None) -> str | None:
    """The kind of change from ``old`` to ``new`` (one of CHANGE_KINDS), or None when unchanged."""
    if old is None and new is None:
        return None
    if old is None:
        return "new"
    if new is None:
        return "removed"
    if new.same_content(old):
        return None
    if new.size < old.size:
        return "shrunk"
    # A file under EDGE_BYTES was hashed whole: its old bytes are not known, so an append to it
    # cannot be told from a rewrite and counts as replaced.
    if new.size > old.size and new.head == old.head and old.size >= EDGE_BYTES:
        return "grown"
    return "replaced"


def changes(old: dict[str, Fingerprint], new: dict[str, Fingerprint]) -> dict[str, str]:
    """``{name: kind}`` for every file that changed between two directory fingerprints (sorted by name)."""
    out = {}
    for name in sorted(set(old) | set(new)):
        kind = classify(old.get(name), new.get(name))
        if kind:
            out[name] = kind
    return out


def digest(prints: dict[str, Fingerprint]) -> str:
    """A short stable id of a directory's fingerprints (the sensor's run key)."""
    h = hashlib.sha256()
    for name in sorted(prints):
        p = prints[name]
        h.update(f"{name}\0{p.size}\0{p.head}\0{p.tail}\n".encode())
    return h.hexdigest()[:16]
