"""Quality metrics of a semantic-ID assignment (N items, L levels, K_l codes at level l).

All entropies are in nats. Formulas (n_k = items with code k at a level, p_k = n_k / N):
- collision rate = 1 − (distinct tuples) / N, over the semantic levels (before the dedup level);
  collided share = items in a tuple shared with another item / N; largest group = max items per tuple;
- floor = 1 − (distinct vectors) / N: items whose vector equals another's (bit for bit) must share a
  tuple, so no builder collides less; excess = collision rate − floor (the avoidable part). With item
  texts, the text floor 1 − (distinct texts) / N and the share of items whose text another item
  has too are reported beside it (the vector floor is lower when collaborative vectors tell
  identical texts apart);
- utilization_l = (codes used) / K_l; entropy H_l = −Σ p_k ln p_k; perplexity = e^{H_l};
  normalized entropy = H_l / ln K_l; balance_l = K_l · Σ n_k² / N² (1 = perfectly even, K_l = one code);
- conditional entropy H(c_l | c_<l) = H(c_1..c_l) − H(c_1..c_{l−1}) (how much a level adds);
- reconstruction: MSE = mean ‖x − x̂‖², relative MSE = Σ‖x − x̂‖² / Σ‖x‖², mean cosine(x, x̂);
- semantic coherence at depth l: over sampled items and their k nearest neighbours (cosine, self
  excluded), the share of neighbours sharing the item's first l codes; its random baseline is the
  chance a random item shares the prefix, Σ_prefix (n_prefix / N)².
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import polars as pl


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _tuple_ids(codes: np.ndarray) -> np.ndarray:
    """Dense id of each row's tuple (rows with equal tuples get equal ids)."""
    if codes.shape[1] == 0:
        return np.zeros(len(codes), dtype=np.int64)
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def collisions(codes: np.ndarray) -> dict[str, float]:
    n = len(codes)
    sizes = np.bincount(_tuple_ids(codes))
    return {"items": n, "distinct_tuples": int((sizes > 0).sum()),
            "collision_rate": float(1 - (sizes > 0).sum() / n) if n else 0.0,
            "collided_share": float(sizes[sizes > 1].sum() / n) if n else 0.0,
            "largest_group": int(sizes.max()) if n else 0}


def floor(x: np.ndarray, texts: Sequence[str] | None = None) -> dict[str, float]:
    """The collision floor of ``x`` [N, d] (and of the item ``texts``, when given)."""
    from pipelines.semantic_ids.quantizers import distinct_rows

    n = len(x)
    _, inverse = distinct_rows(x) if n else (None, np.zeros(0, dtype=np.int64))
    sizes = np.bincount(inverse) if n else np.zeros(0, dtype=np.int64)
    out = {"distinct_vectors": int((sizes > 0).sum()),
           "floor": float(1 - (sizes > 0).sum() / n) if n else 0.0,
           "items_sharing_vector": float(sizes[sizes > 1].sum() / n) if n else 0.0}
    if texts is not None:
        counts = pl.Series("t", list(texts) if not isinstance(texts, pl.Series) else texts).value_counts()["count"]
        out |= {"distinct_texts": counts.len(), "text_floor": float(1 - counts.len() / n) if n else 0.0,
                "items_sharing_text": float(counts.filter(counts > 1).sum() / n) if n else 0.0}
    return out


def level_metrics(codes: np.ndarray, sizes: list[int]) -> list[dict[str, float]]:
    out = []
    n = len(codes)
    prev_h = 0.0
    for level, k in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=k).astype(np.float64)
        h = _entropy(counts)
        joint_h = _entropy(np.bincount(_tuple_ids(codes[:, :level + 1])).astype(np.float64))
        out.append({"level": level, "codes": k, "used": int((counts > 0).sum()),
                    "utilization": float((counts > 0).sum() / k), "entropy": h, "perplexity": float(np.exp(h)),
                    "normalized_entropy": float(h / np.log(k)) if k > 1 else 1.0,
                    "conditional_entropy": joint_h - prev_h,
                    "balance": float(k * (counts ** 2).sum() / n ** 2) if n else 0.0})
        prev_h = joint_h
    return out


def reconstruction(x: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    err = ((x - recon) ** 2).sum(1)
    denom = np.linalg.norm(x, axis=1) * np.linalg.norm(recon, axis=1)
    cos = np.where(denom > 0, (x * recon).sum(1) / np.where(denom > 0, denom, 1), 0.0)
    return {"mse": float(err.mean()), "relative_mse": float(err.sum() / max((x ** 2).sum(), 1e-30)),
            "mean_cosine": float(cos.mean())}


def neighbours(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """[len(queries), k] indices of each query row's k nearest rows of ``x`` by cosine, itself excluded."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    xn = np.ascontiguousarray(x / np.where(norm > 0, norm, 1), dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(xn)
    k_eff = min(k + 1, len(x))
    _, idx = index.search(xn[queries], k_eff)
    # drop the query itself wherever it appears (ties may put it anywhere); keep the first k others
    not_self = idx != queries[:, None]
    order = np.argsort(~not_self, axis=1, kind="stable")[:, :k_eff - 1]
    return np.take_along_axis(idx, order, axis=1)


def coherence(x: np.ndarray, codes: np.ndarray, *, k: int = 10, sample: int = 2000, seed: int = 0) -> list[dict[str, float]]:
    """Per depth: share of neighbours sharing the prefix, the random baseline and their ratio."""
    n, levels = codes.shape
    if n < 2:
        return []
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    nb = neighbours(x, queries, min(k, n - 1))
    out = []
    for depth in range(1, levels + 1):
        prefix = _tuple_ids(codes[:, :depth])
        share = float((prefix[nb] == prefix[queries, None]).mean())
        sizes = np.bincount(prefix).astype(np.float64)
        baseline = float(((sizes / n) ** 2).sum())
        out.append({"depth": depth, "share": share, "random_baseline": baseline,
                    "ratio": share / baseline if baseline > 0 else float("inf"), "sampled_items": len(queries)})
    return out


def report(x: np.ndarray, codes: np.ndarray, recon: np.ndarray, sizes: list[int], *, k: int = 10,
           sample: int = 2000, seed: int = 0, texts: Sequence[str] | None = None) -> dict[str, object]:
    """Every metric above for semantic ``codes`` [N, L] (without the dedup level)."""
    fl = floor(x, texts)
    col = collisions(codes)
    col |= {"floor": fl["floor"], "excess_collision_rate": col["collision_rate"] - fl["floor"]}
    return {"collisions": col, "floor": fl, "levels": level_metrics(codes, sizes),
            "reconstruction": reconstruction(x, recon),
            "coherence": coherence(x, codes, k=k, sample=sample, seed=seed)}


def levels_frame(levels: list[dict[str, float]]) -> pl.DataFrame:
    return pl.DataFrame(levels)
