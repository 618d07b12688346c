"""The scheduler side: the submitit LSF executor (lsf) and the one place that asks Slurm or
LSF about jobs and converts job ids (scheduler). Neither torch nor Hydra."""
