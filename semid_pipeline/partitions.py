"""Every asset is partitioned by dataset: one partition key per declared dataset.

The keys are the names in the datasets files (``core/data/registry.py``: the built-in
``semid_pipeline/configs/datasets.yaml`` plus ``SEMID_DATASETS_FILE``), read when the definitions
load, as a *static* partitions definition rather than Dagster's dynamic partitions:

- a declared dataset is a partition everywhere at once (UI, ``--partition`` on the CLI, the jobs,
  the retokenize schedule, the incoming-items sensor) with no extra step: dynamic partitions exist
  only after someone adds them to the instance (``dagster instance`` API or a sensor), so a fresh
  instance, an ephemeral test instance or a second deployment would not know them;
- the list is a file under version control, reviewed like code and identical on every machine
  that loads the code location; the instance holds no second copy that can drift from it;
- schedules and sensors iterate the keys without reading the instance.

The cost: a new or renamed entry appears after the code location reloads (``Reload`` in the UI,
or restarting ``dagster dev``), which is also when its declaration is checked.
"""

from dagster import StaticPartitionsDefinition

from semid_pipeline.core.data.registry import DATASETS

dataset_partitions = StaticPartitionsDefinition(list(DATASETS))
