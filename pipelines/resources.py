"""The one Dagster resource every asset uses: where the registry and the data live."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from pipelines.registry import DatasetConfig, Registry, load_registry
from pipelines.layout import DATA_ROOT_ENV, data_root_path, default_data_root
from pipelines.remote import RemoteRoot, remote_root
from pipelines.storage import DatasetPaths


class PipelineSettings(dg.ConfigurableResource):
    """Registry path and data root; both default to the repository's data/ and can be set by env vars.
    The data root may be an object-store URL: stages then work in its local working copy, which the
    steps pull before and push after (``remote()``, ``assets/object_store.py``)."""

    registry_path: str = ""  # "" = $MBREC_REGISTRY or data/datasets.yaml
    data_root: str = ""  # "" = $MBREC_DATA_ROOT or data/

    def registry(self) -> Registry:
        return load_registry(self.registry_path or None, strict=False)

    def dataset(self, name: str) -> DatasetConfig:
        return self.registry().get(name)

    def data_root_path(self) -> Path:
        return data_root_path(self.data_root) if self.data_root else default_data_root()

    def paths(self, name: str) -> DatasetPaths:
        return DatasetPaths(self.data_root_path(), name)

    def remote(self) -> RemoteRoot | None:
        """The object store behind the data root (None when the data root is a folder)."""
        return remote_root(self.data_root or os.environ.get(DATA_ROOT_ENV, ""))
