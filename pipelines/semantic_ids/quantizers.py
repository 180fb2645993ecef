"""Semantic-ID quantizers on faiss-cpu: unique residual k-means (default), residual k-means,
balanced hierarchical k-means, (O)PQ.

Each builder trains codebooks on the training items' vectors and returns them with those items'
codes; ``assign`` maps any vectors to codes with frozen codebooks (how new items get their SIDs on a
refresh). Codebooks are plain numpy arrays (saved as ``.npz``), so assignment never depends on a
pickled faiss object. Every k-means is seeded; faiss gives bit-identical centroids for one seed.

- ``residual_kmeans`` (RQ-KMeans; MiniOneRec / GRID 3×256, GAMER 4×256): k-means on the vectors,
  then on the residuals, level by level. Each k-means trains on at most ``points_per_code``·k points
  (default 256·k, sampled by faiss with the seed; 0 = all): explicit here, where faiss does it silently.
- ``residual_unique`` (the default): residual k-means whose deeper levels are assigned under
  capacities, so that tuples only collide where vectors are identical. Level 1 is plain k-means
  (nearest centroid, the same codes as ``residual_kmeans``: the coarse level keeps its coherence).
  Every deeper level trains one k-means on the residuals and fits a price per code (so that the
  nearest *priced* code is used about evenly), then assigns the distinct vectors of each prefix group
  with capacities: a code takes at most max(⌈m/codes⌉, codes^(levels below)) of a group's m vectors
  and at most 1.25× an even share of the level overall (so every deeper level's perplexity is at
  least codes / 1.25). On the last level the group capacity is 1 while a group has at most ``codes``
  distinct vectors, so items share a tuple only where their vectors are equal (or where a prefix
  group outgrows ``codes``: the level above caps groups at that size, so this needs a first-level
  cluster of more than codes² distinct vectors). New items on a refresh take the nearest priced code
  per level (frozen centroids and prices, saved in the codebooks file).
- ``balanced_kmeans`` (EAGER-style): at every level each node's points are split into ``codes``
  clusters of equal capacity ⌈n/codes⌉; with the dedup level as the position inside the last node,
  every training item gets a distinct ID and no code exceeds ``codes``.
- ``pq`` / ``opq`` (RPG-style long parallel IDs): ``subspaces`` codes of ``codes`` centroids each,
  optionally after an OPQ rotation (trained single-threaded: faiss' OPQ is not deterministic otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


# unique residual k-means ---------------------------------------------------------------------------

def _row_hash(bits: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit hash per row of a uint32 matrix (wrapping uint64 arithmetic), in chunks."""
    mult = np.random.default_rng(seed).integers(1, 2**63, size=bits.shape[1], dtype=np.uint64) | np.uint64(1)
    h = np.zeros(len(bits), dtype=np.uint64)
    for lo in range(0, len(bits), CHUNK_ROWS):
        b = bits[lo:lo + CHUNK_ROWS].astype(np.uint64)
        b *= mult
        b ^= b >> np.uint64(29)
        h[lo:lo + CHUNK_ROWS] = b.sum(axis=1, dtype=np.uint64)
    return h


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct row's first occurrence [u], distinct-row id of every row [n]); rows are
    compared bit for bit. Rows are grouped by a hash of their first 8 values (then of all values, then
    by sorting their bytes, each only if the previous one put unequal rows together). Deterministic."""
    x = _f32(x)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bits = x.view(np.uint32)
    for key in (lambda: _row_hash(np.ascontiguousarray(bits[:, :8]), 1), lambda: _row_hash(bits, 2)):
        _, first, inverse = np.unique(key(), return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int64)
        if all(np.array_equal(bits[lo:lo + CHUNK_ROWS], bits[first[inverse[lo:lo + CHUNK_ROWS]]])
               for lo in range(0, n, CHUNK_ROWS)):
            return first.astype(np.int64), inverse
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return first.astype(np.int64), inverse.reshape(-1).astype(np.int64)


def sq_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[n, k] squared L2 distances (float32)."""
    x, centroids = _f32(x), _f32(centroids)
    d = x @ centroids.T
    d *= -2
    d += (x * x).sum(1, keepdims=True)
    d += (centroids * centroids).sum(1)[None, :]
    return d


def grouped_balanced_assign(dist: np.ndarray, group: np.ndarray, capacity: np.ndarray,
                            total: int | None = None) -> np.ndarray:
    """``balanced_assign`` with one capacity per (group, cluster): point i may take cluster j while
    fewer than ``capacity[group[i]]`` points of its group hold j, and (with ``total``) fewer than
    ``total`` points of any group. ``group`` is dense (0..G-1); every group needs ``capacity[g] * k >=
    its size``. Rounds as in ``balanced_assign``, all groups at once; a point left with no cluster open
    under ``total`` ignores ``total`` (the group capacity always leaves it one)."""
    n, k = dist.shape
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    capacity = np.asarray(capacity, dtype=np.int64)
    if (np.bincount(group, minlength=len(capacity)) > capacity * k).any():
        raise QuantizerError("a group is larger than its capacity times the number of clusters")
    left = np.repeat(capacity[:, None], k, axis=1).ravel()  # [G * k]
    left_total = np.full(k, n if total is None else int(total), dtype=np.int64)
    work = np.array(dist, dtype=np.float32, copy=True)
    todo = np.arange(n)
    while todo.size:
        block = work[todo]
        cell_full = left.reshape(-1, k)[group[todo]] == 0
        block[cell_full] = np.inf
        open_total = np.where(left_total[None, :] > 0, block, np.inf)
        stuck = ~np.isfinite(open_total).any(axis=1)
        open_total[stuck] = block[stuck]  # no cluster left under ``total``: ignore it for these points
        work[todo] = block
        choice = open_total.argmin(axis=1)
        d = open_total[np.arange(len(todo)), choice]
        key = group[todo] * k + choice
        order = np.lexsort((todo, d, key))  # by (group, cluster), then distance, then point (deterministic)
        ks = key[order]
        first = np.r_[0, np.flatnonzero(ks[1:] != ks[:-1]) + 1]
        rank = np.arange(len(ks)) - np.repeat(first, np.diff(np.r_[first, len(ks)]))
        ok = rank < left[ks]
        # then per cluster over all groups: the closest survivors up to the cluster's total (stuck points pass)
        cand = order[ok]
        ch = choice[cand]
        order2 = np.lexsort((todo[cand], d[cand], ch))
        cand, ch = cand[order2], ch[order2]
        first2 = np.r_[0, np.flatnonzero(ch[1:] != ch[:-1]) + 1] if len(ch) else np.zeros(0, dtype=np.int64)
        rank2 = np.arange(len(ch)) - np.repeat(first2, np.diff(np.r_[first2, len(ch)]))
        accept = (rank2 < left_total[ch]) | stuck[cand]
        cand, ch = cand[accept], ch[accept]
        labels[todo[cand]] = ch
        left -= np.bincount(key[cand], minlength=len(left))
        left_total -= np.bincount(ch, minlength=k)
        np.maximum(left_total, 0, out=left_total)
        todo = np.flatnonzero(labels < 0)
    return labels


PRICE_SAMPLE = 32_768  # residuals the per-code prices are fitted on (seeded sample)
PRICE_ITERS = 40


def fit_prices(residual: np.ndarray, centroids: np.ndarray, *, seed: int, sample: int = PRICE_SAMPLE,
               iters: int = PRICE_ITERS) -> np.ndarray:
    """[k] additive prices such that argmin_j ‖r − c_j‖² + price_j uses every code about equally (dual
    ascent on a seeded sample: over-used codes get dearer, in steps of the typical gap between an
    item's best and second-best code)."""
    k = len(centroids)
    r = residual
    if len(r) > sample:
        r = r[np.sort(np.random.default_rng(seed).choice(len(r), sample, replace=False))]
    d = sq_distances(r, centroids)
    if k < 2:
        return np.zeros(k, dtype=np.float32)
    best2 = np.partition(d, 1, axis=1)[:, :2]
    scale = float(np.median(best2[:, 1] - best2[:, 0])) + 1e-12
    target = len(r) / k
    prices = np.zeros(k, dtype=np.float32)
    for it in range(iters):
        counts = np.bincount((d + prices).argmin(1), minlength=k)
        step = scale * ((1 - it / iters) + 0.05)
        prices += np.float32(step) * np.log((counts + 1) / (target + 1)).astype(np.float32)
    return prices - prices.min()


def priced_nearest(x: np.ndarray, centroids: np.ndarray, prices: np.ndarray) -> np.ndarray:
    """argmin_j ‖x − c_j‖² + price_j per row (the exact nearest centroid when every price is 0)."""
    if not prices.any():
        return nearest(x, centroids)
    out = np.empty(len(x), dtype=np.int64)
    for lo in range(0, len(x), CHUNK_ROWS):
        d = sq_distances(x[lo:lo + CHUNK_ROWS], centroids)
        d += prices[None, :]
        out[lo:lo + CHUNK_ROWS] = d.argmin(1)
    return out


def _below(codes: int, levels: int, level: int) -> int:
    """How many distinct tuples the levels after ``level`` can give (capped: only compared with group sizes)."""
    return int(min(codes ** (levels - 1 - level), 2 ** 40))


def _child_groups(group: np.ndarray, labels: np.ndarray, codes: int) -> np.ndarray:
    """Dense ids of the prefixes one level down (``group`` dense, so ``group * codes + label`` fits int64)."""
    return np.unique(group * codes + labels, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _capacity_level(residual: np.ndarray, centroids: np.ndarray, prices: np.ndarray, group: np.ndarray,
                    chunk_rows: int, below: int) -> np.ndarray:
    """Codes of one level: each prefix group's m vectors over the codes, at most max(⌈m/k⌉, ``below``) per
    code and (per chunk) at most ``TOTAL_SLACK`` times an even share per code, minimizing priced distance greedily;
    groups are processed in chunks of whole groups (bounded memory)."""
    k = len(centroids)
    n = len(residual)
    sizes = np.bincount(group)
    # a child group may hold what the levels below can still tell apart (codes ** levels below), and
    # must hold at least ⌈m/k⌉; on the last level (below = 1) this is 1 while m <= k
    capacity = np.maximum(-(-sizes // k), below)
    order = np.argsort(group, kind="stable")
    bounds = np.r_[0, np.cumsum(sizes)]
    labels = np.empty(n, dtype=np.int64)
    g0 = 0
    while g0 < len(sizes):
        g1 = max(g0 + 1, int(np.searchsorted(bounds, bounds[g0] + chunk_rows, side="right")) - 1)
        rows = order[bounds[g0]:bounds[g1]]
        dist = sq_distances(residual[rows], centroids)
        dist += prices[None, :]
        total = math.ceil(TOTAL_SLACK * len(rows) / k)  # every code about equally used in each chunk
        labels[rows] = grouped_balanced_assign(dist, group[rows] - g0, capacity[g0:g1], total)
        g0 = g1
    return labels


def train_unique(x: np.ndarray, levels: int, codes: int, *, niter: int, seed: int,
                 points_per_code: int = POINTS_PER_CODE) -> tuple[Codebooks, np.ndarray]:
    """Centroids and prices of ``residual_unique``. k-means sees every row (duplicates weigh as often as
    they occur, as in ``residual_kmeans``); capacities and prices count distinct rows."""
    first, inverse = distinct_rows(x)
    xu = _f32(x)[first]
    residual = xu.copy()
    prefix = np.zeros((len(xu), 0), dtype=np.int64)
    group = np.zeros(len(xu), dtype=np.int64)  # dense id of each distinct row's prefix
    books, prices = [], []
    for level in range(levels):
        rows = _f32(x) if level == 0 else residual if len(first) == len(inverse) else residual[inverse]
        c = kmeans(rows, codes, niter=niter, seed=seed + level, points_per_code=points_per_code)
        del rows
        # level 1 stays plain k-means (nearest centroid): pricing it evens the codes out but splits topics
        # (measured: depth-1 coherence 0.57 -> 0.42 on the test catalogue)
        p = fit_prices(residual, c, seed=seed + level) if level else np.zeros(codes, np.float32)
        if level == 0:
            lab = priced_nearest(residual, c, p)
        else:
            lab = _capacity_level(residual, c, p, group, CHUNK_ROWS, _below(codes, levels, level))
        residual -= c[lab]
        prefix = np.concatenate([prefix, lab[:, None]], axis=1)
        group = _child_groups(group, lab, codes)
        books.append(c)
        prices.append(p)
    cb = Codebooks("residual_unique", {"centroids": np.stack(books), "prices": np.stack(prices),
                                       "sizes": np.full(levels, codes)})
    return cb, prefix[inverse].astype(np.int32)  # = assign_unique(cb, x): the same steps on the same rows


CHUNK_ROWS = 131_072  # rows per distance block in capacity assignment (~130 MB at 256 codes)
TOTAL_SLACK = 1.25  # a code holds at most 1.25x an even share of a level's vectors: perplexity >= codes / 1.25


def assign_unique(cb: Codebooks, x: np.ndarray) -> np.ndarray:
    """Codes [n, levels] with frozen centroids and prices, under the training-time capacities: items
    with distinct vectors share a tuple only where a prefix group outgrows the codes; identical vectors
    always share theirs. Used for every item of a full build."""
    centroids, prices = cb.arrays["centroids"], cb.arrays["prices"]
    first, inverse = distinct_rows(x)
    residual = _f32(x)[first].copy()
    labels = np.zeros((len(first), len(centroids)), dtype=np.int64)
    group = np.zeros(len(first), dtype=np.int64)
    for level, (c, p) in enumerate(zip(centroids, prices, strict=True)):
        if level == 0:
            lab = priced_nearest(residual, c, p)
        else:
            lab = _capacity_level(residual, c, p, group, CHUNK_ROWS, _below(len(c), len(centroids), level))
        labels[:, level] = lab
        residual -= c[lab]
        group = _child_groups(group, lab, len(c))
    return labels[inverse].astype(np.int32)


def assign_priced(cb: Codebooks, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frozen assignment of single items (a refresh's new items): the nearest priced code per level."""
    centroids, prices = cb.arrays["centroids"], cb.arrays["prices"]
    residual = _f32(x).copy()
    codes = np.zeros((len(x), len(centroids)), dtype=np.int32)
    for level, (c, p) in enumerate(zip(centroids, prices, strict=True)):
        codes[:, level] = priced_nearest(residual, c, p)
        residual -= c[codes[:, level]]
    return codes, _f32(x) - residual


def _train_unique_codes(x: np.ndarray, *, levels: int, codes: int, subspaces: int, niter: int, seed: int,
                        points_per_code: int) -> tuple[Codebooks, np.ndarray]:
    return train_unique(x, levels, codes, niter=niter, seed=seed, points_per_code=points_per_code)


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


# registry -----------------------------------------------------------------------------------------

def _decode_residual(cb: Codebooks, codes: np.ndarray) -> np.ndarray:
    centroids = cb.arrays["centroids"]
    return _f32(sum(centroids[level][codes[:, level]] for level in range(len(centroids))))


def _decode_balanced(cb: Codebooks, codes: np.ndarray) -> np.ndarray:
    levels = len(cb.sizes)
    node = np.zeros(len(codes), dtype=np.int64)
    for level in range(levels - 1):
        node = node * cb.arrays[f"level{level}"].shape[1] + codes[:, level]
    return _f32(cb.arrays[f"level{levels - 1}"][node, codes[:, levels - 1]])


def _decode_pq(cb: Codebooks, codes: np.ndarray) -> np.ndarray:
    books, rotation = cb.arrays["centroids"], cb.arrays["rotation"]
    parts = np.concatenate([books[m][codes[:, m]] for m in range(len(books))], axis=1)
    return _f32(parts @ rotation)


def _train_residual_codes(x, *, levels, codes, subspaces, niter, seed, points_per_code):
    cb = train_residual(x, levels, codes, niter=niter, seed=seed, points_per_code=points_per_code)
    return cb, assign_residual(cb, x)[0]


def _train_balanced_codes(x, *, levels, codes, subspaces, niter, seed, points_per_code):
    return train_balanced(x, levels, codes, niter=niter, seed=seed, points_per_code=points_per_code)


def _train_pq_codes(rotate: bool):
    def run(x, *, levels, codes, subspaces, niter, seed, points_per_code):
        cb = train_pq(x, subspaces, codes, niter=niter, seed=seed, rotate=rotate, points_per_code=points_per_code)
        return cb, assign_pq(cb, x)[0]
    return run


@dataclass(frozen=True)
class Builder:
    """One semantic-ID builder: ``train`` (codebooks and the training vectors' codes), ``assign`` (codes
    and reconstructions of single new items with frozen codebooks), ``decode`` (codes -> vectors) and,
    where the builder assigns items jointly (capacities), ``assign_all`` (every item of a full build)."""

    train: Callable[..., tuple[Codebooks, np.ndarray]]
    assign: Callable[[Codebooks, np.ndarray], tuple[np.ndarray, np.ndarray]]
    decode: Callable[[Codebooks, np.ndarray], np.ndarray]
    assign_all: Callable[[Codebooks, np.ndarray], np.ndarray] | None = None
    summary: str = ""


BUILDERS: dict[str, Builder] = {
    "residual_unique": Builder(_train_unique_codes, assign_priced, _decode_residual, assign_unique,
                               "residual k-means; deeper levels priced and capacity-assigned within each prefix"),
    "residual_kmeans": Builder(_train_residual_codes, assign_residual, _decode_residual, None,
                               "greedy residual k-means (RQ-KMeans)"),
    "balanced_kmeans": Builder(_train_balanced_codes, assign_balanced, _decode_balanced, None,
                               "balanced hierarchical k-means (EAGER-style)"),
    "pq": Builder(_train_pq_codes(False), assign_pq, _decode_pq, None, "product quantization"),
    "opq": Builder(_train_pq_codes(True), assign_pq, _decode_pq, None, "optimized product quantization"),
}
DEFAULT_METHOD = "residual_unique"


def builder(method: str) -> Builder:
    try:
        return BUILDERS[method]
    except KeyError:
        raise QuantizerError(f"unknown method {method!r}; one of {sorted(BUILDERS)}") from None


def train(method: str, x: np.ndarray, *, levels: int, codes: int, subspaces: int, niter: int,
          seed: int, points_per_code: int = POINTS_PER_CODE) -> tuple[Codebooks, np.ndarray]:
    """Codebooks trained on ``x`` and the codes of ``x`` [n, levels]."""
    b = builder(method)
    if len(x) == 0:
        raise QuantizerError("no training vectors: the training split has no items")
    if not np.isfinite(x).all():
        raise QuantizerError("training vectors contain NaN or inf")
    return b.train(x, levels=levels, codes=codes, subspaces=subspaces, niter=niter, seed=seed,
                   points_per_code=points_per_code)


def assign(cb: Codebooks, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes [n, levels] and reconstructions [n, d] of ``x`` under frozen codebooks, item by item."""
    return builder(cb.method).assign(cb, x)


def assign_all(cb: Codebooks, x: np.ndarray) -> np.ndarray:
    """Codes [n, levels] of a whole catalogue under frozen codebooks: the builder's joint assignment
    where it has one (capacities), else item by item."""
    b = builder(cb.method)
    return b.assign_all(cb, x) if b.assign_all is not None else b.assign(cb, x)[0]


def decode(cb: Codebooks, codes: np.ndarray) -> np.ndarray:
    """Reconstructions [n, d] of semantic ``codes`` (the vector each SID stands for)."""
    return builder(cb.method).decode(cb, codes)
