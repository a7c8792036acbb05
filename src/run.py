"""Deprecated: the jobs moved to ``src/jobs/`` (``src.jobs.common``, ``src.jobs.run``).

Kept only for ``src/sae/job.py``, which still imports these names from here; import from
``src.jobs.common`` instead. Nothing else in the project imports this module.
"""

from src.jobs.common import (  # noqa: F401
    CONF_DIR,
    RESULT_COLUMNS,
    job_context,
    load_activations,
    load_corpus,
    log_to_wandb,
    make_logger,
    quiet_libraries,
    register_resolvers,
    stays_after_cache,
)

_job_context, _log_to_wandb, _quiet_libraries = job_context, log_to_wandb, quiet_libraries  # the old names
