"""Partitions shared by every stage: one partition per dataset in the registry."""

import dagster as dg

from pipelines.registry import load_registry

dataset_partitions = dg.StaticPartitionsDefinition(load_registry().names)
