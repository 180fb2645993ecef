"""Benchmark: semantic IDs at 1M items, every builder side by side, embedding throughput, refresh cost.

    python bench/semantic_ids.py                       # all four parts
    python bench/semantic_ids.py --only quantize --builders residual_unique,residual_kmeans
    python bench/semantic_ids.py --only catalogue --catalogue-items 100000

1. Quantize: 1M x 384-d vectors (seeded: a sum of topic, subtopic and item-level Gaussian centers
   plus noise, on the unit sphere; 5% of the items repeat one of 2,000 chain heads' vectors, 2% are
   near-copies of another item) -> each builder 3x256 (pq/opq: 16 subspaces) + dedup + every quality
   metric, one process per builder. Collision rate, floor, excess, per-level perplexity, depth-1
   coherence, build (train + assign) time, whole-process wall time and peak RSS from /usr/bin/time -v
   (target for the default: <= 60 s on 2 cores).
2. Catalogue: a generated item catalogue (category and brand texts, with repost chains of identical
   texts and category parts listed in either order), embedded with MiniLM (onnx backend; distinct texts
   once, through the embedding cache under --work, so a rerun embeds nothing), then every builder on
   the same vectors: the same figures.
3. Embedding throughput (texts/s) of each backend on the same 2,000 item texts, side by side in
   one process, with the ONNX / torch ratio and their worst cosine agreement.
4. Refresh: the real stage functions (item text -> embeddings -> semantic IDs) on a generated
   catalogue, then again after adding 1% new items; the refresh's cost as a share of the full run
   (target: <= 5%).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOPICS = ["kitchen", "garden", "gaming", "beauty", "sports", "travel", "books", "music", "pets", "toys",
          "fashion", "phones", "cameras", "health", "office", "tools"]
WORDS = ["compact", "wireless", "organic", "vintage", "premium", "portable", "classic", "smart", "handmade",
         "durable", "lightweight", "deluxe", "mini", "family", "outdoor", "studio"]


def timed_json(cmd: list[str]) -> tuple[dict, float, float]:
    """Run ``cmd`` under /usr/bin/time -v; its last stdout line is JSON. Returns (json, wall s, peak RSS GB)."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"benchmark step failed: {' '.join(cmd)}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for k in ("User", "System"))
    load = os.getloadavg()[0]
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"cpu_s": cpu, "load": load}, wall, rss_kb / 1024**2


# balanced_kmeans is left out: at 3 fixed levels x 256 it allocates 256^2 x 256 x d centroids (24 GB at d = 384)
BUILDERS = "residual_unique,residual_kmeans,pq,opq"


def bench_vectors(n: int):
    import numpy as np

    # coarse-to-fine structure, like text embeddings (topic, subtopic, item), plus noise
    rng = np.random.default_rng(0)
    x = np.zeros((n, 384), dtype=np.float32)
    for scale, k in ((1.0, 256), (0.6, 4096), (0.35, 4096)):
        centers = rng.standard_normal((k, 384), dtype=np.float32)
        x += scale * centers[rng.integers(0, k, n)]
    x += 0.15 * rng.standard_normal((n, 384), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # identical-text chains (5% of the items repeat one of 2,000 heads, zipf chain sizes) and near-copies (2%)
    rng = np.random.default_rng(1)
    perm = rng.permutation(n)
    heads, n_copy, n_near = perm[:2000], n // 20, n // 50
    copies, near = perm[2000:2000 + n_copy], perm[2000 + n_copy:2000 + n_copy + n_near]
    x[copies] = x[heads[np.minimum(rng.zipf(1.5, n_copy) - 1, len(heads) - 1)]]
    x[near] = x[rng.integers(0, n, n_near)] + 1e-3 * rng.standard_normal((n_near, 384), dtype=np.float32)
    return np.ascontiguousarray(x)


def build_figures(x, method: str) -> dict:
    """Train ``method`` 3x256 on ``x``, dedup, every quality metric; the figures and phase times."""
    import numpy as np

    from pipelines.semantic_ids import quality, quantizers
    from pipelines.semantic_ids.dedup import dedup_counter

    phases = {}
    t = time.perf_counter()
    cb, codes = quantizers.train(method, x, levels=3, codes=256, subspaces=16, niter=25, seed=0)
    phases["train+assign"] = time.perf_counter() - t
    t = time.perf_counter()
    dedup = dedup_counter(codes, np.arange(len(x)))
    phases["dedup"] = time.perf_counter() - t
    t = time.perf_counter()
    report = quality.report(x, codes, quantizers.decode(cb, codes), cb.sizes)
    phases["metrics"] = time.perf_counter() - t
    col = report["collisions"]
    return {"method": method, "phases": phases, "collision_rate": col["collision_rate"], "floor": col["floor"],
            "excess": col["excess_collision_rate"], "largest_group": col["largest_group"], "dedup_max": int(dedup.max()),
            "utilization": [lv["utilization"] for lv in report["levels"]],
            "perplexity": [lv["perplexity"] for lv in report["levels"]],
            "relative_mse": report["reconstruction"]["relative_mse"],
            "coherence_depth1": report["coherence"][0]["share"], "coherence_depth1_ratio": report["coherence"][0]["ratio"]}


def run_quantize(n: int, method: str) -> None:
    import faiss

    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    x = bench_vectors(n)
    generate = time.perf_counter() - t
    print(json.dumps(build_figures(x, method) | {"generate": generate}))


def figure_line(r: dict) -> str:
    return (f"   {r['method']:<16} collisions {r['collision_rate']:.4f} (floor {r['floor']:.4f}, excess {r['excess']:+.4f}), "
            f"largest group {r['largest_group']}, perplexity {[round(v) for v in r['perplexity']]}, depth-1 coherence "
            f"{r['coherence_depth1']:.3f} ({r['coherence_depth1_ratio']:.0f}x random), relative MSE {r['relative_mse']:.3f}, "
            f"build {r['phases']['train+assign']:.1f} s")


def item_texts(n: int, seed: int, chains: bool = False):
    """Generated item side info; ``chains``: 5% of the items repeat one of n/100 heads' side info (identical
    texts, zipf chain sizes) and category paths list their last parts in either order ("compact, kitchen" /
    "kitchen, compact")."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    topic = rng.integers(0, len(TOPICS), n)
    sub = rng.integers(0, len(WORDS), n)
    if chains:
        flip = rng.random(n) < 0.5
        brand = rng.integers(0, 5000, n)
        heads = rng.choice(n, max(1, n // 100), replace=False)
        copies = rng.choice(n, n // 20, replace=False)
        src = np.arange(n)
        src[copies] = heads[np.minimum(rng.zipf(1.5, len(copies)) - 1, len(heads) - 1)]
        topic, sub, flip, brand = topic[src], sub[src], flip[src], brand[src]
        return pl.DataFrame({
            "item_id": pl.Series(np.arange(n), dtype=pl.UInt32), "raw_item_id": pl.Series(np.arange(n) * 7 + 3, dtype=pl.Int64),
            "category_id": [str(1000 + t * 16 + s) for t, s in zip(topic, sub, strict=True)],
            "category_path": [f"{TOPICS[t]} > {TOPICS[t]}, {WORDS[s]}" if f else f"{TOPICS[t]} > {WORDS[s]}, {TOPICS[t]}"
                              for t, s, f in zip(topic, sub, flip, strict=True)],
            "brand_id": [str(b) for b in brand], "seller_id": [None] * n,
            "caption_tokens": [None] * n}, schema_overrides={"seller_id": pl.String, "caption_tokens": pl.String})
    return pl.DataFrame({
        "item_id": pl.Series(np.arange(n), dtype=pl.UInt32), "raw_item_id": pl.Series(np.arange(n) * 7 + 3, dtype=pl.Int64),
        "category_id": [str(1000 + t * 16 + s) for t, s in zip(topic, sub, strict=True)],
        "category_path": [f"{TOPICS[t]} > {WORDS[s]} {TOPICS[t]}" for t, s in zip(topic, sub, strict=True)],
        "brand_id": [str(b) for b in rng.integers(0, 5000, n)], "seller_id": [None] * n,
        "caption_tokens": [None] * n}, schema_overrides={"seller_id": pl.String, "caption_tokens": pl.String})


def write_dataset(root: Path, side) -> None:
    """The files the semantic-ID stage reads: item side info, and one training step per item."""
    import numpy as np
    import polars as pl

    from pipelines.storage import DatasetPaths

    paths = DatasetPaths(root, "kuaisar")
    (paths.stage_dir("ingest")).mkdir(parents=True, exist_ok=True)
    side.write_parquet(paths.stage_dir("ingest") / "item_side_info.parquet")
    n = side.height
    users = pl.Series(np.arange(n) // 20, dtype=pl.UInt32)
    steps = pl.DataFrame({"user_id": users, "step": pl.Series(np.arange(n) % 20, dtype=pl.UInt32),
                          "item_id": side["item_id"]})
    (paths.stage_dir("sequences")).mkdir(parents=True, exist_ok=True)
    steps.write_parquet(paths.stage_dir("sequences") / "steps.parquet")
    roles = paths.stage_dir("splits") / "leave_one_out"
    roles.mkdir(parents=True, exist_ok=True)
    steps.select("user_id", "step", pl.lit("train").alias("role")).write_parquet(roles / "roles.parquet")


def run_stage(root: str) -> None:
    from pipelines.registry import load_registry
    from pipelines.semantic_ids.stage import materialize_embeddings, materialize_item_text, materialize_semantic_ids
    from pipelines.storage import DatasetPaths

    cfg = load_registry().get("kuaisar")
    paths = DatasetPaths(Path(root), "kuaisar")
    t = time.perf_counter()
    materialize_item_text(cfg, paths, log=lambda m: None)
    emb = materialize_embeddings(cfg, paths, log=lambda m: None)
    sid = materialize_semantic_ids(cfg, paths, log=lambda m: None)
    print(json.dumps({"seconds": time.perf_counter() - t, "embedded_now": emb["embedded_now"],
                      "embedding_seconds": emb["embedding_seconds"], "sid_seconds": sid["seconds"],
                      "refresh": sid["refresh"]}))


def run_catalogue(n: int, work: str, method: str) -> None:
    """Embed the generated catalogue's texts (cached under ``work``) and build ``method`` on them."""
    import faiss
    import polars as pl

    from pipelines.semantic_ids.embeddings import embed_with_cache
    from pipelines.semantic_ids.item_text import item_texts as fill_template
    from pipelines.semantic_ids.item_text import order_variants
    from pipelines.semantic_ids.options import DEFAULT_TEXT_TEMPLATE

    faiss.omp_set_num_threads(2)
    side = item_texts(n, 3, chains=True)
    texts = fill_template(side, DEFAULT_TEXT_TEMPLATE)
    t = time.perf_counter()
    run = embed_with_cache(texts, "all-MiniLM-L6-v2", Path(work) / "catalogue_embedding_cache.parquet",
                           backend="onnx", device="cpu", onnx_cache=Path(work) / "onnx", log=lambda m: None)
    embed_s = time.perf_counter() - t
    print(json.dumps(build_figures(run.vectors, method) | {
        "items": n, "distinct_texts": texts["text"].n_unique(), "order_variants": order_variants(texts["text"]),
        "embedded_now": run.embedded, "embedding_seconds": embed_s, "text_floor": 1 - texts["text"].n_unique() / n,
        "example": pl.Series(texts["text"]).head(2).to_list()}))


def run_throughput(n: int) -> None:
    import numpy as np
    import polars as pl

    from pipelines.semantic_ids.embeddings import encode, load_encoder

    texts = item_texts(n, 1).select(pl.format("{} | brand {}", "category_path", "brand_id"))
    texts = texts.to_series().to_list()
    out: dict[str, object] = {}
    vectors = {}
    for backend in ("torch", "onnx"):
        try:
            encoder = load_encoder("all-MiniLM-L6-v2", backend, "cpu", REPO / "bench" / "work" / "onnx")
        except Exception as e:  # the onnx extra may be missing
            out[backend] = f"unavailable: {e}"
            continue
        encode(texts[:256], encoder, log=lambda m: None)  # warm-up
        t = time.perf_counter()
        vectors[backend] = encode(texts, encoder, log=lambda m: None)
        out[backend] = len(texts) / (time.perf_counter() - t)
    if len(vectors) == 2:
        cos = (vectors["torch"] * vectors["onnx"]).sum(1)
        out["min_cosine"], out["mean_cosine"] = float(cos.min()), float(np.mean(cos))
    print(json.dumps(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=float, default=1e6)
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--refresh-items", type=int, default=100000)
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "semantic_ids")
    p.add_argument("--catalogue-items", type=int, default=100000)
    p.add_argument("--builders", default=BUILDERS, help="comma-separated builders for parts 1 and 2")
    p.add_argument("--only", choices=["quantize", "catalogue", "throughput", "refresh"], help="run one part")
    p.add_argument("--run", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        {"quantize": lambda: run_quantize(int(float(a.run[1])), a.run[2]), "stage": lambda: run_stage(a.run[1]),
         "catalogue": lambda: run_catalogue(int(a.run[1]), a.run[2], a.run[3]),
         "throughput": lambda: run_throughput(int(a.run[1]))}[a.run[0]]()
        return 0
    me = [sys.executable, __file__, "--run"]
    builders = a.builders.split(",")

    if a.only in (None, "quantize"):
        quantize_part(me, int(a.items), builders)
    if a.only in (None, "catalogue"):
        catalogue_part(me, a.catalogue_items, a.work.parent / "catalogue", builders)
    if a.only in (None, "throughput"):
        throughput_part(me, a.texts)
    if a.only in (None, "refresh"):
        refresh_part(me, a.work, a.refresh_items)
    return 0


def quantize_part(me: list[str], n: int, builders: list[str]) -> None:
    print(f"1. {n:,} x 384 vectors (chains of identical vectors and near-copies) -> builder 3x256 + dedup + metrics, "
          "one process each (target for the default: <= 60 s)", flush=True)
    for method in builders:
        r, wall, rss = timed_json([*me, "quantize", str(n), method])
        print(figure_line(r))
        print(f"   {'':<16} {wall - r['generate']:.1f} s wall without generating the vectors ({r['generate']:.1f} s), "
              f"{r['cpu_s']:.0f} CPU s in all, {rss:.2f} GB peak RSS, load average {r['load']:.1f} at the end; phases "
              + ", ".join(f"{k} {v:.1f} s" for k, v in r["phases"].items()), flush=True)


def catalogue_part(me: list[str], n: int, work: Path, builders: list[str]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for i, method in enumerate(builders):
        r, _, _ = timed_json([*me, "catalogue", str(n), str(work), method])
        if i == 0:
            print(f"2. generated catalogue of {n:,} items: {r['distinct_texts']:,} distinct texts (text floor "
                  f"{r['text_floor']:.4f}), {r['order_variants']:,} equal to another up to part order; "
                  f"{r['embedded_now']:,} texts embedded now (onnx, {r['embedding_seconds']:.1f} s); e.g. {r['example'][0]!r}")
        print(figure_line(r), flush=True)


def throughput_part(me: list[str], texts: int) -> None:
    r, _, _ = timed_json([*me, "throughput", str(texts)])
    line = ", ".join(f"{b} {v:,.0f} texts/s" if isinstance(v, float) else f"{b} {v}"
                     for b, v in r.items() if b in ("torch", "onnx"))
    print(f"3. embedding throughput on {texts:,} item texts (2 cores): {line}")
    if isinstance(r.get("onnx"), float) and isinstance(r.get("torch"), float):
        print(f"   ratio onnx/torch {r['onnx'] / r['torch']:.2f}x; cosine onnx vs torch: min {r['min_cosine']:.5f}, "
              f"mean {r['mean_cosine']:.5f}", flush=True)


def refresh_part(me: list[str], work: Path, m: int) -> None:
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    side = item_texts(m + m // 100, 2)
    write_dataset(work, side.head(m))
    full, _, _ = timed_json([*me, "stage", str(work)])
    write_dataset(work, side)  # 1% new items (the cache and the previous build stay)
    refresh, _, _ = timed_json([*me, "stage", str(work)])
    print(f"4. full build of {m:,} items: {full['seconds']:.1f} s ({full['embedded_now']:,} texts embedded); "
          f"refresh with {m // 100:,} new items: {refresh['seconds']:.1f} s ({refresh['embedded_now']:,} embedded, "
          f"mode {refresh['refresh']['mode']}, {refresh['refresh']['kept']:,} SIDs kept) = "
          f"{100 * refresh['seconds'] / full['seconds']:.1f}% of the full run (target: <= 5%)")
    print(f"   embedding {full['embedding_seconds']:.1f} s vs {refresh['embedding_seconds']:.1f} s (the refresh's includes "
          f"loading the model); semantic IDs {full['sid_seconds']:.1f} s vs {refresh['sid_seconds']:.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
