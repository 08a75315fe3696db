"""semid_pipeline: semantic-ID generative recommendation as a Dagster code location.

The package has two layers:

* ``semid_pipeline.core`` -- pure Python / torch: data loaders, tag generation, tokenizers,
  the generative recommender, baselines and metrics. No Dagster imports; testable alone.
* ``semid_pipeline.assets`` (+ ``resources``, ``io_managers``, ``checks``, ``jobs``) -- the thin
  Dagster orchestration layer. ``semid_pipeline.definitions.defs`` is the code location.
"""

__version__ = "0.1.0"
