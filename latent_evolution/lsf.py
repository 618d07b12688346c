"""`python -m latent_evolution.lsf FOLDER`, kept for LSF jobs submitted before the code moved to
`latent_evolution.cluster.lsf`: their scripts re-run this module when they are requeued.

It also keeps the submitit plugin's old names: an editable install updated by `git pull`,
without a reinstall, still lists `latent_evolution.lsf:LSFExecutor` and `:LSFJobEnvironment`
as its entry points, and submitit loads them in every job of every app in the environment.
"""

from latent_evolution.cluster.lsf import LSFExecutor, LSFJobEnvironment, main

__all__ = ["LSFExecutor", "LSFJobEnvironment", "main"]

if __name__ == "__main__":
    main()
