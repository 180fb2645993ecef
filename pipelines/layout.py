"""Where every artifact of a dataset lives: the one module that spells file and folder names.

Layout under the data root (default ``data/``, or ``$MBREC_DATA_ROOT``)::

    raw/<dataset>/                 raw files dropped by users (never written by the pipeline)
    generated/<dataset>/           synthetic raw files, used when raw/<dataset>/ is empty
    outputs/<dataset>/<stage>/...  what each stage writes (accessors below)
    outputs/leaderboard.{parquet,md}   every dataset's evaluation
    outputs/<dataset>/shards/      a sharded run's work (``shards: N`` > 1 in the registry):
        map/                       the map step: bucket-<k>.parquet (parsed rows of shard k), quarantine
        ids/                       dense id maps and side info merged from every shard's raw ids
        <k>/...                    one shard's own stage folders (a layout with ``shard=k``)

Stages, checks, the dataset card, the demo and training read and write only through a
``DatasetLayout`` (``settings.paths(name)`` in assets), so renaming an output is one edit here.
``PRODUCERS`` says which asset writes each artifact; assets take their ``deps`` from it
(``producers_of(...)``), so Dagster knows which files an asset reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.registry import REPO_ROOT
from pipelines.remote import DATA_ROOT_ENV, is_object_store_url, work_dir_for

# The ingest stage writes these into a staging folder and publishes them as one version (its
# writer needs the names without the folder); everyone else uses the accessors.
INGEST_FILES = {"events": "events.parquet", "user_id_map": "user_id_map.parquet",
                "item_id_map": "item_id_map.parquet", "item_side_info": "item_side_info.parquet",
                "quarantine": "quarantine.parquet", "ingest_report": "ingest_report.json", "source": "source.json",
                "ingest_state": "ingest_state.json"}
# The file names of an EIDP/BLADE split release, per role: the raw files of format
# ``behavior_set_splits`` and the ``exports/blade/`` artifacts (written in the same shape).
RELEASE_SPLIT_FILES = {"train": "train.txt", "valid": "valid.txt", "between": "between_val_test.txt",
                       "test": "test.txt"}


def failed_attempt_dir(stage_dir: Path) -> Path:
    """Beside a stage's outputs: what its last failed attempt left for the user to read."""
    return stage_dir.with_name(f"{stage_dir.name}_failed_attempt")


# The semantic-ID build publishes these together (staged, then renamed into its folder).
SEMANTIC_ID_FILES = {"semantic_ids": "semantic_ids.parquet", "build": "build.json", "codebooks": "codebooks.npz",
                     "quality": "quality.json", "report": "quality_report.md"}


def default_data_root() -> Path:
    value = os.environ.get(DATA_ROOT_ENV)
    return data_root_path(value, DATA_ROOT_ENV) if value else REPO_ROOT / "data"


def data_root_path(value: str, where: str = "data_root") -> Path:
    """The folder stages read and write for a data-root setting: a path, a ``file://`` URL, or for an
    object-store URL (``s3://``, ``gs://``, any fsspec protocol) its local working copy, which
    ``pipelines.remote`` keeps in step with the store around every step."""
    from urllib.parse import unquote, urlparse

    if "://" not in value:
        return Path(value)
    url = urlparse(value)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise ValueError(f"{where}={value!r}: a file:// URL names a path on this machine (file:///path), "
                             f"not on host {url.netloc!r}")
        return Path(unquote(url.path))
    assert is_object_store_url(value)
    return work_dir_for(value)


def shard_name(k: int) -> str:
    return f"{k:04d}"


@dataclass(frozen=True)
class DatasetLayout:
    root: Path
    dataset: str
    shard: int | None = None  # a shard's own folders (below outputs/<dataset>/shards/<k>/), else the dataset's

    # ---------------------------------------------------------------- inputs
    @property
    def raw_dir(self) -> Path:
        return self.root / "raw" / self.dataset

    @property
    def generated_dir(self) -> Path:
        return self.root / "generated" / self.dataset

    @property
    def outputs_dir(self) -> Path:
        base = self.root / "outputs" / self.dataset
        return base if self.shard is None else base / "shards" / shard_name(self.shard)

    # ---------------------------------------------------------------- user-hash shards
    def shards_dir(self) -> Path:
        return self.root / "outputs" / self.dataset / "shards"

    def of_shard(self, k: int) -> "DatasetLayout":
        """Shard ``k``'s layout: the same accessors, below ``outputs/<dataset>/shards/<k>/``."""
        return DatasetLayout(self.root, self.dataset, k)

    def shard_map_dir(self) -> Path:
        """The map step's versioned folder: one bucket of parsed rows per shard, the quarantine."""
        return self.shards_dir() / "map"

    def shard_bucket(self, k: int) -> Path:
        return self.shard_map_dir() / f"bucket-{shard_name(k)}.parquet"

    def shard_map_report(self) -> Path:
        return self.shard_map_dir() / "map_report.json"

    def shard_ids_dir(self) -> Path:
        """Dense id maps and item side info merged from every shard's raw ids (versioned)."""
        return self.shards_dir() / "ids"

    def raw_ids(self, kind: str) -> Path:
        """A shard's distinct raw ids with the first file they occur in; ``kind``: users or items."""
        return self.stage_dir("raw_ids") / f"{kind}.parquet"

    def shard_summary(self) -> Path:
        """What a shard run did (counts, the map version it read): the merge checks every shard's."""
        return self.outputs_dir / "shard.json"

    def training_counts(self, protocol: str) -> Path:
        """A shard's additive behavior counts over training steps (merged by addition)."""
        return self.statistics_dir(protocol) / "counts.json"

    def stage_dir(self, stage: str) -> Path:
        return self.outputs_dir / stage

    # ---------------------------------------------------------------- ingest (one versioned folder)
    def ingest_dir(self) -> Path:
        return self.stage_dir("ingest")

    def events(self) -> Path:
        return self.ingest_dir() / INGEST_FILES["events"]

    def user_id_map(self) -> Path:
        return self.ingest_dir() / INGEST_FILES["user_id_map"]

    def item_id_map(self) -> Path:
        return self.ingest_dir() / INGEST_FILES["item_id_map"]

    def item_side_info(self) -> Path:
        return self.ingest_dir() / INGEST_FILES["item_side_info"]

    def quarantine(self) -> Path:
        return self.ingest_dir() / INGEST_FILES["quarantine"]

    def ingest_report(self) -> Path:
        return self.ingest_dir() / INGEST_FILES["ingest_report"]

    def source(self) -> Path:
        return self.ingest_dir() / INGEST_FILES["source"]

    def ingest_state(self) -> Path:
        """What the published ingest version was built from (raw fingerprints, registry hash)."""
        return self.ingest_dir() / INGEST_FILES["ingest_state"]

    def failed_quarantine(self) -> Path:
        """The whole quarantine of the last ingest attempt that failed its threshold."""
        return failed_attempt_dir(self.ingest_dir()) / INGEST_FILES["quarantine"]

    # ---------------------------------------------------------------- sequences and splits
    def steps(self) -> Path:
        return self.stage_dir("sequences") / "steps.parquet"

    def user_digests(self) -> Path:
        """Per user, a digest of the user's steps (written with the steps)."""
        return self.stage_dir("sequences") / "user_digests.parquet"

    def event_digests(self) -> Path:
        """Per user, a digest of the user's events the steps were built from."""
        return self.stage_dir("sequences") / "event_digests.parquet"

    def steps_state(self) -> Path:
        """What the published steps were built from (options, file sizes): a refresh may recompute
        only users whose events changed when it matches."""
        return self.stage_dir("sequences") / "steps_state.json"

    def split_dir(self, protocol: str) -> Path:
        return self.stage_dir("splits") / protocol

    def split_users(self, protocol: str) -> Path:
        """Per user, the steps digest the split was built from and the user sets it reported."""
        return self.split_dir(protocol) / "users.parquet"

    def split_state(self, protocol: str) -> Path:
        """What the published split was built from (options, cuts, table sizes): a refresh may
        recompute only changed users when it matches."""
        return self.split_dir(protocol) / "split_state.json"

    def roles(self, protocol: str) -> Path:
        return self.split_dir(protocol) / "roles.parquet"

    def examples(self, protocol: str, filtered: bool = True) -> Path:
        return self.split_dir(protocol) / ("examples.parquet" if filtered else "examples_unfiltered.parquet")

    def train_examples(self, protocol: str) -> Path:
        return self.split_dir(protocol) / "train_examples.parquet"

    def leakage_audit(self) -> Path:
        return self.stage_dir("leakage") / "audit.parquet"

    def leakage_report(self) -> Path:
        return self.stage_dir("leakage") / "leakage_audit.md"

    def leakage_plot(self) -> Path:
        return self.stage_dir("leakage") / "leakage_audit.png"

    def model_ready_dir(self, protocol: str | None = None) -> Path:
        d = self.stage_dir("model_ready")
        return d / protocol if protocol else d

    def model_ready(self, protocol: str, role: str, kind: str = "npz") -> Path:
        """``kind``: ``npz`` (the arrays training loads) or ``parquet`` (the same, as a table)."""
        return self.model_ready_dir(protocol) / f"{role}.{kind}"

    def model_ready_inputs(self, protocol: str) -> Path:
        """The steps and examples files (size, footer hash) the arrays were built from (written last)."""
        return self.model_ready_dir(protocol) / "inputs.json"

    def model_ready_tables(self) -> list[Path]:
        return sorted(self.model_ready_dir().glob("*/*.parquet"))

    # ---------------------------------------------------------------- exports
    def exports_dir(self) -> Path:
        return self.stage_dir("exports")

    def blade_exports_dir(self) -> Path:
        return self.exports_dir() / "blade"

    def blade_files(self) -> list[Path]:
        return sorted(self.blade_exports_dir().glob("*.txt"))

    def recbole_inter(self) -> Path:
        return self.exports_dir() / "recbole" / f"{self.dataset}.inter"

    def recbole_benchmark_dir(self) -> Path:
        """RecBole's ``data_path``: the files are ``<dataset>/<dataset>.<role>.inter`` below it."""
        return self.exports_dir() / "recbole_benchmark"

    def recbole_benchmark(self, role: str) -> Path:
        return self.recbole_benchmark_dir() / self.dataset / f"{self.dataset}.{role}.inter"

    def gamer_json(self) -> Path:
        return self.exports_dir() / "gamer" / f"{self.dataset}.gamer.json"

    # ---------------------------------------------------------------- augmentation
    def statistics_dir(self, protocol: str | None = None) -> Path:
        d = self.stage_dir("statistics")
        return d / protocol if protocol else d

    def statistics(self, protocol: str) -> Path:
        return self.statistics_dir(protocol) / "statistics.json"

    def statistics_inputs(self, protocol: str) -> Path:
        """The steps and roles files the statistics were computed from (written last)."""
        return self.statistics_dir(protocol) / "inputs.json"

    def statistics_matrix(self, protocol: str, name: str) -> Path:
        """``name``: ``M`` (co-occurrence) or ``T`` (transitions)."""
        return self.statistics_dir(protocol) / f"{name}.npy"

    def statistics_heatmap(self, protocol: str) -> Path:
        return self.statistics_dir(protocol) / "heatmap.png"

    def sequential_views(self, protocol: str) -> Path:
        return self.stage_dir("augmentation") / protocol / "sequential_views.parquet"

    def sequential_view_tables(self) -> list[Path]:
        return sorted(self.stage_dir("augmentation").glob("*/sequential_views.parquet"))

    # ---------------------------------------------------------------- semantic IDs
    def semantic_ids_dir(self) -> Path:
        return self.stage_dir("semantic_ids")

    def item_text(self) -> Path:
        return self.semantic_ids_dir() / "item_text.parquet"

    def item_embeddings(self) -> Path:
        return self.semantic_ids_dir() / "item_embeddings.parquet"

    def embedding_cache(self) -> Path:
        return self.semantic_ids_dir() / "embedding_cache.parquet"

    def onnx_cache_dir(self) -> Path:
        return self.root / "cache" / "onnx"

    def semantic_ids(self) -> Path:
        return self.semantic_ids_dir() / SEMANTIC_ID_FILES["semantic_ids"]

    def semantic_id_build(self) -> Path:
        return self.semantic_ids_dir() / SEMANTIC_ID_FILES["build"]

    def codebooks(self) -> Path:
        return self.semantic_ids_dir() / SEMANTIC_ID_FILES["codebooks"]

    def semantic_id_quality(self) -> Path:
        return self.semantic_ids_dir() / SEMANTIC_ID_FILES["quality"]

    def semantic_id_report(self) -> Path:
        return self.semantic_ids_dir() / SEMANTIC_ID_FILES["report"]

    def sid_index(self) -> Path:
        """``{"<item_id>": ["<a_12>", ...]}``: the format GAMER, LC-Rec and MiniOneRec read."""
        return self.semantic_ids_dir() / "exports" / f"{self.dataset}.index.json"

    def sid_vocab(self) -> Path:
        return self.semantic_ids_dir() / "exports" / "sid_vocab.json"

    # ---------------------------------------------------------------- training and evaluation
    def run_dir(self, protocol: str, model: str) -> Path:
        return self.stage_dir("training") / protocol / model

    def checkpoint(self, protocol: str, model: str) -> Path:
        return self.run_dir(protocol, model) / "checkpoint.pt"

    def run_record(self, protocol: str, model: str) -> Path:
        return self.run_dir(protocol, model) / "run.json"

    def evaluation_results(self) -> Path:
        return self.stage_dir("evaluation") / "results.parquet"

    # ---------------------------------------------------------------- reports
    def failures(self) -> Path:
        """Failed runs of this dataset (JSON lines, newest last), written by the run-failure sensor."""
        return self.stage_dir("reports") / "failures.jsonl"

    def evaluation_leaderboard(self) -> Path:
        return self.stage_dir("evaluation") / "leaderboard.md"

    # ---------------------------------------------------------------- reports
    def data_docs(self, suite: str) -> Path:
        return self.stage_dir("quality") / "data_docs" / suite

    def card_dir(self) -> Path:
        return self.stage_dir("card")

    def card(self, kind: str = "html") -> Path:
        return self.card_dir() / f"dataset_card.{kind}"

    def card_figure(self, n: int) -> Path:
        return self.card_dir() / f"figure_{n}.png"


def global_leaderboard(root: Path, kind: str = "md") -> Path:
    return root / "outputs" / f"leaderboard.{kind}"


def evaluation_results_of_every_dataset(root: Path) -> list[Path]:
    return sorted((root / "outputs").glob("*/evaluation/results.parquet"))


# Which asset writes each artifact (accessor name -> asset key): assets take their deps from here.
PRODUCERS: dict[str, str] = {
    "events": "canonical_events", "user_id_map": "user_id_map", "item_id_map": "item_id_map",
    "item_side_info": "item_side_info", "quarantine": "ingest_quarantine",
    "steps": "behavior_sets", "leakage_audit": "leakage_audit", "model_ready": "model_ready_sequences",
    "statistics": "behavior_statistics", "sequential_views": "sequential_augmentation",
    "semantic_ids": "semantic_ids", "evaluation_results": "evaluation", "exports": "sequence_exports",
}


def producers_of(*artifacts: str) -> list[str]:
    """Asset keys that write the named artifacts (accessor names of ``DatasetLayout``)."""
    unknown = [a for a in artifacts if a not in PRODUCERS]
    if unknown:
        raise KeyError(f"no producing asset known for {unknown}; known: {sorted(PRODUCERS)}")
    return list(dict.fromkeys(PRODUCERS[a] for a in artifacts))
