"""Configs of the dispatching launchers, registered in Hydra's `hydra/launcher` group.

`submitit_slurm` is hydra-submitit-launcher's own SlurmQueueConf (every field, default and
meaning), plus `dry_run`, `wait` and `max_array_size`; `submitit_lsf` has the same generic
fields (BaseQueueConf) plus LSF's own. A job whose composed config has this project's
`hardware` takes its resource request from there (one sweep fills several queues); any other
app's jobs take it from these fields, as with hydra-submitit-launcher.

(No `from __future__ import annotations`: Hydra imports plugins outside sys.modules, where
dataclasses cannot resolve string annotations.)
"""

from dataclasses import dataclass, field
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncherConf
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf

LAUNCHERS = "hydra_plugins.latent_evolution_launchers.dispatch_launcher"
PROVIDER = "latent_evolution_launchers"


@dataclass
class SweepOptions:
    dry_run: bool = False  # print each submission script, submit nothing (needs no scheduler)
    wait: bool = True  # false: submit, record the job ids, return at once (frees the login node)
    # the most jobs one array may hold; a larger group goes out as several arrays. None: the
    # scheduler's default limit (LSF's MAX_JOB_ARRAY_SIZE 1000, Slurm's MaxArraySize 1001)
    max_array_size: int | None = None


@dataclass
class SlurmDispatchConf(SlurmQueueConf, SweepOptions):
    _target_: str = f"{LAUNCHERS}.SlurmDispatchLauncher"


@dataclass
class LSFDispatchConf(BaseQueueConf, SweepOptions):
    """BaseQueueConf's generic fields map as: cpus_per_task -> `-n`, gpus_per_node -> `-gpu
    "num=N"`, mem_gb -> `-M` and `rusage[mem=]`, timeout_min -> `-W`; nodes and tasks_per_node
    must stay 1 (one process per job)."""

    _target_: str = f"{LAUNCHERS}.LSFDispatchLauncher"
    queue: str | None = None  # -q
    project: str | None = None  # -P
    gpu: str | None = None  # the -gpu string ("num=1:gmodel=NVIDIAA100"); wins over gpus_per_node
    # how the site counts rusage[mem]: "job" (LSF's default, per host: the job with span[hosts=1])
    # or "slot" (RESOURCE_RESERVE_PER_TASK=Y in lsb.params: per task, so mem_gb is divided)
    mem_per: str = "job"
    additional_directives: dict[str, Any] = field(default_factory=dict)  # {"R": "select[...]"}
    # USR2 (-wa/-wt) this many minutes before the run limit, to checkpoint; unset: 2, at most
    # a fifth of timeout_min, none below 5 minutes (cluster.scheduler.warning_delay_min)
    signal_delay_min: int | None = None
    max_num_timeout: int = 0
    array_parallelism: int = 256
    setup: list[str] | None = None  # shell lines run before python in each job
    # bjobs polling: seconds between polls once jobs run a while (submitit's delay_s), and how
    # long a job may stay "not found" / ZOMBI / UNKWN before it is judged (cluster.lsf)
    poll_s: float = 30.0
    not_found_grace_s: float = 300.0
    zombi_grace_s: float = 600.0
    unknown_grace_s: float = 3600.0
    # how long a job that ended without its result file is given for the file to appear on a
    # slow shared file system before it counts as failed (submitit's 15 s)
    result_grace_s: float = 15.0


ConfigStore.instance().store(
    group="hydra/launcher", name="submitit_lsf", node=LSFDispatchConf, provider=PROVIDER
)


@dataclass
class LocalLauncherConf(BasicLauncherConf):
    """`hydra/launcher=local`, this project's default (conf/config.yaml): Hydra's basic
    launcher, keeping run folders that hold another config's run (local_launcher)."""

    _target_: str = "hydra_plugins.latent_evolution_launchers.local_launcher.LocalLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="local", node=LocalLauncherConf, provider=PROVIDER
)


class ClaimSubmititSlurm(SearchPathPlugin):
    """Make `hydra/launcher=submitit_slurm` the dispatching launcher, deterministically.

    hydra-submitit-launcher stores its own `submitit_slurm` when Hydra imports it. Hydra imports
    plugin modules in sys.path order, re-running any imported before, so a module-level store of
    the same name wins or loses by path order. Hydra calls search path plugins after it has
    imported every plugin and before it composes anything, so storing here always wins. The node
    is a superset of theirs, so any app written for theirs composes and runs unchanged.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        ConfigStore.instance().store(
            group="hydra/launcher", name="submitit_slurm", node=SlurmDispatchConf, provider=PROVIDER
        )
