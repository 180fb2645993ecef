"""Partitions shared by every stage: one partition per dataset in the registry."""

import warnings

import dagster as dg

from pipelines.registry import load_registry

# Lenient: one broken entry must not hide the other datasets. Broken datasets still get a partition
# (the UI lists them) and a run of one fails with the entry's error; the load warns about them here.
_registry = load_registry(strict=False)
for _name, _why in _registry.broken.items():
    warnings.warn(f"dataset '{_name}' is not usable: {_why}", stacklevel=1)
dataset_partitions = dg.StaticPartitionsDefinition(_registry.names)
