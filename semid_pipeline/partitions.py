"""Every asset is partitioned by dataset: one partition key per registered dataset."""

from dagster import StaticPartitionsDefinition

from semid_pipeline.core.data.registry import DATASETS

dataset_partitions = StaticPartitionsDefinition(list(DATASETS))
