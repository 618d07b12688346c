"""Configs of the dispatching launchers, registered in Hydra's `hydra/launcher` group.

Unlike hydra-submitit-launcher's, these hold no resource request (queue or partition, CPUs,
memory, time, GPUs): each job's request comes from that job's own composed `hardware` config,
so one sweep over `hardware=l4,a100,h100,h200` sends every job to its own queue. What stays
here is how to submit.

(No `from __future__ import annotations`: Hydra imports plugins outside sys.modules, where
dataclasses cannot resolve string annotations.)
"""

from dataclasses import dataclass, field

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin

LAUNCHERS = "hydra_plugins.latent_evolution_launchers.dispatch_launcher"
PROVIDER = "latent_evolution_launchers"


@dataclass
class DispatchQueueConf:
    _target_: str = ""
    # submitit's pickles, scripts and job logs; %j is the scheduler's job id
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    name: str = "${name}"  # scheduler job name: the experiment's
    dry_run: bool = False  # print each submission script, submit nothing
    wait: bool = True  # false: submit, record the job ids, return at once (frees the login node)
    array_parallelism: int = 256  # jobs of one array running at once
    setup: list[str] = field(default_factory=list)  # shell lines run before python in each job
    # requeues after a time-out, each resuming from the run's checkpoint (preemption: unlimited)
    max_num_timeout: int = 0
    stderr_to_stdout: bool = False


@dataclass
class SlurmDispatchConf(DispatchQueueConf):
    _target_: str = f"{LAUNCHERS}.SlurmDispatchLauncher"
    signal_delay_s: int = 120  # USR2 this long before the time limit, to checkpoint and requeue


@dataclass
class LSFDispatchConf(DispatchQueueConf):
    _target_: str = f"{LAUNCHERS}.LSFDispatchLauncher"
    signal_delay_min: int = 2  # USR2 (-wa/-wt) this long before the run limit, as for Slurm


ConfigStore.instance().store(
    group="hydra/launcher", name="submitit_lsf", node=LSFDispatchConf, provider=PROVIDER
)


class ClaimSubmititSlurm(SearchPathPlugin):
    """Make `hydra/launcher=submitit_slurm` the dispatching launcher, deterministically.

    hydra-submitit-launcher stores its own `submitit_slurm` (one partition per sweep) when Hydra
    imports it. Hydra imports plugin modules in sys.path order, re-running any imported before,
    so a module-level store of the same name wins or loses by path order. A
    conf/hydra/launcher/submitit_slurm.yaml is no way out: Hydra validates such a file against
    the ConfigStore entry of the same name (theirs). Hydra calls search path plugins after it
    has imported every plugin and before it composes anything, so storing here always wins.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        ConfigStore.instance().store(
            group="hydra/launcher", name="submitit_slurm", node=SlurmDispatchConf, provider=PROVIDER
        )
