"""The dataset card: one readable report per dataset (markdown + self-contained HTML with plots).

Built from the files the stages wrote (no recomputation): ingest report and provenance, steps,
split summaries, leakage audit, behavior statistics, and the latest check evaluations handed in
by the asset. Written to data/outputs/<dataset>/card/dataset_card.{md,html}.
"""

from __future__ import annotations

import base64
import html
import io
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.registry import REPO_ROOT, DatasetConfig
from pipelines.reporting import markdown_table
from pipelines.augmentation.options import AugmentationOptions
from pipelines.sequences.splits import PROTOCOLS, default_protocol
from pipelines.storage import DatasetPaths, write_bytes_atomic, write_text_atomic
from schemas import columns as c


@dataclass
class Section:
    title: str
    parts: list[tuple[str, object]]  # ("p", text) | ("table", DataFrame) | ("img", png bytes)


def _bar(labels: list[str], values: list[float], title: str, xlabel: str = "", log: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
    ax.bar(range(len(values)), values, color="C0")
    ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels), default=0) > 6 else 0,
                  ha="right" if max(map(len, labels), default=0) > 6 else "center", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def sections(cfg: DatasetConfig, paths: DatasetPaths, checks: list[dict[str, object]]) -> list[Section]:
    report = json.loads(paths.ingest_report().read_text())
    source = json.loads(paths.source().read_text()) if paths.source().is_file() else {}
    out = [Section("Overview", [
        ("p", f"{cfg.description} Format `{cfg.format}`; behaviors (low to high): "
              f"{', '.join(f'{b.name} (level {b.level})' for b in cfg.behaviors)}; targets: {', '.join(cfg.targets)}."),
        ("table", pl.DataFrame({"": ["rows read", "kept", "quarantined", "duplicates dropped", "users", "items",
                                     "exposures"],
                                "count": [report["rows_read"], report["rows_kept"], report["rows_quarantined"],
                                          report["duplicates_dropped"], report["users"], report["items"],
                                          report["exposures"]]})),
        ("p", f"Time: {report['time_note']}."),
    ])]
    if report["quarantine_reasons"]:
        out[0].parts.append(("table", pl.DataFrame({"quarantine reason": list(report["quarantine_reasons"]),
                                                    "rows": list(report["quarantine_reasons"].values())})))
    if paths.steps().is_file():
        steps = pl.read_parquet(paths.steps(), columns=[c.USER_ID, c.BEHAVIORS, "session"])
        names = cfg.behavior_names
        per_behavior = [int(((steps[c.BEHAVIORS] & (1 << i)) != 0).sum()) for i in range(len(names))]
        size_counts = steps.select(pl.col(c.BEHAVIORS).bitwise_count_ones().alias("size")).group_by("size").len().sort("size")
        per_user = steps.group_by(c.USER_ID).agg(pl.len().alias("steps"), (pl.col("session").max() + 1).alias("sessions"))
        edges = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9]
        hist = np.histogram(per_user["steps"].to_numpy(), bins=edges)[0]
        out.append(Section("Behaviors, sets and sessions", [
            ("img", _bar(names, per_behavior, "steps holding each behavior", log=True)),
            ("img", _bar([str(s) for s in size_counts["size"].to_list()], size_counts["len"].to_list(),
                         "behavior-set size (behaviors per step)", "behaviors in the set", log=True)),
            ("img", _bar([f"{a}-{b - 1}" if b - 1 > a else str(a) for a, b in zip(edges[:-2], edges[1:-1])] + ["1000+"],
                         hist.tolist(), "sequence length (steps per user)", "steps", log=True)),
            ("p", f"{steps.height:,} steps over {per_user.height:,} users: mean {per_user['steps'].mean():.1f} steps "
                  f"and {per_user['sessions'].mean():.1f} sessions per user."),
        ]))
    split_rows = []
    for protocol in PROTOCOLS:
        f = paths.examples(protocol)
        if f.is_file():
            ex = pl.read_parquet(f, columns=["role"])
            split_rows.append({"protocol": protocol, "valid": int((ex["role"] == "valid").sum()),
                               "test": int((ex["role"] == "test").sum())})
    if split_rows:
        out.append(Section("Splits", [("table", pl.DataFrame(split_rows))]))
    audit = paths.leakage_audit()
    if audit.is_file():
        k10 = pl.read_parquet(audit).filter(pl.col("k") == 10).select(
            "protocol", "filter", "examples", "share_in_last_k", "recent_hr", "frequent_hr").with_columns(
            pl.col(pl.Float64).round(4))
        parts: list[tuple[str, object]] = [
            ("p", "Share of evaluation targets whose item is among the last 10 history steps, and HR@10 of two "
                  "recommenders that only exploit the history, before (`off`) and after the leakage filter."),
            ("table", k10)]
        png = paths.leakage_plot()
        if png.is_file():
            parts.append(("img", png.read_bytes()))
        out.append(Section("Same-item leakage audit", parts))
    protocol = default_protocol(cfg)
    stats = paths.statistics(protocol)
    if stats.is_file():
        doc = json.loads(stats.read_text())
        parts = [("table", pl.DataFrame({"behavior": doc["behaviors"], "m (training sets)": doc["m"],
                                         "mask_prob": doc["mask_prob"]}))]
        heat = paths.statistics_heatmap(protocol)
        if heat.is_file():
            parts.append(("img", heat.read_bytes()))
        out.append(Section(f"Behavior statistics ({protocol} training sets)", parts))
    sid = paths.semantic_id_quality()
    if sid.is_file():
        q = json.loads(sid.read_text())
        col = q["quality"]["collisions"]
        parts = [("p", f"Method `{q['method']}`, codes per level {q['sizes']}; {q['items']:,} items, codebooks trained on "
                       f"{q['training_items']:,} training items; refresh {q['refresh']['mode']} ({q['refresh']['reason']}). "
                       f"Collision rate before dedup {col['collision_rate']:.4f}"
                       + (f" (floor of identical vectors {col['floor']:.4f}, excess {col['excess_collision_rate']:.4f})"
                          if "floor" in col else "") + f", largest group {col['largest_group']}; "
                       f"relative reconstruction error {q['quality']['reconstruction']['relative_mse']:.4f}."),
                 ("table", pl.DataFrame(q["quality"]["levels"]).with_columns(pl.col(pl.Float64).round(4)))]
        if q["quality"]["coherence"]:
            parts.append(("table", pl.DataFrame(q["quality"]["coherence"]).with_columns(pl.col(pl.Float64).round(4))))
        out.append(Section("Semantic IDs", parts))
    results = paths.evaluation_results()
    if results.is_file():
        from pipelines.training.stage import leaderboard

        board = leaderboard(pl.read_parquet(results)).drop("dataset").with_columns(pl.col(pl.Float64).round(4))
        out.append(Section("Leaderboard (test, full ranking)", [
            ("p", "Ties count against the target; the `(unfiltered)` columns score the same targets with the "
                  "same-item leak left in the histories."), ("table", board)]))
    if checks:
        out.append(Section("Checks (latest evaluation of each)", [("table", pl.DataFrame(checks))]))
    from pipelines.refresh import read_failures, raw_newer_than_outputs

    failures = read_failures(paths)[-10:]
    stale = raw_newer_than_outputs(paths) if paths.raw_dir.is_dir() else []
    if failures or stale:
        parts: list[tuple[str, object]] = []
        if stale:
            parts.append(("p", "Raw files newer than the published ingest (a refresh is due): " + ", ".join(stale)))
        if failures:
            parts.append(("p", "Recent failed runs (newest last), as the run-failure sensor recorded them:"))
            parts.append(("table", pl.DataFrame({
                "recorded at": [f["recorded_at"] for f in failures], "run": [str(f["run_id"])[:8] for f in failures],
                "trigger": [f.get("trigger", "") for f in failures],
                "failed steps": [", ".join(s["step"] for s in f.get("failed_steps", [])) for f in failures],
                "error": [str(f.get("error", ""))[:160] for f in failures]})))
        out.append(Section("Refresh status", parts))
    out.append(Section("Provenance", [
        ("table", pl.DataFrame({"": ["source", "registry file", "code version", "synthetic seed",
                                     "augmentation seed"],
                                "value": [source.get("description", "unknown"), str(cfg_path(paths)),
                                          _code_version(), str(cfg.synthetic.seed),
                                          str(AugmentationOptions.of(cfg).seed)]})),
        ("table", pl.DataFrame({"raw file": list(source.get("files", {})),
                                "bytes": [v.get("bytes") for v in source.get("files", {}).values()],
                                "sha256": [v.get("sha256", "(not hashed: large file)")
                                           for v in source.get("files", {}).values()]},
                               schema={"raw file": pl.String, "bytes": pl.Int64, "sha256": pl.String})),
        ("p", "Registry entry: `" + json.dumps(cfg.model_dump(mode="json"), sort_keys=True) + "`"),
    ]))
    return out


def cfg_path(paths: DatasetPaths) -> Path:
    import os

    from pipelines.registry import DEFAULT_REGISTRY, REGISTRY_ENV

    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


def to_markdown(title: str, secs: list[Section], figure_path: Callable[[int], Path]) -> str:
    lines = [f"# {title}", ""]
    n = 0
    for s in secs:
        lines += [f"## {s.title}", ""]
        for kind, value in s.parts:
            if kind == "p":
                lines += [str(value), ""]
            elif kind == "table":
                lines += [markdown_table(value, max_rows=50), ""]
            else:
                n += 1
                figure = write_bytes_atomic(value, figure_path(n))
                lines += [f"![{s.title}]({figure.name})", ""]
    return "\n".join(lines)


def to_html(title: str, secs: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in secs:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        for kind, value in s.parts:
            if kind == "p":
                body.append(f"<p>{html.escape(str(value))}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(str(col))}</th>" for col in value.columns)
                rows = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r) + "</tr>"
                               for r in value.head(50).iter_rows())
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            else:
                body.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{base64.b64encode(value).decode()}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_card(cfg: DatasetConfig, paths: DatasetPaths, checks: list[dict[str, object]]) -> dict[str, Path]:
    out = paths.card_dir()
    out.mkdir(parents=True, exist_ok=True)
    secs = sections(cfg, paths, checks)
    title = f"Dataset card: {cfg.name}"
    md = write_text_atomic(to_markdown(title, secs, paths.card_figure), paths.card("md"))
    page = write_text_atomic(to_html(title, secs), paths.card("html"))
    return {"markdown": md, "html": page}
