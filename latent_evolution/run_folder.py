"""Names under their module before the code moved into subpackages, for the jobs of sweeps
submitted before the move: a requeued job's pickled task function takes them from here
(tests/test_old_run_folder.py). The run folder's contract is `latent_evolution.runs`."""

from latent_evolution.runs.folder import RunStatus
from latent_evolution.runs.metrics import objective, read_metrics

__all__ = ["RunStatus", "objective", "read_metrics"]
