"""Small helpers that turn tables and counts into readable metadata (markdown)."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

Log = Callable[[str], None]  # where a stage reports progress: print, or an asset's context.log.info


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


def png_markdown(png: bytes, alt: str) -> str:
    """A PNG embedded in markdown (how Dagster metadata shows a plot)."""
    import base64

    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def audit_plot(table: pl.DataFrame, title: str) -> bytes:
    """Leak exposure and the recent-history recommender's HR@k against k, per split, before/after filtering."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = table["protocol"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, metric, label in ((axes[0], "share_in_last_k", "target item in last k history steps"),
                              (axes[1], "recent_hr", "HR@k of 'most recent history items'")):
        for i, protocol in enumerate(protocols):
            for filt, style in (("off", "--"), (None, "-")):
                part = table.filter((pl.col("protocol") == protocol) &
                                    ((pl.col("filter") == "off") if filt == "off" else (pl.col("filter") != "off")))
                if part.is_empty():
                    continue
                name = f"{protocol} ({'unfiltered' if filt == 'off' else 'filter ' + part['filter'][0]})"
                ax.plot(part["k"], part[metric], style, marker="o", color=f"C{i}", label=name)
        ax.set_xscale("log")
        ax.set_xticks([1, 5, 10, 20, 50], ["1", "5", "10", "20", "50"])
        ax.set_xlabel("k")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of evaluation targets")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def curve_plot(curve: list[dict], title: str) -> bytes:
    """Training loss and validation NDCG@10 per epoch (a trained model's asset metadata)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.plot(epochs, [r["loss"] for r in curve], marker="o")
    left.set_title("training loss", fontsize=10)
    right.plot(epochs, [r["valid_ndcg@10"] for r in curve], marker="o", color="C1")
    right.set_title("validation NDCG@10", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
