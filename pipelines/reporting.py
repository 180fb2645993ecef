"""Small helpers that turn tables and counts into readable metadata (markdown)."""

from __future__ import annotations

import polars as pl


def markdown_table(df: pl.DataFrame, max_rows: int = 10) -> str:
    """A GitHub-style markdown table of the first ``max_rows`` rows."""
    head = df.head(max_rows)
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        lines.append("| " + " | ".join("" if v is None else str(v).replace("|", "\\|") for v in row) + " |")
    if df.height > max_rows:
        lines.append(f"\n_{max_rows} of {df.height:,} rows shown_")
    return "\n".join(lines)


def counts_table(counts: dict[str, int], key: str = "reason", value: str = "rows") -> str:
    if not counts:
        return "_none_"
    return markdown_table(pl.DataFrame({key: list(counts), value: list(counts.values())}), max_rows=50)
