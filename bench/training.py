"""Benchmark: training throughput and evaluation time per model, on generated Taobao.

    python bench/training.py                 # 2M generated rows (about 20k users), CPU (or CUDA if present)
    python bench/training.py --rows 5e5 --device cpu

Runs the real stages (ingest, sequences, leave-one-out, model-ready, semantic IDs) once, then trains
every model for one epoch with the default hyperparameters and evaluates it on the test examples,
with and without the leakage filter. Prints training sequences/s (training phase only) and
evaluation wall time per model, and the device they ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def prepare(root: Path) -> None:
    from pipelines.augmentation.stage import materialize_statistics
    from pipelines.registry import load_registry
    from pipelines.semantic_ids.stage import materialize_embeddings, materialize_item_text, materialize_semantic_ids
    from pipelines.sequences.stage import materialize_model_ready, materialize_split, materialize_steps
    from pipelines.storage import DatasetPaths

    cfg = load_registry().get("taobao")
    paths = DatasetPaths(root, "taobao")
    if not (paths.stage_dir("statistics") / "leave_one_out" / "statistics.json").is_file() and \
            (paths.stage_dir("splits") / "leave_one_out").is_dir():
        materialize_statistics(cfg, paths, log=lambda m: None)  # blade's augmentations (cached older work dirs)
    if (paths.stage_dir("semantic_ids") / "semantic_ids.parquet").is_file():
        return
    t = time.perf_counter()
    materialize_steps(cfg, paths, log=lambda m: None)
    materialize_split(cfg, paths, "leave_one_out", log=lambda m: None)
    materialize_model_ready(cfg, paths, log=lambda m: None)
    materialize_statistics(cfg, paths, log=lambda m: None)
    materialize_item_text(cfg, paths, log=lambda m: None)
    materialize_embeddings(cfg, paths, log=lambda m: None)
    materialize_semantic_ids(cfg, paths, log=lambda m: None)
    print(f"prepared sequences and semantic IDs in {time.perf_counter() - t:.1f} s", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=float, default=2e6)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    a = p.parse_args()
    from sequences_taobao import ensure_events

    root = ensure_events(a.work, int(a.rows), 0)
    prepare(root)

    import numpy as np

    from pipelines.registry import load_registry
    from pipelines.storage import DatasetPaths
    from pipelines.training.stage import MODELS, load_arrays, materialize_evaluation, materialize_training

    cfg = load_registry().get("taobao")
    paths = DatasetPaths(root, "taobao")
    train = load_arrays(paths, "leave_one_out", "train")
    test = load_arrays(paths, "leave_one_out", "test")
    n_items = int(np.load(paths.stage_dir("model_ready") / "leave_one_out" / "train.npz")["target_items"].max())
    print(f"data: {len(train['user_ids']):,} training sequences, {len(test['user_ids']):,} test examples, "
          f"~{n_items:,} items (full ranking)")
    rows = []
    for name in MODELS:
        meta = materialize_training(cfg, paths, name, {"epochs": 1, "patience": 99, "device": a.device},
                                    log=lambda m: None)
        row = meta["curve"][0]
        rows.append((name, row["sequences_per_s"] if meta["stopped"] != "not trainable" else 0.0, meta["device"]))
    table = materialize_evaluation(cfg, paths, list(MODELS), device=a.device, log=lambda m: None)
    ev = {(r["model"], r["filter"]): r["eval_seconds"] for r in table.filter(table["target_behavior"] == "all").to_dicts()}
    print(f"{'model':<16} {'train seq/s':>12} {'eval s (filtered)':>18} {'eval s (unfiltered)':>20}  device")
    for name, sps, device in rows:
        speed = f"{sps:>12,.0f}" if sps else f"{'(no training)':>12}"
        print(f"{name:<16} {speed} {ev[(name, 'all')]:>18.2f} {ev[(name, 'off')]:>20.2f}  {device}")
    sampled = materialize_training(cfg, paths, "sasrec", {"epochs": 1, "patience": 99, "device": a.device,
                                                          "negatives": 256}, log=lambda m: None)
    print(f"sasrec with a sampled softmax (negatives=256): {sampled['curve'][0]['sequences_per_s']:,.0f} training "
          f"seq/s (the full softmax over every item dominates SASRec's cost on a CPU)")
    print(json.dumps({"models": {n: s for n, s, _ in rows}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
