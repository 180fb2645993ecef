"""RecBole's SASRec on our exported split, beside our own SASRec on the same targets.

    .venv/bin/python bench/recbole_sasrec.py blade_qk_video            # after materializing the dataset
    .venv/bin/python bench/recbole_sasrec.py taobao --epochs 30

Reads the RecBole benchmark files that `sequence_exports` writes
(`outputs/<dataset>/exports/recbole_benchmark/<dataset>/<dataset>.{train,valid,test}.inter`), runs
RecBole 1.2.1's SASRec on them in its own virtualenv (created on first use under `bench/work/`:
RecBole needs numpy < 2 and setuptools < 81, which the project's environment does not have; with
torch >= 2.6 it also needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 to reload its own checkpoints), and
prints its test figures beside our trained `sasrec` checkpoint's, scored on the same protocol
with RecBole's convention (full ranking, no history masking). Not part of the test run.

RecBole settings that reproduce our protocol: `benchmark_filename: [train, valid, test]`, full
ranking (`eval_args.mode: full`), no history masking (RecBole's default for sequential models, and
ours), `MAX_ITEM_LIST_LENGTH` = our `max_len`, cross-entropy over all items (our full-softmax
SASRec), and the same architecture and optimizer settings as our run's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VENV = ROOT / "bench" / "work" / "recbole-venv"
REQUIREMENTS = ["torch==2.13.0", "numpy<2", "setuptools<81", "scipy", "pandas<2.3", "tqdm", "colorlog==4.7.2",
                "colorama==0.4.4", "scikit-learn", "pyyaml", "tensorboard", "thop", "tabulate", "plotly",
                "texttable", "psutil"]

# RecBole's own pipeline, step by step (its quick_start module imports ray, needed only for tuning)
CHILD = textwrap.dedent("""
    import json, sys
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed
    cfg = json.loads(sys.argv[1])
    config = Config(model="SASRec", dataset=cfg.pop("dataset"), config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    print("RECBOLE_RESULT " + json.dumps({"best_valid_result": {m: float(v) for m, v in best_valid.items()},
                                          "test_result": {m: float(v) for m, v in test.items()},
                                          "test_examples": len(test_data.dataset)}))
""")


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not (venv / ".ready").is_file():
        print(f"creating RecBole's virtualenv in {venv} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *REQUIREMENTS], check=True)
        # ray is only needed for RecBole's hyper-parameter search (and pins an old release): left out
        subprocess.run([*pip, "--no-deps", "recbole==1.2.1"], check=True)
        (venv / ".ready").write_text("recbole==1.2.1\n")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--data-root", default=None, help="data root (default: MBREC_DATA_ROOT or data/)")
    parser.add_argument("--epochs", type=int, default=None, help="default: our checkpoint's best epoch count")
    parser.add_argument("--venv", type=Path, default=VENV)
    args = parser.parse_args(argv)

    from pipelines.resources import PipelineSettings
    from pipelines.sequences.options import SequenceOptions
    from pipelines.training.evaluate import evaluate
    from pipelines.training.stage import TrainingOptions, load_arrays, load_trained, run_dir

    settings = PipelineSettings(data_root=args.data_root) if args.data_root else PipelineSettings()
    cfg = settings.dataset(args.dataset)
    paths = settings.paths(cfg.name)
    protocol = TrainingOptions.of(cfg).protocol
    exported = SequenceOptions.of(cfg).recbole_protocol or protocol
    if exported != protocol:
        print(f"the RecBole files carry protocol '{exported}', our leaderboard uses '{protocol}'", file=sys.stderr)
        return 2
    data = paths.stage_dir("exports") / "recbole_benchmark"
    checkpoint = run_dir(paths, protocol, "sasrec") / "checkpoint.pt"
    if not (data / cfg.name / f"{cfg.name}.test.inter").is_file() or not checkpoint.is_file():
        print(f"materialize {cfg.name} first (make demo, or the UI): {data} or {checkpoint} is missing", file=sys.stderr)
        return 2
    run = json.loads((run_dir(paths, protocol, "sasrec") / "run.json").read_text())
    model, train = run["model_config"], run["train_config"]
    max_len = SequenceOptions.of(cfg).max_len
    config = {
        "dataset": cfg.name, "data_path": str(data), "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]}, "alias_of_item_id": ["item_id_list"],
        "MAX_ITEM_LIST_LENGTH": max_len, "eval_args": {"order": "TO", "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [5, 10, 20], "valid_metric": "NDCG@10",
        "loss_type": "CE", "train_neg_sample_args": None,
        "hidden_size": model["hidden"], "inner_size": 4 * model["hidden"], "n_layers": model["blocks"],
        "n_heads": model["heads"], "hidden_dropout_prob": model["dropout"], "attn_dropout_prob": model["dropout"],
        "epochs": args.epochs or max(run["best_epoch"], 1), "learning_rate": train["learning_rate"],
        "train_batch_size": train["batch_size"], "eval_batch_size": 256, "stopping_step": train["patience"],
        "seed": train["seed"], "reproducibility": True, "device": "cpu", "use_gpu": False, "show_progress": False,
        "checkpoint_dir": str(ROOT / "bench" / "work" / "recbole-saved"),
    }
    python = ensure_venv(args.venv)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    print(f"RecBole 1.2.1 SASRec on {data / cfg.name} ({config['epochs']} epochs) ...", flush=True)
    proc = subprocess.run([str(python), "-c", CHILD, json.dumps(config)], capture_output=True, text=True, env=env,
                          cwd=ROOT / "bench" / "work")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RECBOLE_RESULT ")), None)
    if proc.returncode or line is None:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        return 1
    theirs = json.loads(line.removeprefix("RECBOLE_RESULT "))["test_result"]
    # our checkpoint scored here with RecBole's convention (no history masking), whatever the
    # leaderboard's last evaluation used
    model, _ = load_trained(paths, cfg, protocol, "sasrec")
    ours = evaluate(model, load_arrays(paths, protocol, "test"), cfg.behavior_names, mask_history=0,
                    ks=(5, 10, 20)).metrics
    n_test = sum(1 for _ in (data / cfg.name / f"{cfg.name}.test.inter").open()) - 1
    print(f"\n{cfg.name}, protocol {protocol}: test examples ours {ours['n']:,}, RecBole {n_test:,} "
          "(RecBole cannot hold an empty history; those examples are left out of its files)\n")
    print("| metric | ours (sasrec) | RecBole SASRec |\n|---|---|---|")
    for k in (5, 10, 20):
        print(f"| HR@{k} | {ours[f'hr@{k}']:.4f} | {theirs[f'hit@{k}']:.4f} |")
        print(f"| NDCG@{k} | {ours[f'ndcg@{k}']:.4f} | {theirs[f'ndcg@{k}']:.4f} |")
    print(f"| MRR | {ours['mrr']:.4f} | {theirs['mrr@20']:.4f} (MRR@20) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
