"""Semantic-ID quantizers on faiss-cpu: residual k-means, balanced hierarchical k-means, (O)PQ.

Each builder trains codebooks on the training items' vectors and returns them with those items'
codes; ``assign`` maps any vectors to codes with frozen codebooks (how new items get their SIDs on a
refresh). Codebooks are plain numpy arrays (saved as ``.npz``), so assignment never depends on a
pickled faiss object. Every k-means is seeded; faiss gives bit-identical centroids for one seed.

- ``residual_kmeans`` (RQ-KMeans; MiniOneRec / GRID 3×256, GAMER 4×256): k-means on the vectors,
  then on the residuals, level by level. Each k-means trains on at most ``points_per_code``·k points
  (default 256·k, sampled by faiss with the seed; 0 = all): explicit here, where faiss does it silently.
- ``balanced_kmeans`` (EAGER-style): at every level each node's points are split into ``codes``
  clusters of equal capacity ⌈n/codes⌉; with the dedup level as the position inside the last node,
  every training item gets a distinct ID and no code exceeds ``codes``.
- ``pq`` / ``opq`` (RPG-style long parallel IDs): ``subspaces`` codes of ``codes`` centroids each,
  optionally after an OPQ rotation (trained single-threaded: faiss' OPQ is not deterministic otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import faiss
import numpy as np


class QuantizerError(ValueError):
    pass


@dataclass
class Codebooks:
    method: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        """Number of codes each level can take."""
        return [int(s) for s in self.arrays["sizes"]]

    def to_npz(self) -> dict[str, np.ndarray]:
        return {"method": np.array(self.method), **self.arrays}

    @classmethod
    def from_npz(cls, data: dict[str, np.ndarray]) -> "Codebooks":
        return cls(str(data["method"]), {k: v for k, v in data.items() if k != "method"})


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


POINTS_PER_CODE = 256  # default cap on k-means training points per code (faiss' own default, made explicit)


def kmeans(x: np.ndarray, k: int, *, niter: int, seed: int, points_per_code: int = POINTS_PER_CODE) -> np.ndarray:
    """[k, d] centroids of faiss k-means. Trains on at most ``points_per_code * k`` rows of ``x``
    (faiss samples them with ``seed``); ``points_per_code = 0`` trains on every row."""
    n, d = x.shape
    if n < k:
        raise QuantizerError(f"k-means needs at least as many training vectors as codes: {n} < {k}; "
                             "lower stages.semantic_ids.codes (or use more training items)")
    cap = points_per_code if points_per_code > 0 else math.ceil(n / k) + 1
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, max_points_per_centroid=cap,
                      min_points_per_centroid=1, verbose=False)
    km.train(_f32(x))
    return km.centroids.copy()


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (L2) for each row; exact, via a flat index."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(_f32(centroids))
    _, idx = index.search(_f32(x), 1)
    return idx[:, 0].astype(np.int64)


# residual k-means ---------------------------------------------------------------------------------

def train_residual(x: np.ndarray, levels: int, codes: int, *, niter: int, seed: int,
                   points_per_code: int = POINTS_PER_CODE) -> Codebooks:
    residual = _f32(x).copy()
    books = []
    for level in range(levels):
        c = kmeans(residual, codes, niter=niter, seed=seed + level, points_per_code=points_per_code)
        residual -= c[nearest(residual, c)]
        books.append(c)
    return Codebooks("residual_kmeans", {"centroids": np.stack(books), "sizes": np.full(levels, codes)})


def assign_residual(cb: Codebooks, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centroids = cb.arrays["centroids"]
    residual = _f32(x).copy()
    codes = np.zeros((len(x), len(centroids)), dtype=np.int32)
    for level, c in enumerate(centroids):
        codes[:, level] = nearest(residual, c)
        residual -= c[codes[:, level]]
    return codes, _f32(x) - residual


# balanced hierarchical k-means ---------------------------------------------------------------------

def balanced_assign(dist: np.ndarray, capacity: int) -> np.ndarray:
    """Labels minimizing distance under "at most ``capacity`` points per cluster", greedily in rounds:
    every unassigned point proposes to its nearest open cluster, each cluster accepts its closest
    proposers up to its remaining capacity, full clusters close. At most k rounds, all vectorized."""
    n, k = dist.shape
    if capacity * k < n:
        raise QuantizerError(f"capacity {capacity} x {k} clusters cannot hold {n} points")
    labels = np.full(n, -1, dtype=np.int64)
    left = np.full(k, capacity, dtype=np.int64)
    work = dist.astype(np.float64, copy=True)
    while (todo := np.flatnonzero(labels < 0)).size:
        choice = work[todo].argmin(axis=1)
        d = work[todo, choice]
        order = np.lexsort((todo, d, choice))  # by cluster, then distance, then point id (deterministic)
        ch = choice[order]
        first = np.r_[0, np.flatnonzero(ch[1:] != ch[:-1]) + 1]
        rank = np.arange(len(ch)) - np.repeat(first, np.diff(np.r_[first, len(ch)]))
        ok = rank < left[ch]
        labels[todo[order[ok]]] = ch[ok]
        left -= np.bincount(ch[ok], minlength=k)
        work[:, left == 0] = np.inf
    return labels


def train_balanced(x: np.ndarray, levels: int, codes: int, *, niter: int, seed: int,
                   points_per_code: int = POINTS_PER_CODE) -> tuple[Codebooks, np.ndarray]:
    """Semantic levels of balanced k-means (the dedup level is the position in the last node).
    ``levels = 0`` picks ⌈log_codes n⌉ − 1 (at least 1), so the last nodes hold at most ``codes`` items."""
    x = _f32(x)
    n, d = x.shape
    if levels == 0:
        levels = max(1, math.ceil(math.log(max(n, 2), codes)) - 1)
    node = np.zeros(n, dtype=np.int64)  # node id at the current depth
    labels = np.zeros((n, levels), dtype=np.int32)
    books = []
    for level in range(levels):
        n_nodes = codes ** level
        cents = np.full((n_nodes, codes, d), np.inf, dtype=np.float32)
        for p in np.unique(node):  # a loop over tree nodes, not over items
            rows = np.flatnonzero(node == p)
            k = min(codes, len(rows))
            c = (kmeans(x[rows], k, niter=niter, seed=seed + level, points_per_code=points_per_code) if k > 1
                 else x[rows].mean(0, keepdims=True))
            dist = ((x[rows, None, :] - c[None]) ** 2).sum(-1)
            lab = balanced_assign(dist, math.ceil(len(rows) / k))
            means = np.stack([x[rows[lab == j]].mean(0) for j in range(k)])
            cents[p, :k] = means
            labels[rows, level] = lab
        books.append(cents)
        node = node * codes + labels[:, level]
    return Codebooks("balanced_kmeans", {f"level{i}": b for i, b in enumerate(books)} |
                     {"sizes": np.full(levels, codes)}), labels


def assign_balanced(cb: Codebooks, x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Descend the frozen tree: nearest centroid among the current node's children (no capacity)."""
    x = _f32(x)
    levels = len(cb.sizes)
    codes = np.zeros((len(x), levels), dtype=np.int32)
    recon = np.zeros_like(x)
    node = np.zeros(len(x), dtype=np.int64)
    for level in range(levels):
        cents = cb.arrays[f"level{level}"]
        for lo in range(0, len(x), chunk):
            sl = slice(lo, lo + chunk)
            c = cents[node[sl]]  # [b, K, d]
            dist = np.where(np.isfinite(c[..., 0]), ((x[sl, None, :] - np.nan_to_num(c, posinf=0)) ** 2).sum(-1), np.inf)
            codes[sl, level] = dist.argmin(1)
            if level == levels - 1:
                recon[sl] = c[np.arange(len(c)), codes[sl, level]]
        node = node * cents.shape[1] + codes[:, level]
    return codes, recon


# (optimized) product quantization ----------------------------------------------------------------

def train_pq(x: np.ndarray, subspaces: int, codes: int, *, niter: int, seed: int, rotate: bool,
             points_per_code: int = POINTS_PER_CODE) -> Codebooks:
    x = _f32(x)
    d = x.shape[1]
    if d % subspaces:
        raise QuantizerError(f"pq/opq: the vector dimension {d} is not divisible by subspaces={subspaces}")
    rotation = np.eye(d, dtype=np.float32)
    if rotate:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # OPQ training is not deterministic multithreaded
        try:
            opq = faiss.OPQMatrix(d, subspaces)
            opq.niter = niter
            opq.train(x)
            rotation = faiss.vector_to_array(opq.A).reshape(d, d).astype(np.float32)
        finally:
            faiss.omp_set_num_threads(threads)
    xr = _f32(x @ rotation.T)
    dsub = d // subspaces
    books = np.stack([kmeans(xr[:, m * dsub:(m + 1) * dsub], codes, niter=niter, seed=seed + m,
                             points_per_code=points_per_code)
                      for m in range(subspaces)])
    return Codebooks("opq" if rotate else "pq", {"centroids": books, "rotation": rotation,
                                                 "sizes": np.full(subspaces, codes)})


def assign_pq(cb: Codebooks, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    books, rotation = cb.arrays["centroids"], cb.arrays["rotation"]
    xr = _f32(_f32(x) @ rotation.T)
    dsub = books.shape[2]
    codes = np.zeros((len(x), len(books)), dtype=np.int32)
    recon = np.zeros_like(xr)
    for m, c in enumerate(books):
        sl = slice(m * dsub, (m + 1) * dsub)
        codes[:, m] = nearest(xr[:, sl], c)
        recon[:, sl] = c[codes[:, m]]
    return codes, _f32(recon @ rotation)  # rotation is orthonormal: back to the input space


# dispatch -------------------------------------------------------------------------------------------

def train(method: str, x: np.ndarray, *, levels: int, codes: int, subspaces: int, niter: int,
          seed: int, points_per_code: int = POINTS_PER_CODE) -> tuple[Codebooks, np.ndarray]:
    """Codebooks trained on ``x`` and the codes of ``x`` [n, levels]."""
    if len(x) == 0:
        raise QuantizerError("no training vectors: the training split has no items")
    if not np.isfinite(x).all():
        raise QuantizerError("training vectors contain NaN or inf")
    if method == "residual_kmeans":
        cb = train_residual(x, levels, codes, niter=niter, seed=seed, points_per_code=points_per_code)
        return cb, assign(cb, x)[0]
    if method == "balanced_kmeans":
        return train_balanced(x, levels, codes, niter=niter, seed=seed, points_per_code=points_per_code)
    if method in ("pq", "opq"):
        cb = train_pq(x, subspaces, codes, niter=niter, seed=seed, rotate=method == "opq", points_per_code=points_per_code)
        return cb, assign(cb, x)[0]
    raise QuantizerError(f"unknown method {method!r}")


def assign(cb: Codebooks, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes [n, levels] and reconstructions [n, d] of ``x`` under frozen codebooks."""
    if cb.method == "residual_kmeans":
        return assign_residual(cb, x)
    if cb.method == "balanced_kmeans":
        return assign_balanced(cb, x)
    return assign_pq(cb, x)


def decode(cb: Codebooks, codes: np.ndarray) -> np.ndarray:
    """Reconstructions [n, d] of semantic ``codes`` (the vector each SID stands for)."""
    if cb.method == "residual_kmeans":
        centroids = cb.arrays["centroids"]
        return _f32(sum(centroids[level][codes[:, level]] for level in range(len(centroids))))
    if cb.method == "balanced_kmeans":
        levels = len(cb.sizes)
        node = np.zeros(len(codes), dtype=np.int64)
        for level in range(levels - 1):
            node = node * cb.arrays[f"level{level}"].shape[1] + codes[:, level]
        return _f32(cb.arrays[f"level{levels - 1}"][node, codes[:, levels - 1]])
    books, rotation = cb.arrays["centroids"], cb.arrays["rotation"]
    parts = np.concatenate([books[m][codes[:, m]] for m in range(len(books))], axis=1)
    return _f32(parts @ rotation)
