"""Benchmark: training throughput and evaluation time per model, on generated Taobao.

    python bench/training.py                 # 2M generated rows (about 20k users), CPU (or CUDA if present)
    python bench/training.py --rows 5e5 --device cpu

Runs the real stages (ingest, sequences, leave-one-out, model-ready, semantic IDs) once, then trains
every model for one epoch with the default hyperparameters and evaluates it on the test examples,
with and without the leakage filter. Prints training sequences/s (training phase only) and
evaluation wall time per model, and the device they ran on; then SASRec's full softmax, plain
(``softmax_chunk=0``: ``F.cross_entropy`` over [N, n_items] logits) vs fused (the default), on the
same data in the same run.

``--shape`` instead times SASRec's full-softmax training on random sequences of the released
splits' size (5k users, 20k items, max length 50; lengths uniform in 1..50), plain vs fused,
alternating epochs on the same initial weights, and checks both paths give the same losses.
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


def shape_benchmark(users: int, items: int, max_len: int, device: str, rounds: int = 2, chunk: int = 32) -> dict[str, float]:
    """SASRec full-softmax training seq/s, plain vs fused, on random sequences; same weights, same run."""
    import numpy as np
    import torch

    from pipelines.training.batches import iterate
    from pipelines.training.models.base import DatasetInfo, pick_device
    from pipelines.training.models.sasrec import SASRec, SASRecConfig

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, max_len + 1, users)
    hist = rng.integers(1, items + 1, (users, max_len)).astype(np.int32)
    hist[np.arange(max_len)[None, :] < (max_len - lengths)[:, None]] = 0
    arrays = {"items": hist, "behaviors": (hist > 0).astype(np.int32), "lengths": lengths.astype(np.int32),
              "target_items": rng.integers(1, items + 1, users).astype(np.int32),
              "target_behaviors": np.ones(users, np.int32), "user_ids": np.arange(users, dtype=np.int32)}
    dev = pick_device(device)
    info = DatasetInfo(n_items=items, n_users=users, n_behaviors=1, max_len=max_len)
    torch.manual_seed(0)
    init = SASRec(info, SASRecConfig(dropout=0.0)).state_dict()
    seconds = {"plain": 0.0, "fused": 0.0}
    cpu = {"plain": 0.0, "fused": 0.0}  # process CPU time: a busy machine inflates it less than wall time
    losses: dict[str, list[float]] = {"plain": [], "fused": []}
    for r in range(rounds):
        for name, chunk in (("plain", 0), ("fused", chunk)) if r % 2 == 0 else (("fused", chunk), ("plain", 0)):
            model = SASRec(info, SASRecConfig(dropout=0.0, softmax_chunk=chunk))
            model.load_state_dict(init)
            model.to(dev).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            t, c = time.perf_counter(), time.process_time()
            for batch in iterate(arrays, 128, shuffle=True, seed=r, device=dev):
                opt.zero_grad(set_to_none=True)
                loss = model.loss(batch)
                loss.backward()
                opt.step()
                losses[name].append(float(loss.detach()))
            seconds[name] += time.perf_counter() - t
            cpu[name] += time.process_time() - c
    gap = max(abs(a - b) for a, b in zip(losses["plain"], losses["fused"]))
    out = {name: users * rounds / s for name, s in seconds.items()}
    print(f"SASRec full softmax, {users:,} random sequences x {items:,} items x max length {max_len}, batch 128, "
          f"{dev}, {torch.get_num_threads()} threads:")
    print(f"  plain F.cross_entropy: {out['plain']:,.0f} seq/s; fused chunks: {out['fused']:,.0f} seq/s; "
          f"speed-up {out['fused'] / out['plain']:.2f}x; largest loss difference over {len(losses['plain'])} "
          f"steps {gap:.2e}")
    print(f"  CPU seconds per 1k sequences: plain {cpu['plain'] * 1000 / (users * rounds):.1f}, fused "
          f"{cpu['fused'] * 1000 / (users * rounds):.1f} ({cpu['plain'] / cpu['fused']:.2f}x fewer)")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=float, default=2e6)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    p.add_argument("--shape", action="store_true", help="only the SASRec plain-vs-fused softmax timing")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--chunk", type=int, default=32, help="--shape: the fused path's softmax_chunk")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.shape:
        shape_benchmark(a.users, a.items, a.max_len, a.device, chunk=a.chunk)
        return 0
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
    plain = materialize_training(cfg, paths, "sasrec", {"epochs": 1, "patience": 99, "device": a.device,
                                                        "softmax_chunk": 0}, log=lambda m: None)
    fused = next(s for n, s, _ in rows if n == "sasrec")
    plain_sps = plain["curve"][0]["sequences_per_s"]
    print(f"sasrec full softmax: plain F.cross_entropy {plain_sps:,.0f} seq/s, fused chunks (default) {fused:,.0f} seq/s "
          f"({fused / plain_sps:.2f}x)")
    sampled = materialize_training(cfg, paths, "sasrec", {"epochs": 1, "patience": 99, "device": a.device,
                                                          "negatives": 256}, log=lambda m: None)
    print(f"sasrec with a sampled softmax (negatives=256): {sampled['curve'][0]['sequences_per_s']:,.0f} training "
          f"seq/s (the full softmax over every item dominates SASRec's cost on a CPU)")
    print(json.dumps({"models": {n: s for n, s, _ in rows}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
