"""Train and evaluate a dataset at a paper's published settings, and print our figures beside theirs.

    python -m assets.paper_settings_run blade_qk_video            # BLADE's Table 1 settings (the default)
    python -m assets.paper_settings_run blade_qk_video --setting blade_table1 --epochs 50

Runs the project's own ``materialize_all`` job for one dataset partition through the Dagster instance
(``DAGSTER_HOME``), with the setting's hyperparameters as run config of the ``trained_*`` assets
and its evaluation convention as run config of ``evaluation``, then prints the test figures of our
models next to the published ones. The settings themselves live in ``pipelines.paper_settings``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipelines.paper_settings import PAPER_SETTINGS, check_applicable, comparison, run_config
from pipelines.registry import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="registry dataset (a split release for blade_table1)")
    parser.add_argument("--setting", default="blade_table1", choices=sorted(PAPER_SETTINGS))
    parser.add_argument("--epochs", type=int, default=None, help="cap training epochs (default: the model defaults)")
    parser.add_argument("--data-root", default=None, help="data root (default: MBREC_DATA_ROOT or data/)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    import dagster as dg
    import polars as pl

    from assets.definitions import defs
    from pipelines.reporting import markdown_table
    from pipelines.resources import PipelineSettings
    from pipelines.sequences.options import SequenceOptions
    from pipelines.storage import has_raw_files
    from pipelines.training.stage import TrainingOptions

    setting = PAPER_SETTINGS[args.setting]
    settings = PipelineSettings(data_root=args.data_root) if args.data_root else PipelineSettings()
    cfg = settings.dataset(args.dataset)
    problems = check_applicable(setting, cfg, SequenceOptions.of(cfg).max_len, TrainingOptions.of(cfg).protocol)
    if problems:
        print(f"{args.dataset} does not match {setting.name}: " + "; ".join(problems), file=sys.stderr)
        return 2
    print(f"== {args.dataset} at {setting.name}: {setting.source}", flush=True)
    print(f"   masking: {setting.masking_note}", flush=True)
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("materialize_all").execute_in_process(
            partition_key=args.dataset, instance=instance, raise_on_error=False,
            run_config=run_config(setting, args.data_root, args.epochs))
    if not result.success:
        print(f"the run failed: see the Dagster run {result.run_id} (make ui)", file=sys.stderr)
        return 1
    results = pl.read_parquet(settings.paths(cfg.name).evaluation_results())
    source = "the raw files" if has_raw_files(settings.paths(cfg.name).raw_dir) else "synthetic (generated) data"
    print(f"\nTest figures on {args.dataset} ({source}), protocol {setting.protocol}, L = {setting.max_len}, "
          f"full ranking, last {setting.mask_history} history items masked:\n")
    print(markdown_table(comparison(setting, results), max_rows=50))
    if source.startswith("synthetic"):
        print(f"\nThe published figures are for the real QK-Video release; put its files into "
              f"{settings.paths(cfg.name).raw_dir} for a like-for-like comparison ({setting.dataset_hint}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
