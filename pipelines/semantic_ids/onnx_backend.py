"""The optional ONNX Runtime backend for sentence embeddings (``pip install -e '.[onnx]'``).

sentence-transformers' own ``backend="onnx"`` needs optimum-onnx, which does not support
transformers 5 yet, so the model is exported here with ``torch.onnx.export``: the transformer,
mean pooling and L2 normalization as one graph, written once per model to
``<data root>/cache/onnx/<model digest>/model.onnx`` and reused. Before first use the exported graph
must agree with the torch model (cosine >= ``MIN_COSINE`` on probe texts); otherwise loading fails.
Only models whose pipeline is Transformer -> mean Pooling (-> Normalize) are supported.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

MIN_COSINE = 0.99
PROBE_TEXTS = ["red running shoes", "category comedy > funny animals", "item 12345",
               "brand 7 | seller 301", "a much longer description of a kitchen appliance with several words",
               "gaming > role playing > role playing walkthrough", "x", "beauty > makeup tutorial"]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxBackendError(RuntimeError):
    pass


def _require():
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime
    except ImportError as e:
        raise OnnxBackendError("the 'onnx' embedding backend needs onnxruntime and onnx: pip install -e '.[onnx]' "
                               "(or set stages.semantic_ids.embedding.backend: torch)") from e
    return onnxruntime


def _check_pipeline(st) -> None:
    names = [type(m).__name__ for m in st]
    pooling = st[1] if len(st) > 1 else None
    mean = getattr(pooling, "pooling_mode_mean_tokens", False) or getattr(pooling, "pooling_mode", None) == "mean"
    if names[:2] != ["Transformer", "Pooling"] or not mean or any(n not in ("Normalize",) for n in names[2:]):
        raise OnnxBackendError(f"the onnx backend supports Transformer -> mean Pooling (-> Normalize) models; this "
                               f"model is {' -> '.join(names)}: use backend 'torch'")


def export(st, directory: Path) -> Path:
    """Export ``st`` (a SentenceTransformer on CPU) to ``directory/model.onnx`` atomically; reuse if present."""
    import torch

    target = directory / "model.onnx"
    if target.is_file():
        return target
    _require()
    _check_pipeline(st)

    class Pooled(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)

    directory.mkdir(parents=True, exist_ok=True)
    example = st.tokenizer(["a", "b c"], padding=True, return_tensors="pt")
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Pooled(st[0].auto_model.eval()), tuple(example[n] for n in INPUTS), tmp,
                              input_names=list(INPUTS), output_names=["embedding"], opset_version=17, dynamo=False,
                              dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in INPUTS}, "embedding": {0: "batch"}})
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


class OnnxEncoder:
    """Tokenize with the model's own tokenizer, run the exported graph on ONNX Runtime (CPU)."""

    def __init__(self, st, path: Path, threads: int | None = None) -> None:
        ort = _require()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer, self.max_len = st.tokenizer, st.max_seq_length
        self.dimension = int(st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension")
                             else st.get_sentence_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for lo in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[lo:lo + batch_size], padding=True, truncation=True, max_length=self.max_len,
                                   return_tensors="np")
            out[lo:lo + batch_size] = self.session.run(None, {n: batch[n].astype(np.int64) for n in INPUTS})[0]
        return out


def load(st, model_key: str, cache_root: Path) -> tuple[OnnxEncoder, float]:
    """The ONNX encoder of ``st`` and its worst cosine against torch on the probe texts (checked >= MIN_COSINE)."""
    digest = hashlib.sha256(model_key.encode()).hexdigest()[:16]
    encoder = OnnxEncoder(st, export(st, cache_root / digest))
    reference = st.encode(PROBE_TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    cosine = float((encoder.encode(PROBE_TEXTS) * reference).sum(1).min())
    if cosine < MIN_COSINE:
        raise OnnxBackendError(f"the ONNX export disagrees with the torch model (min cosine {cosine:.4f} < {MIN_COSINE}); "
                               "use backend 'torch'")
    return encoder, cosine
