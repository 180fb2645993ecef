"""The dataset card: sections from the stages' files, plots embedded, latest checks listed."""

from __future__ import annotations

from conftest import materialize_project


def test_card_materializes_with_sections_plots_and_checks(tmp_path):
    """The project's own job, end to end, against a temporary data root."""
    card = materialize_project("tmall", tmp_path) / "card"
    md = (card / "dataset_card.md").read_text()
    for heading in ("## Overview", "## Behaviors, sets and sessions", "## Splits", "## Same-item leakage audit",
                    "## Behavior statistics", "## Semantic IDs", "## Leaderboard (test, full ranking)",
                    "## Checks (latest evaluation of each)", "## Provenance"):
        assert heading in md
    assert "day granularity" in md and "| canonical_events | ingest_consistency_check | passed |" in md
    assert "| semantic_ids | semantic_ids_contract | passed |" in md and "| evaluation | evaluation_contract | passed |" in md
    page = (card / "dataset_card.html").read_text()
    assert page.count("<img") >= 5 and page.count("data:image/png;base64,") >= 5
    assert (card / "figure_1.png").read_bytes()[:4] == b"\x89PNG"
