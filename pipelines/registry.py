"""The dataset registry: one declarative YAML file (``data/datasets.yaml``) validated on load.

Adding a dataset in an already supported format is a new registry entry, no code. Every error
names the registry file, the dataset and the key at fault.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.columns import MAX_BEHAVIORS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REGISTRY = REPO_ROOT / "data" / "datasets.yaml"
REGISTRY_ENV = "MBREC_REGISTRY"
MAX_SHARDS = 4096

FormatName = Literal["taobao", "tmall", "retailrocket", "kuaisar", "tenrec", "behavior_set_splits"]

# File roles each format reads; the registry maps roles to file names inside data/raw/<dataset>/.
FORMAT_FILE_ROLES: dict[str, dict[str, bool]] = {  # role -> required
    "taobao": {"events": True},
    "tmall": {"events": True},
    "retailrocket": {"events": True, "item_properties": False, "category_tree": False},
    "kuaisar": {"events": True, "item_features": False},
    "tenrec": {"events": True},
    "behavior_set_splits": {"train": True, "valid": True, "between": True, "test": True},
}


class RegistryError(ValueError):
    """The registry file is missing, unreadable or invalid."""


# Every stage that takes options under `stages:` and the model that validates them (imported when the
# registry loads, so a typo in any stage fails the load with the dataset and key named).
STAGE_OPTIONS: dict[str, str] = {
    "sequences": "pipelines.sequences.options:SequenceOptions",
    "augmentation": "pipelines.augmentation.options:AugmentationOptions",
    "semantic_ids": "pipelines.semantic_ids.options:SemanticIdOptions",
    "training": "pipelines.training.stage:TrainingOptions",
}


def check_stage_options(cfg: "DatasetConfig") -> list[str]:
    """Problems with ``cfg.stages``: unknown stage names, and every stage's own validation."""
    import importlib

    problems = [f"datasets.{cfg.name}.stages.{name}: unknown stage; stages with options: {sorted(STAGE_OPTIONS)}"
                for name in cfg.stages if name not in STAGE_OPTIONS]
    for name in cfg.stages:
        if name in STAGE_OPTIONS:
            module, cls = STAGE_OPTIONS[name].split(":")
            try:
                getattr(importlib.import_module(module), cls).of(cfg)
            except RegistryError as e:
                problems.append(str(e))
    return problems


def stage_options(model: type[BaseModel], cfg: "DatasetConfig", stage: str, label: str) -> Any:
    """Validate ``datasets.<name>.stages.<stage>`` with a pydantic ``model``; errors name every bad key."""
    try:
        return model.model_validate(cfg.stages.get(stage, {}))
    except ValidationError as e:
        where = "; ".join(f"datasets.{cfg.name}.stages.{stage}.{'.'.join(map(str, x['loc']))}: {x['msg']}"
                          for x in e.errors())
        raise RegistryError(f"invalid {label} options: {where}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Behavior(_Strict):
    """One behavior of the dataset's vocabulary."""

    name: str = Field(description="Canonical name used everywhere downstream (e.g. 'buy').")
    code: str | int | None = Field(
        default=None,
        description="How the raw file spells it: a label ('pv', 2) for single-label formats, a "
        "column name for flag formats, a position (1-based among b1..bB) for behavior-set splits. "
        "Defaults to the name.",
    )
    level: int = Field(ge=0, description="Funnel level, low to high (pv 0 < cart 1 < buy 2).")

    @property
    def raw_code(self) -> str:
        return str(self.name if self.code is None else self.code)


class TimeSpec(_Strict):
    """How the raw files spell time and how fine it is."""

    unit: Literal["s", "ms", "mmdd", "none"] = Field(
        description="Raw unit: Unix seconds, Unix milliseconds, month*100+day (with `year`), or no time column."
    )
    granularity: Literal["ms", "s", "day", "none"] = Field(description="Finest real resolution.")
    year: int | None = Field(default=None, description="Year implied by 'mmdd' timestamps.")
    utc_offset_hours: float = Field(
        default=0.0, description="Offset of the raw local time from UTC ('mmdd' days and window dates)."
    )
    valid_from: date | None = Field(default=None, description="Events before this date are quarantined.")
    valid_to: date | None = Field(default=None, description="Events on or after this date are quarantined.")

    @model_validator(mode="after")
    def _consistent(self) -> "TimeSpec":
        if self.unit == "mmdd" and self.year is None:
            raise ValueError("unit 'mmdd' needs `year`")
        if (self.unit == "none") != (self.granularity == "none"):
            raise ValueError("unit 'none' and granularity 'none' go together")
        if self.valid_from and self.valid_to and self.valid_from >= self.valid_to:
            raise ValueError("valid_from must be before valid_to")
        return self


class IngestOptions(_Strict):
    bad_row_threshold: float = Field(
        default=0.001, ge=0.0, le=1.0, description="Fail when quarantined rows exceed this share of rows read."
    )
    drop_exact_duplicates: bool = Field(
        default=True,
        description="Drop rows whose user, item, behaviors and timestamp repeat an earlier row "
        "(never for datasets without time, where repeats are distinct exposures).",
    )


class SyntheticOptions(_Strict):
    """Generator settings used when data/raw/<dataset>/ holds no files."""

    users: int = Field(default=1500, ge=10)
    items: int = Field(default=1200, ge=10)
    topics: int = Field(default=16, ge=2)
    seed: int = 0
    events_per_user: float = Field(default=60.0, gt=1)
    variant: Literal["video", "article"] = "video"


class RunResources(_Strict):
    """What one run of this dataset asks a cluster for (Kubernetes quantities, e.g. "2", "500m", "8Gi")."""

    cpu: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?m?$")
    memory: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")


class DatasetConfig(_Strict):
    name: str
    format: FormatName
    description: str = ""
    aliases: list[str] = Field(default_factory=list, description="Names other papers use for this data.")
    files: dict[str, str | list[str]] = Field(
        description="File role -> file name (or list of names, read in order) inside data/raw/<dataset>/."
    )
    behaviors: list[Behavior] = Field(description="Vocabulary in bitmask order, low level to high.")
    auxiliary: list[str] = Field(default_factory=list)
    targets: list[str]
    time: TimeSpec
    ingest: IngestOptions = Field(default_factory=IngestOptions)
    synthetic: SyntheticOptions = Field(default_factory=SyntheticOptions)
    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-stage options, validated by each stage."
    )
    resources: RunResources = Field(
        default_factory=RunResources,
        description="CPU and memory a run of this dataset requests under Kubernetes (the dagster-k8s/config run "
        "tag the sensors attach); a shard run of a sharded dataset asks for the same.",
    )
    shards: int = Field(
        default=1, ge=1, le=MAX_SHARDS,
        description="User-hash shards (FNV-1a 64 of the raw user id, mod shards): with more than one, the "
        "per-user stages also run as dataset x shard partitions (the 'shards' asset group), one run per shard.",
    )

    @field_validator("behaviors")
    @classmethod
    def _behaviors(cls, v: list[Behavior]) -> list[Behavior]:
        if not v:
            raise ValueError("at least one behavior is required")
        if len(v) > MAX_BEHAVIORS:
            raise ValueError(f"at most {MAX_BEHAVIORS} behaviors fit the bitmask, got {len(v)}")
        names = [b.name for b in v]
        if len(set(names)) != len(names):
            raise ValueError(f"behavior names repeat: {names}")
        codes = [b.raw_code for b in v]
        if len(set(codes)) != len(codes):
            raise ValueError(f"behavior codes repeat: {codes}")
        levels = [b.level for b in v]
        if levels != sorted(levels):
            raise ValueError(f"list behaviors from low to high level; levels are {levels}")
        return v

    @model_validator(mode="after")
    def _references(self) -> "DatasetConfig":
        names = self.behavior_names
        for key in ("auxiliary", "targets"):
            for b in getattr(self, key):
                if b not in names:
                    raise ValueError(f"{key}: behavior '{b}' is not in the vocabulary {names}")
        if not self.targets:
            raise ValueError("targets: name at least one target behavior")
        roles = FORMAT_FILE_ROLES[self.format]
        unknown = sorted(set(self.files) - set(roles))
        if unknown:
            raise ValueError(f"files: unknown role(s) {unknown} for format '{self.format}'; known: {sorted(roles)}")
        missing = sorted(r for r, required in roles.items() if required and r not in self.files)
        if missing:
            raise ValueError(f"files: format '{self.format}' needs role(s) {missing}")
        if self.format == "tenrec" and self.time.unit != "none":
            raise ValueError("time: Tenrec files have no time column; use unit 'none'")
        if why := self.not_shardable(self.shards):
            raise ValueError(why)
        return self

    def not_shardable(self, n: int) -> str | None:
        """Why this dataset cannot run as ``n`` > 1 user-hash shards (None when it can)."""
        if n <= 1:
            return None
        if self.format == "behavior_set_splits":
            return "shards: a split release is read whole (its roles come from its files); use shards: 1"
        seq = self.stages.get("sequences", {})
        if seq.get("min_user_steps") or seq.get("min_item_steps"):
            return ("shards: the iterative k-core (stages.sequences.min_user_steps/min_item_steps) needs global "
                    "counts every round, so it runs on one shard; use shards: 1 or drop the k-core")
        return None

    def file_names(self, role: str) -> list[str]:
        """The file names of one role, in reading order ([] when the role is not configured)."""
        value = self.files.get(role, [])
        return [value] if isinstance(value, str) else list(value)

    @property
    def all_file_names(self) -> list[str]:
        return [f for role, f in self.reading_order()]

    def reading_order(self) -> list[tuple[str, str]]:
        """(role, file name) in the order ingest reads files: the format's role order, then list order.

        A file's position here is its index in ``event_order`` (when every file is present), so the
        release's order train, valid, between, test holds whatever order the registry lists roles in.
        """
        return [(role, f) for role in FORMAT_FILE_ROLES[self.format] for f in self.file_names(role)]

    @property
    def behavior_names(self) -> list[str]:
        return [b.name for b in self.behaviors]

    def behavior_bit(self, name: str) -> int:
        """The bitmask value of one behavior; a clear error if it is not in the vocabulary."""
        try:
            return 1 << self.behavior_names.index(name)
        except ValueError:
            raise KeyError(
                f"dataset '{self.name}': behavior '{name}' is not in its vocabulary {self.behavior_names}"
            ) from None


class Registry(_Strict):
    path: Path
    datasets: dict[str, DatasetConfig]
    broken: dict[str, str] = Field(default_factory=dict, description="dataset -> why its entry is invalid")
    order: list[str] = Field(default_factory=list, description="every dataset name in file order, broken included")

    def get(self, name: str) -> DatasetConfig:
        if name in self.broken:
            raise RegistryError(self.broken[name])
        try:
            return self.datasets[name]
        except KeyError:
            raise RegistryError(
                f"{self.path}: no dataset '{name}'; known datasets: {sorted(self.datasets)}"
            ) from None

    @property
    def names(self) -> list[str]:
        """Every dataset of the file (broken ones too: they show up, and fail with their error when run)."""
        return self.order or list(self.datasets)


def _format_error(path: Path, dataset: str | None, err: ValidationError, skip: set[str] = frozenset()) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if loc in skip:
            continue
        where = ".".join(x for x in ("datasets" if dataset else "", dataset or "", loc) if x)
        lines.append(f"  {where}: {e['msg']}")
    head = f"{path}: invalid registry entry" + (f" for dataset '{dataset}'" if dataset else "")
    return head + "\n" + "\n".join(lines) if lines else ""


def _in(mapping: Any, loc: tuple[Any, ...]) -> bool:
    """Whether the key path ``loc`` exists in a nested mapping."""
    for key in loc:
        if not isinstance(mapping, dict) or key not in mapping:
            return False
        mapping = mapping[key]
    return True


def load_registry(path: str | os.PathLike[str] | None = None, *, strict: bool = True) -> Registry:
    """Load and validate the registry (default: $MBREC_REGISTRY or data/datasets.yaml).

    Every entry is validated and every error is reported at once: a key that is wrong under
    ``defaults:`` is reported once as ``defaults.<key>``, not as a key of every dataset. ``strict``
    (the default) raises when any entry is invalid; otherwise the valid datasets load and the broken
    ones are listed in ``Registry.broken`` (``get`` raises their error), so one bad entry does not
    stop the others (the Dagster code location loads this way).
    """
    path = Path(path or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found") from None
    except yaml.YAMLError as e:
        raise RegistryError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict) or not raw["datasets"]:
        raise RegistryError(f"{path}: expected a top-level mapping `datasets:` with at least one dataset")
    extra = sorted(set(raw) - {"datasets", "defaults"})
    if extra:
        raise RegistryError(f"{path}: unknown top-level key(s) {extra}; expected 'datasets' and 'defaults'")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise RegistryError(f"{path}: `defaults:` must be a mapping")
    datasets: dict[str, DatasetConfig] = {}
    broken: dict[str, str] = {}
    default_errors: dict[str, str] = {}
    for name, entry in raw["datasets"].items():
        name = str(name)
        if not isinstance(entry, dict):
            broken[name] = f"{path}: dataset '{name}' must be a mapping"
            continue
        if not name.replace("_", "").isalnum() or name != name.lower():
            broken[name] = f"{path}: dataset name '{name}' must be lower_snake_case"
            continue
        merged = {**_deep_merge(defaults, entry), "name": name}
        try:
            datasets[name] = DatasetConfig.model_validate(merged)
            stage_problems = check_stage_options(datasets[name])
            if stage_problems:
                del datasets[name]
                broken[name] = (f"{path}: invalid stage options for dataset '{name}'\n"
                                + "\n".join(f"  {m}" for m in stage_problems))
        except ValidationError as e:
            from_defaults = {".".join(map(str, x["loc"])): x["msg"] for x in e.errors()
                             if x["loc"] and _in(defaults, x["loc"]) and not _in(entry, x["loc"])}
            default_errors.update(from_defaults)
            own = _format_error(path, name, e, skip=set(from_defaults))
            broken[name] = own or (f"{path}: dataset '{name}' is invalid because of `defaults:`: "
                                   + "; ".join(f"defaults.{k}: {m}" for k, m in from_defaults.items()))
    problems = [f"{path}: invalid `defaults:` entry\n" + "\n".join(f"  defaults.{k}: {m}" for k, m in
                                                                   sorted(default_errors.items()))] if default_errors else []
    problems += [msg for msg in broken.values() if "because of `defaults:`" not in msg]
    if problems and strict:
        raise RegistryError("\n".join(problems))
    return Registry(path=path, datasets=datasets, broken=broken, order=[str(n) for n in raw["datasets"]])


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
