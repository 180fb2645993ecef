"""Semantic IDs at the collision floor: tuples collide only where item vectors are identical.

The catalogue is generated in numpy like text embeddings (topic, subtopic and item-level centers on the
unit sphere) with the two patterns of real item texts: chains of items with one identical vector (same
text), and near-identical vectors (same parts listed in another order embed a hair apart).
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from pipelines.registry import load_registry
from pipelines.semantic_ids import quality, quantizers
from pipelines.semantic_ids.checks import sid_consistency
from pipelines.semantic_ids.item_text import item_texts, order_variants
from pipelines.semantic_ids.options import SemanticIdOptions

N, D = 12_000, 64
KW = dict(levels=3, codes=256, subspaces=16, niter=20, seed=0)


def catalogue(n: int = N, d: int = D, seed: int = 0) -> tuple[np.ndarray, float]:
    """Vectors [n, d] and their floor (1 - distinct / n): 6% of the items repeat the vector of one of
    60 chain heads (chains of 1 to ~40 copies), 3% are near-copies (a 1e-3 perturbation) of another item."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), dtype=np.float32)
    for scale, k in ((1.0, 256), (0.6, 1024), (0.35, 4096)):
        x += scale * rng.standard_normal((k, d), dtype=np.float32)[rng.integers(0, k, n)]
    x += 0.15 * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    heads, copies, near = perm[:60], perm[60:60 + int(0.06 * n)], perm[60 + int(0.06 * n):60 + int(0.09 * n)]
    x[copies] = x[heads[np.minimum(rng.zipf(1.6, len(copies)) - 1, 59)]]
    x[near] = x[rng.integers(0, n, len(near))] + 1e-3 * rng.standard_normal((len(near), d), dtype=np.float32)
    return np.ascontiguousarray(x), 1 - len(np.unique(x, axis=0)) / n


@pytest.fixture(scope="module")
def built():
    x, fl = catalogue()
    out = {}
    for method in ("residual_unique", "residual_kmeans"):
        cb, codes = quantizers.train(method, x, **KW)
        out[method] = (cb, codes, quality.report(x, codes, quantizers.decode(cb, codes), cb.sizes, sample=1000))
    return x, fl, out


def test_the_default_builder_collides_only_where_vectors_are_identical(built):
    x, fl, out = built
    assert SemanticIdOptions().method == "residual_unique"
    _, codes, rep = out["residual_unique"]
    col = rep["collisions"]
    assert rep["floor"]["floor"] == pytest.approx(fl) and fl > 0.04  # the chains are there and reported
    assert col["floor"] == pytest.approx(fl)
    print(f"floor {fl:.4f}; residual_unique {col['collision_rate']:.4f}, residual_kmeans "
          f"{out['residual_kmeans'][2]['collisions']['collision_rate']:.4f}; perplexity "
          f"{[round(lv['perplexity']) for lv in rep['levels']]}")
    assert col["excess_collision_rate"] <= 0.005
    # identical vectors share their tuple; near-identical ones do not
    inverse = quantizers.distinct_rows(x)[1]
    assert len(np.unique(np.c_[inverse, codes], axis=0)) == len(np.unique(inverse))
    assert all(lv["perplexity"] >= 200 for lv in rep["levels"])
    # level 1 is the greedy builder's plain k-means; the deeper levels no longer collapse
    greedy = out["residual_kmeans"][2]["levels"]
    assert rep["levels"][0]["perplexity"] == pytest.approx(greedy[0]["perplexity"], rel=0.02)
    assert min(lv["perplexity"] for lv in greedy[1:]) < 200
    # the greedy builder on the same vectors is far above the floor (what the check below must catch)
    assert out["residual_kmeans"][2]["collisions"]["excess_collision_rate"] > 0.02


def test_depth1_coherence_is_kept(built):
    _, _, out = built
    unique = out["residual_unique"][2]["coherence"][0]["share"]
    greedy = out["residual_kmeans"][2]["coherence"][0]["share"]
    assert unique >= greedy - 0.01, (unique, greedy)


def test_refresh_assignment_with_frozen_codebooks(built):
    x, _, out = built
    cb, codes, _ = out["residual_unique"]
    npz = quantizers.Codebooks.from_npz(cb.to_npz())  # the prices travel in the codebooks file
    assert np.array_equal(quantizers.assign_all(npz, x), codes)
    new, _ = quantizers.assign(npz, x[:500])
    assert (new[:, 0] == codes[:500, 0]).all()  # level 1: the nearest centroid, as in training
    assert ((new == codes[:500]).all(axis=1)).mean() > 0.5  # deeper levels: the priced nearest code


def _files(tmp_path, codes: np.ndarray, rep: dict) -> tuple:
    n = len(codes)
    sid = [f"<a_{a}><b_{b}><c_{c}><d_{i}>" for i, (a, b, c) in enumerate(codes.tolist())]  # unique with dedup
    pl.DataFrame({"item_id": pl.Series(range(n), dtype=pl.UInt32), "sid": sid}).write_parquet(tmp_path / "sids.parquet")
    pl.DataFrame({"item_id": pl.Series(range(n), dtype=pl.UInt32)}).write_parquet(tmp_path / "ids.parquet")
    (tmp_path / "quality.json").write_text(json.dumps({"dedup": True, "quality": rep}))
    return tmp_path / "sids.parquet", tmp_path / "ids.parquet", tmp_path / "quality.json"


def test_check_bounds_the_excess_over_the_floor(built, tmp_path):
    _, _, out = built
    good = _files(tmp_path, out["residual_unique"][1], out["residual_unique"][2])
    r = sid_consistency(*good, 0.2, 0.005)
    assert r.passed and "excess over the floor" in r.message, r.message
    (tmp_path / "bad").mkdir()
    bad = _files(tmp_path / "bad", out["residual_kmeans"][1], out["residual_kmeans"][2])
    assert sid_consistency(*bad, 0.2).passed  # no bound set: the check does not look at the excess
    r = sid_consistency(*bad, 0.2, 0.005)
    assert not r.passed and "exceeds the identical-vector floor" in r.message and "max_excess_collisions 0.005" in r.message


def test_options_validate_method_and_excess_bound():
    cfg = load_registry().get("kuaisar")

    def with_stage(**o):
        return cfg.model_copy(update={"stages": {**cfg.stages, "semantic_ids": o}})

    assert SemanticIdOptions.of(with_stage(max_excess_collisions=0.005)).max_excess_collisions == 0.005
    with pytest.raises((ValidationError, ValueError), match="max_excess_collisions"):
        SemanticIdOptions.of(with_stage(max_excess_collisions=-0.1))
    with pytest.raises((ValidationError, ValueError), match="residual_unique"):
        SemanticIdOptions.of(with_stage(method="rq_magic"))
    assert "max_excess_collisions" not in SemanticIdOptions().build_key()  # a check option: no rebuild


def test_comma_part_order_is_kept_unless_the_column_is_unordered():
    side = pl.DataFrame({"item_id": pl.Series([0, 1, 2], dtype=pl.UInt32), "raw_item_id": [5, 6, 7],
                         "title": ["Starbucks"] * 3, "cats": ["Food, Coffee & Tea", "Coffee & Tea,Food", "Food"]})
    kept = item_texts(side, "{title} | {cats}")["text"]
    assert kept.n_unique() == 3 and order_variants(kept) == 1
    merged = item_texts(side, "{title} | {cats}", ["cats"])["text"].to_list()
    assert merged == ["Starbucks | Coffee & Tea, Food"] * 2 + ["Starbucks | Food"]


def test_generated_catalogue_reports_the_floor(kuaisar_project):
    out = kuaisar_project / "outputs" / "kuaisar" / "semantic_ids"
    report = json.loads((out / "quality.json").read_text())
    col, fl = report["quality"]["collisions"], report["quality"]["floor"]
    texts = pl.read_parquet(out / "item_text.parquet")["text"]
    assert fl["text_floor"] == pytest.approx(1 - texts.n_unique() / texts.len()) and fl["text_floor"] > 0
    assert order_variants(texts) > 0  # the generator lists category parts in both orders
    assert report["method"] == "residual_unique"
    assert col["excess_collision_rate"] <= 0.005 and col["floor"] <= fl["text_floor"]
    md = (out / "quality_report.md").read_text()
    assert "floor" in md and "excess over the floor" in md
