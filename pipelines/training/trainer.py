"""The generic training loop: Adam on ``model.loss``, validation NDCG@10 per epoch, early stopping,
best-epoch restore; plus atomic checkpoints.

Determinism: ``torch.manual_seed(cfg.seed)`` at the start and a numpy permutation per epoch seeded
from ``(cfg.seed, epoch)``, so two CPU runs with the same seed and the same initial model give the
same curve and weights. (On CUDA some kernels, e.g. scatter-add backward, are not bitwise
deterministic.)
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.training.configs import TrainConfig
from pipelines.training.batches import iterate, n_examples
from pipelines.training.evaluate import evaluate
from pipelines.training.models.base import Recommender, pick_device
from pipelines.reporting import Log

SELECT_METRIC = "ndcg@10"  # validation metric for best epoch and early stopping
VALID_KS = (5, 10, 20)


@dataclass
class TrainResult:
    """``curve``: one row per epoch with ``epoch`` (from 1; 0 for non-trainable models), ``loss`` (mean
    training loss over sequences; None without training), ``valid_ndcg@10``, ``valid_hr@10``,
    ``seconds`` (epoch wall time including validation) and ``sequences_per_s`` (training sequences per
    second of the training phase). ``best_valid``: validation metrics of ``best_epoch`` (the weights
    the model holds after ``train``; epoch 0 and empty when no epoch validated). An epoch whose loss is
    not finite is not validated and not in the curve. ``stopped``: ``epochs``, ``patience``, ``max_minutes``,
    ``non-finite loss`` or ``not trainable``."""

    curve: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    stopped: str = ""
    train_seconds: float = 0.0


def train(model: Recommender, train_arrays: dict[str, np.ndarray], valid_arrays: dict[str, np.ndarray],
          behavior_names: list[str], cfg: TrainConfig, log: Log = print) -> TrainResult:
    """Train ``model`` in place (moved to ``pick_device(cfg.device)``) and leave it at its best epoch.

    Per epoch: shuffled batches, ``loss = model.loss(batch)``, Adam step; then full-ranking validation
    NDCG@10. The best state (CPU deep copy) is restored at the end. Non-trainable models only get
    ``fit_statistics(train_arrays)`` and one validation.
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model.to(pick_device(cfg.device))
    if not model.trainable:
        return _fit_statistics(model, train_arrays, valid_arrays, behavior_names, cfg, log)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    result = TrainResult(best_epoch=0, best_valid={}, stopped="epochs")
    best_score, best_state, stale = -math.inf, None, 0
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        loss, n_seq = _train_epoch(model, optimizer, train_arrays, cfg, epoch)
        train_time = time.perf_counter() - epoch_start
        if not math.isfinite(loss):  # validating NaN weights would only fail on NaN scores
            result.stopped = "non-finite loss"
            log(f"stopping: training loss is {loss} at epoch {epoch}; check the learning rate and the model")
            break
        valid = _validate(model, valid_arrays, behavior_names, cfg)
        row = _curve_row(epoch, loss, valid, time.perf_counter() - epoch_start, n_seq / max(train_time, 1e-9))
        result.curve.append(row)
        improved = valid[SELECT_METRIC] > best_score
        if improved:
            best_score, best_state, stale = valid[SELECT_METRIC], _cpu_state(model), 0
            result.best_epoch, result.best_valid = epoch, valid
        else:
            stale += 1
        log(f"epoch {epoch:3d}  loss {loss:.4f}  valid ndcg@10 {valid['ndcg@10']:.4f}  hr@10 {valid['hr@10']:.4f}  "
            f"{row['sequences_per_s']:.0f} seq/s{'  *' if improved else ''}")
        if stale >= cfg.patience and epoch >= cfg.min_epochs:
            result.stopped = "patience"
            log(f"stopping: no validation {SELECT_METRIC} gain for {stale} epochs (best epoch {result.best_epoch})")
            break
        if cfg.max_minutes is not None and time.perf_counter() - start > cfg.max_minutes * 60:
            result.stopped = "max_minutes"
            log(f"stopping: time budget of {cfg.max_minutes} min exceeded after epoch {epoch}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.train_seconds = time.perf_counter() - start
    log(f"best epoch {result.best_epoch}: valid {SELECT_METRIC} {best_score:.4f} ({result.stopped})")
    return result


def save_checkpoint(path: Path, model: Recommender, meta: dict) -> None:
    """Write ``{"state_dict": <CPU tensors>, **meta}`` atomically: ``torch.save`` to a temporary file in
    the same directory, fsync, then ``os.replace`` (readers see the old file or the new one, never a
    partial one; the temporary file is removed on failure)."""
    if "state_dict" in meta:
        raise ValueError("meta must not have a 'state_dict' key: it would overwrite the weights")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"state_dict": _cpu_state(model), **meta}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by ``save_checkpoint``, tensors on CPU. Our own files only: it unpickles."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def _train_epoch(model: Recommender, optimizer: torch.optim.Optimizer, arrays: dict[str, np.ndarray],
                 cfg: TrainConfig, epoch: int) -> tuple[float, int]:
    """One pass over shuffled batches; returns (mean loss per sequence, sequences seen)."""
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=model.device)  # summed on device: no sync per batch
    n_seq = 0
    for batch in iterate(arrays, cfg.batch_size, shuffle=True, seed=_epoch_seed(cfg.seed, epoch), device=model.device,
                         length_pools=cfg.length_pools, trim=cfg.length_pools > 0):
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        size = batch["target_items"].shape[0]
        total += loss.detach().to(torch.float64) * size
        n_seq += size
    return (float(total) / n_seq if n_seq else 0.0), n_seq


def _validate(model: Recommender, arrays: dict[str, np.ndarray], behavior_names: list[str], cfg: TrainConfig) -> dict[str, float]:
    return evaluate(model, arrays, behavior_names, batch_size=cfg.eval_batch_size, ks=VALID_KS).metrics


def _fit_statistics(model: Recommender, train_arrays: dict[str, np.ndarray], valid_arrays: dict[str, np.ndarray],
                    behavior_names: list[str], cfg: TrainConfig, log: Log) -> TrainResult:
    start = time.perf_counter()
    model.fit_statistics(train_arrays)
    fit_time = time.perf_counter() - start
    valid = _validate(model, valid_arrays, behavior_names, cfg)
    seconds = time.perf_counter() - start
    row = _curve_row(0, None, valid, seconds, n_examples(train_arrays) / max(fit_time, 1e-9))
    log(f"{type(model).__name__}: fitted statistics (not trainable)  valid ndcg@10 {valid['ndcg@10']:.4f}  "
        f"hr@10 {valid['hr@10']:.4f}")
    return TrainResult(curve=[row], best_epoch=0, best_valid=valid, stopped="not trainable", train_seconds=seconds)


def _curve_row(epoch: int, loss: float | None, valid: dict[str, float], seconds: float, sequences_per_s: float) -> dict:
    return {"epoch": epoch, "loss": loss, "valid_ndcg@10": valid["ndcg@10"], "valid_hr@10": valid["hr@10"],
            "seconds": seconds, "sequences_per_s": sequences_per_s}


def _cpu_state(model: Recommender) -> dict[str, torch.Tensor]:
    """A deep copy of the state dict on CPU (independent of later optimizer steps)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _epoch_seed(seed: int, epoch: int) -> int:
    """Shuffling seed of an epoch, derived from (seed, epoch) without collisions between runs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
