"""A real one-node Slurm cluster on 127.0.0.1 for tests: munged, slurmctld and slurmd.

Everything (config, keys, sockets, state, logs) lives in one temp folder; the daemons run in
the foreground as children of this process, so `stop()` ends exactly them, by PID. Each GPU
type is a partition on the same node, so a test can check where a job was sent.

A requeued job may start again after `cred_expire` seconds (default 120) and is picked up at
the next `sched_interval` (default 60 s); both are cut to seconds so preemption tests are quick.

The node declares more CPUs, memory and GPUs than a CI box has (`config_overrides`), so the
lab's real hardware presets (12 CPUs, 64 GB, gres gpu:1 per job) schedule unchanged;
task/none and proctrack/linuxproc enforce nothing, so the jobs simply share the real cores.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PARTITIONS = ("gpu_l4", "gpu_a100", "gpu_h100", "gpu_h200")
NODE = "localhost"
USER = getpass.getuser()  # daemons and jobs all run as whoever runs the tests
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
START_TIMEOUT_S = 60
GPUS = 8  # per node; more than one sweep of four GPU types needs at once


def missing_programs() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not _sbin(name)]


def _sbin(name: str) -> str | None:
    path = Path("/usr/sbin") / name
    return str(path) if path.exists() else None


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: all bound at once, so the kernel cannot hand one out twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int) -> str:
    partitions = "\n".join(
        f"PartitionName={p} Nodes={NODE} Default={'YES' if p == PARTITIONS[0] else 'NO'} State=UP"
        for p in PARTITIONS
    )
    return f"""\
ClusterName=latent-test
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={USER}
SlurmdUser={USER}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket.2,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
GresTypes=gpu
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=64 RealMemory=524288 Gres=gpu:{GPUS} State=UNKNOWN
{partitions}
"""


class SlurmTestCluster:
    """Start with `start()`, use with SLURM_CONF=`self.conf` in the environment, `stop()` after."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, attempts: int = 3) -> None:
        """Start the daemons; on fresh ports again if one died: between choosing a port and a
        daemon binding it, another process (another xdist worker's cluster) may take it."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start()
            except RuntimeError:
                died = any(p.poll() is not None for p in self.procs.values())
                self._end_daemons()
                (self.root / "munge" / "munge.socket.2").unlink(missing_ok=True)
                if not died or attempt == attempts:
                    raise

    def _start(self) -> None:
        for sub in ("munge", "state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)  # munged refuses a socket folder others can write
        key = self.root / "munge" / "munge.key"
        key.unlink(missing_ok=True)  # read-only from an earlier attempt
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(slurm_conf(self.root, *_free_ports(2)))
        self._write_gres_conf()
        munge = self.root / "munge"
        self._spawn(
            "munged",
            "-F",
            "-f",
            f"--socket={munge}/munge.socket.2",
            f"--key-file={key}",
            f"--pid-file={munge}/munged.pid",
            f"--log-file={munge}/munged.log",
            f"--seed-file={munge}/munged.seed",
        )
        self._wait_for(lambda: (munge / "munge.socket.2").exists(), "munged socket")
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-N", NODE, "-f", str(self.conf))
        self._wait_for(self._node_idle, "node idle")

    def _write_gres_conf(self) -> None:
        """Eight stand-in GPU "devices": plain files, since slurmd only needs paths to hand out."""
        devices = self.root / "dev"
        devices.mkdir(exist_ok=True)
        for i in range(GPUS):
            (devices / f"gpu{i}").touch()
        (self.root / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={NODE} Name=gpu File={devices}/gpu[0-{GPUS - 1}]\n"
        )

    def _spawn(self, name: str, *args: str) -> None:
        program = shutil.which(name) or _sbin(name) or name
        log = (self.root / f"{name}.stdout").open("wb")
        self.procs[name] = subprocess.Popen(
            [program, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env
        )

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return out.strip().startswith("idle")

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"test Slurm cluster: no {what} (dead: {dead}); logs in {self.root}"
                )
            time.sleep(0.2)

    def run(self, *command: str, check: bool = True) -> str:
        """Run a Slurm client command against this cluster; stdout as text."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        """End the daemons this object started, newest first, by PID."""
        try:
            if self.procs:  # jobs first: slurmstepd outlives slurmd, and so would the job
                self.run("scancel", f"--user={USER}", check=False)
                self._wait_for(lambda: not self.run("squeue", "-h", check=False), "empty queue")
        finally:
            self._end_daemons()

    def _end_daemons(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
