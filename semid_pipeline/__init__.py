"""semid_pipeline: semantic-ID generative recommendation as a Dagster code location.

The package has two layers:

* ``semid_pipeline.core`` -- pure Python / torch: data loaders, tag generation, tokenizers,
  the generative recommender, baselines and metrics. No Dagster imports; testable alone.
* ``semid_pipeline.assets`` (+ ``resources``, ``io_managers``, ``metadata``, ``partitions``,
  ``jobs``, ``sensors``) -- the thin Dagster orchestration layer; asset checks are declared next to
  their assets. ``semid_pipeline.definitions.defs`` is the code location.
* ``semid_pipeline.devtools`` -- test and benchmark rigs (stand-in servers, the ``transformers``
  adapter); the pipeline never imports them.

``docs/DESIGN.md`` opens with a map of where each kind of code lives.
"""

__version__ = "0.1.0"
