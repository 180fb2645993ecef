"""File-level orchestration of the semantic-ID stage (what the Dagster assets call; no Dagster here).

Writes, through ``pipelines.layout``: one text per item; the embedding cache (sha256(model, text)
-> vector; grows, never invalidated by a refresh); the vectors the quantizer sees; the semantic IDs
(item_id, raw_item_id, codes, dedup, sid, in_training) with their frozen codebooks, build record
and quality report, published together; the exported index and token vocabulary.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.registry import DatasetConfig
from pipelines.layout import SEMANTIC_ID_FILES
from pipelines.reporting import Log, markdown_table
from pipelines.semantic_ids import quantizers, quality
from pipelines.semantic_ids.collaborative import cooccurrence_pairs, svd_embeddings
from pipelines.semantic_ids.dedup import dedup_counter
from pipelines.semantic_ids.embeddings import embed_with_cache
from pipelines.semantic_ids.item_text import item_texts, order_variants
from pipelines.semantic_ids.options import SemanticIdOptions
from pipelines.semantic_ids.tokens import level_name, token
from pipelines.storage import (DatasetPaths, StagedOutputs, write_frame, write_npz_atomic, write_parquet_atomic,
                               write_text_atomic)
from schemas import columns as c

def stage_dir(paths: DatasetPaths) -> Path:
    return paths.semantic_ids_dir()


# item text -----------------------------------------------------------------------------------------

def materialize_item_text(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print) -> dict[str, object]:
    opts = SemanticIdOptions.of(cfg)
    side = pl.read_parquet(paths.item_side_info())
    texts = item_texts(side, opts.text_template, opts.text_unordered_columns).join(side.select(c.ITEM_ID, "raw_item_id"), on=c.ITEM_ID,
                                                      how="left", maintain_order="left")
    texts = texts.select(c.ITEM_ID, "raw_item_id", "text", "source")
    write_parquet_atomic(texts, paths.item_text())
    fallback = int((texts["source"] == "fallback").sum())
    variants = order_variants(texts["text"])
    log(f"{cfg.name}: {texts.height:,} item texts ({texts['text'].n_unique():,} distinct, {fallback:,} fallback, "
        f"{variants:,} equal to another up to the order of comma-separated parts)")
    return {"items": texts.height, "distinct_texts": texts["text"].n_unique(), "fallback_texts": fallback,
            "text_floor": 1 - texts["text"].n_unique() / texts.height if texts.height else 0.0,
            "order_variant_texts": variants,
            "template": opts.text_template, "examples": texts.head(5).rows()}


# embeddings ----------------------------------------------------------------------------------------

def training_steps(paths: DatasetPaths, protocol: str) -> pl.LazyFrame:
    """(user_id, step, item_id) of the protocol's training steps."""
    roles = pl.scan_parquet(paths.roles(protocol)).filter(pl.col("role") == "train")
    return pl.scan_parquet(paths.steps()).select(c.USER_ID, "step", c.ITEM_ID) \
        .join(roles.select(c.USER_ID, "step"), on=[c.USER_ID, "step"], how="semi")


def materialize_embeddings(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print) -> dict[str, object]:
    opts = SemanticIdOptions.of(cfg)
    texts = pl.read_parquet(paths.item_text())
    source = opts.source
    parts, meta = [], {"source": source}
    if "text" in source and (texts["source"] == "fallback").all():
        # every text is the placeholder "item <id>": embedding placeholders costs time and carries nothing
        source = "collaborative"
        meta |= {"source": source, "text_skipped": f"all {texts.height:,} item texts are the fallback 'item <raw id>' "
                                                   "(no side information): text embedding skipped, collaborative only"}
        log(f"{cfg.name}: {meta['text_skipped']}")
    if "text" in source:
        run = embed_with_cache(texts, opts.embedding.model, paths.embedding_cache(),
                               batch_size=opts.embedding.batch_size, device=opts.embedding.device,
                               backend=opts.embedding.backend, onnx_cache=paths.onnx_cache_dir(), log=log)
        parts.append(run.vectors)
        meta |= {"model": opts.embedding.model, "backend": opts.embedding.backend, "text_dims": run.vectors.shape[1], "embedded_now": run.embedded,
                 "from_cache": run.cached, "distinct_texts": run.unique_texts, "embedding_seconds": round(run.seconds, 2)}
    if "collaborative" in source:
        co = opts.collaborative
        pairs = cooccurrence_pairs(training_steps(paths, opts.train_protocol), co.window)
        vec = svd_embeddings(pairs, texts.height, co.dims, co.seed) * np.float32(co.weight)
        parts.append(vec)
        meta |= {"collaborative_dims": co.dims, "cooccurrence_pairs": pairs.height,
                 "items_without_cooccurrence": int((np.abs(vec).sum(1) == 0).sum())}
        log(f"{cfg.name}: collaborative SVD over {pairs.height:,} co-occurrence pairs -> {co.dims} dims")
    vectors = np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)
    frame = pl.DataFrame({c.ITEM_ID: texts[c.ITEM_ID],
                          "vector": pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, vectors.shape[1]))})
    write_parquet_atomic(frame, paths.item_embeddings())
    return meta | {"items": frame.height, "dims": vectors.shape[1]}


# semantic IDs --------------------------------------------------------------------------------------

def _build_key(opts: SemanticIdOptions, dims: int) -> str:
    blob = json.dumps(opts.build_key() | {"dims": dims}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _previous(paths: DatasetPaths) -> tuple[dict, quantizers.Codebooks, pl.DataFrame] | None:
    files = [paths.semantic_id_build(), paths.codebooks(), paths.semantic_ids()]
    if not all(f.is_file() for f in files):
        return None
    with np.load(files[1]) as data:
        cb = quantizers.Codebooks.from_npz({k: data[k] for k in data.files})
    return json.loads(files[0].read_text()), cb, pl.read_parquet(files[2])


def materialize_semantic_ids(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print, *,
                             full_rebuild: bool = False) -> dict[str, object]:
    """Train (or reuse) codebooks, assign every item, dedup, measure; publish the files together."""
    opts = SemanticIdOptions.of(cfg)
    start = time.perf_counter()
    emb = pl.read_parquet(paths.item_embeddings())
    texts = pl.read_parquet(paths.item_text(), columns=[c.ITEM_ID, "raw_item_id", "text"])
    items = emb.join(texts, on=c.ITEM_ID, how="left").sort(c.ITEM_ID)
    if items[c.ITEM_ID].is_duplicated().any():
        raise ValueError(f"{cfg.name}: item_embeddings has duplicate item ids")
    x = np.ascontiguousarray(items["vector"].to_numpy(), dtype=np.float32)
    raw = items["raw_item_id"].to_numpy()
    train_items = training_steps(paths, opts.train_protocol).select(c.ITEM_ID).unique().collect()[c.ITEM_ID].to_numpy()
    in_train = np.isin(items[c.ITEM_ID].to_numpy(), train_items)
    key = _build_key(opts, x.shape[1])
    prev = _previous(paths)
    mode, reason = "full", "first build"
    if prev is not None:
        if full_rebuild or opts.refresh == "full":
            reason = "full rebuild requested"
        elif prev[0].get("key") != key:
            reason = "the semantic-ID options or embedding dimensions changed"
        else:
            mode, reason = "incremental", "frozen codebooks reused"
    log(f"{cfg.name}: {mode} semantic-ID build ({reason}); {len(x):,} items, {int(in_train.sum()):,} in training")

    prev_codes = np.full((len(x), 0), -1)
    prev_dedup = np.full(len(x), -1, dtype=np.int64)
    if mode == "incremental":
        _, cb, old = prev
        known = pl.DataFrame({"raw_item_id": raw}).join(
            old.select("raw_item_id", "codes", "dedup"), on="raw_item_id", how="left", maintain_order="left")
        is_known = known["codes"].is_not_null().to_numpy()
        codes = np.zeros((len(x), len(cb.sizes)), dtype=np.int32)
        if is_known.any():
            codes[is_known] = np.stack(known["codes"].filter(pl.Series(is_known)).to_numpy())
            prev_dedup[is_known] = known["dedup"].filter(pl.Series(is_known)).to_numpy()
        if (~is_known).any():
            codes[~is_known] = quantizers.assign(cb, x[~is_known])[0]
        new_items = int((~is_known).sum())
    else:
        if not in_train.any():
            raise ValueError(f"{cfg.name}: no item appears in the '{opts.train_protocol}' training split")
        cb, train_codes = quantizers.train(opts.method, x[in_train], levels=opts.levels, codes=opts.codes,
                                           subspaces=opts.subspaces, niter=opts.niter, seed=opts.seed,
                                           points_per_code=opts.train_points_per_code)
        if in_train.all() or quantizers.builder(opts.method).assign_all is None:
            codes = quantizers.assign(cb, x)[0] if not in_train.all() else train_codes
            codes[in_train] = train_codes  # e.g. balanced k-means' capacity-constrained assignment
        else:  # a joint assignment (capacities) over every item, training or not
            codes = quantizers.assign_all(cb, x)
        new_items = len(x)
    dedup = dedup_counter(codes, raw, prev_dedup) if opts.dedup else np.zeros(len(x), dtype=np.int64)
    levels = len(cb.sizes)
    sizes = cb.sizes + ([int(dedup.max()) + 1] if opts.dedup else [])
    full = np.concatenate([codes, dedup[:, None]], axis=1) if opts.dedup else codes
    sid = pl.concat_str([pl.format(token(i, "{}"), pl.lit(full[:, i])) for i in range(full.shape[1])]) \
        if len(x) else pl.lit("")
    table = pl.DataFrame({c.ITEM_ID: items[c.ITEM_ID], "raw_item_id": raw,
                          "codes": pl.Series("codes", codes.astype(np.int32), dtype=pl.Array(pl.Int32, levels)),
                          "dedup": pl.Series(dedup.astype(np.int32)), "in_training": in_train}) \
        .with_columns(sid.alias("sid")).select(c.ITEM_ID, "raw_item_id", "codes", "dedup", "sid", "in_training")

    changed = 0
    if prev is not None and mode == "full":
        old = prev[2].select("raw_item_id", pl.col("sid").alias("old_sid"))
        changed = table.join(old, on="raw_item_id").filter(pl.col("sid") != pl.col("old_sid")).height
    removed = 0 if prev is None else prev[2].join(table, on="raw_item_id", how="anti").height
    recon = quantizers.decode(cb, codes)
    metrics = quality.report(x, codes, recon, cb.sizes, k=opts.coherence_neighbours, sample=opts.coherence_sample,
                             seed=opts.seed, texts=items["text"])
    refresh = {"mode": mode, "reason": reason, "kept": len(x) - new_items if mode == "incremental" else 0,
               "newly_assigned": new_items, "changed_vs_previous": changed, "removed_since_previous": removed}
    build = {"key": key, "method": cb.method, "options": opts.build_key(), "sizes": sizes, "levels": levels,
             "dedup": opts.dedup, "training_items": int(in_train.sum()), "items": len(x), "refresh": refresh}
    report = {"dataset": cfg.name, **build, "quality": metrics}
    files = SEMANTIC_ID_FILES
    with StagedOutputs(paths.semantic_ids_dir()) as staged:  # the files are data: no timings in them
        write_frame(table, staged.path(files["semantic_ids"]))
        write_npz_atomic(cb.to_npz(), staged.path(files["codebooks"]))
        staged.path(files["build"]).write_text(json.dumps(build, indent=2, default=str))
        staged.path(files["quality"]).write_text(json.dumps(report, indent=2, default=str))
        staged.path(files["report"]).write_text(quality_markdown(cfg.name, report))
        staged.publish()
    report["seconds"] = round(time.perf_counter() - start, 2)  # for the asset's metadata
    log(f"{cfg.name}: semantic IDs {'x'.join(map(str, sizes))}; collision rate before dedup "
        f"{metrics['collisions']['collision_rate']:.3%} (floor {metrics['floor']['floor']:.3%}: identical vectors); "
        f"{refresh}")
    return report


def quality_markdown(dataset: str, report: dict) -> str:
    q = report["quality"]
    col, rec, fl = q["collisions"], q["reconstruction"], q["floor"]
    lines = [f"# Semantic IDs: {dataset}", "",
             f"Method `{report['method']}`, codes per level {report['sizes']} "
             f"({'with' if report['dedup'] else 'without'} the dedup level); "
             f"{report['items']:,} items, codebooks trained on {report['training_items']:,} training items.", "",
             f"Refresh: {report['refresh']['mode']} ({report['refresh']['reason']}); "
             f"{report['refresh']['newly_assigned']:,} newly assigned, {report['refresh']['kept']:,} kept, "
             f"{report['refresh']['changed_vs_previous']:,} changed against the previous build.", "",
             "## Collisions (semantic levels, before dedup)", "",
             f"- collision rate {col['collision_rate']:.4f}; items in collided groups {col['collided_share']:.4f}; "
             f"largest group {col['largest_group']}",
             f"- floor {fl['floor']:.4f}: {fl['distinct_vectors']:,} distinct vectors for {report['items']:,} items "
             f"(items whose vector another item has too: {fl['items_sharing_vector']:.4f}); no assignment collides less",
             *([f"- text floor {fl['text_floor']:.4f}: {fl['distinct_texts']:,} distinct item texts (items whose text "
                f"another item has too: {fl['items_sharing_text']:.4f})"] if "text_floor" in fl else []),
             f"- **excess over the floor {col['excess_collision_rate']:.4f}** (the avoidable collisions)", "",
             "## Levels", "", markdown_table(pl.DataFrame(q["levels"]).drop("level").with_row_index("level")), "",
             "## Reconstruction", "",
             f"- MSE {rec['mse']:.5f}; relative MSE {rec['relative_mse']:.4f}; mean cosine {rec['mean_cosine']:.4f}", "",
             "## Semantic coherence (share of 10 nearest neighbours sharing the prefix)", ""]
    if q["coherence"]:
        lines.append(markdown_table(pl.DataFrame(q["coherence"])))
    return "\n".join(lines) + "\n"


# exports -------------------------------------------------------------------------------------------

def materialize_exports(cfg: DatasetConfig, paths: DatasetPaths, log: Log = print) -> dict[str, object]:
    """``<dataset>.index.json`` ({"<item_id>": ["<a_12>", ...]}, the GAMER / LC-Rec / MiniOneRec format)
    and ``sid_vocab.json`` (every token, level by level)."""
    table = pl.read_parquet(paths.semantic_ids())
    build = json.loads(paths.semantic_id_build().read_text())
    tokens = table.select(c.ITEM_ID, pl.col("sid").str.extract_all(r"<[^>]+>").alias("tokens"))
    index = dict(zip(tokens[c.ITEM_ID].cast(pl.String).to_list(), tokens["tokens"].to_list(), strict=True))
    vocab = [token(level, code) for level, size in enumerate(build["sizes"]) for code in range(size)]
    write_text_atomic(json.dumps(index), paths.sid_index())
    write_text_atomic(json.dumps({"levels": [level_name(i) for i in range(len(build["sizes"]))],
                                  "sizes": build["sizes"], "tokens": vocab}, indent=1), paths.sid_vocab())
    log(f"{cfg.name}: exported {len(index):,} SIDs and {len(vocab):,} tokens to {paths.sid_index().parent}")
    return {"items": len(index), "tokens": len(vocab), "index_json": str(paths.sid_index())}
