"""Errors the ingest stage raises; every message says what failed, where, and what to do."""


class IngestError(RuntimeError):
    """A raw input problem the user must fix (missing/empty file, wrong header, too many bad rows)."""
