"""The LSF submitit backend: script text, parsers, and real jobs through the LSF stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from latent_evolution.cluster.lsf import (
    FINISHED_STATES,
    PENDING_STATES,
    RUNNING_STATES,
    VANISHED,
    LSFExecutor,
    LSFJob,
    is_finished,
    make_bsub_script,
    parse_submit_output,
)
from latent_evolution.cluster.scheduler import (
    lsf_element,
    lsf_report_name,
    parse_bjobs_output,
    parse_not_found,
    submitit_id,
)
from latent_evolution.errors import ConfigError

if TYPE_CHECKING:  # imported by pytest_plugins below (an earlier import skips assert rewriting)
    from tests.lsf_standin import StandIn

pytest_plugins = ["tests.lsf_standin"]  # the lsf_standin fixture

# Job processes cannot import this module (tests/ is not on their path): ship functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ------------------------------------------------------------------------------ script text


def test_script_has_sorted_exact_directives_then_setup_then_command(tmp_path: Path) -> None:
    script = make_bsub_script(
        command="python -u -m latent_evolution.lsf /jobs",
        folder=tmp_path / "jobs",
        name="lr",
        queue="gpu_a100",
        slots=12,
        gpu="num=1",
        project="flyvis",
        timeout_min=240,
        mem_gb=64,
        setup=["module load cuda"],
    )
    logs = tmp_path / "jobs"
    assert script == (
        "#!/bin/bash\n\n# Parameters\n"
        '#BSUB -J "lr"\n'
        '#BSUB -M "65536MB"\n'
        '#BSUB -P "flyvis"\n'
        '#BSUB -R "rusage[mem=65536MB] span[hosts=1]"\n'
        "#BSUB -W 240\n"
        f'#BSUB -e "{logs}/%J_lsf.err"\n'
        '#BSUB -gpu "num=1"\n'
        "#BSUB -n 12\n"
        f'#BSUB -o "{logs}/%J_lsf.out"\n'
        '#BSUB -q "gpu_a100"\n'
        '#BSUB -wa "USR2"\n'
        "#BSUB -wt 2\n"
        "\n# setup\nmodule load cuda\n"
        "\n# command\nexport SUBMITIT_EXECUTOR=lsf\n"
        "exec python -u -m latent_evolution.lsf /jobs\n"
    )


def test_array_script_limits_concurrency_and_names_logs_per_element(tmp_path: Path) -> None:
    script = make_bsub_script(
        command="run",
        folder=tmp_path / "jobs" / "%j",  # logs go to the id-independent folder
        name="sweep",
        map_count=5,
        array_parallelism=2,
        signal_delay_min=3,
        timeout_min=30,
        stderr_to_stdout=True,
        additional_directives={"-R": "select[ncpus>8]", "x": True, "W": 20},
    )
    lines = script.splitlines()
    assert '#BSUB -J "sweep[1-5]%2"' in lines
    assert f'#BSUB -o "{tmp_path}/jobs/%J_%I_lsf.out"' in lines
    assert not any(line.startswith("#BSUB -e") for line in lines)  # stderr joins stdout
    assert '#BSUB -R "select[ncpus>8]"' in lines  # one slot: no span; the user's -R kept
    assert "#BSUB -x" in lines and "#BSUB -W 20" in lines  # additional directives override
    assert '#BSUB -wa "USR2"' in lines and "#BSUB -wt 3" in lines
    directives = [line for line in lines if line.startswith("#BSUB")]
    assert directives == sorted(directives)


def _requirement(**params: object) -> str:
    script = make_bsub_script(command="run", folder="/jobs", **params)
    (line,) = [line for line in script.splitlines() if line.startswith("#BSUB -R ")]
    return line.removeprefix("#BSUB -R ")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"slots": 12, "mem_gb": 64}, '"rusage[mem=65536MB] span[hosts=1]"'),
        # RESOURCE_RESERVE_PER_TASK=Y: rusage counts per slot, so 64 GB over 12 slots
        ({"slots": 12, "mem_gb": 64, "mem_per": "slot"}, '"rusage[mem=5462MB] span[hosts=1]"'),
        ({"slots": 8}, '"span[hosts=1]"'),
        (  # the user's select and rusage join ours in one requirement
            {"slots": 8, "mem_gb": 1, "additional_directives": {"R": "select[a100] rusage[tmp=5]"}},
            '"select[a100] rusage[mem=1024MB, tmp=5] span[hosts=1]"',
        ),
        (  # a bare expression is a select; the user's own span and mem reservation win
            {
                "slots": 8,
                "mem_gb": 1,
                "additional_directives": {"R": "ok span[ptile=4] rusage[mem=9]"},
            },  # noqa: E501
            '"select[ok] rusage[mem=9] span[ptile=4]"',
        ),
        (  # alternatives: our memory goes into each
            {"slots": 2, "mem_gb": 1, "additional_directives": {"R": "rusage[lic_a=1||lic_b=1]"}},
            '"rusage[mem=1024MB:lic_a=1||mem=1024MB:lic_b=1] span[hosts=1]"',
        ),
    ],
)
def test_resource_requirement_is_one_string_sites_accept(params: dict, expected: str) -> None:
    assert _requirement(**params) == expected


def test_array_limit_is_never_above_the_array_size(tmp_path: Path) -> None:
    script = make_bsub_script(command="run", folder=tmp_path, map_count=3, array_parallelism=256)
    assert '#BSUB -J "submitit[1-3]%3"' in script.splitlines()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"slots": 0}, r"slots=0: must be a positive integer"),
        ({"timeout_min": 5, "signal_delay_min": 5}, r"signal_delay_min=5: must be >= 1 and <"),
        ({"mem_gb": -1}, r"mem_gb=-1: must be > 0"),
        ({"name": "a[1]"}, r"name='a\[1\]': no brackets"),
        ({"queue": 'gpu"a100'}, r"queue='gpu\"a100': no double quotes"),
        ({"partition": "x"}, r"partition='x': one of \["),
        ({"mem_per": "host"}, r"mem_per='host': must be one of job, slot"),
    ],
)
def test_bad_parameters_fail_at_update_with_one_line(
    lsf_standin: StandIn, tmp_path: Path, params: dict, match: str
) -> None:
    executor = LSFExecutor(folder=tmp_path)
    with pytest.raises(ConfigError, match=match):
        executor.update_parameters(**params)


def test_executor_needs_bsub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="Could not find bsub on PATH"):
        LSFExecutor(folder=tmp_path)


# ------------------------------------------------------------------------------ parsers, ids


def test_array_ids_map_lsf_one_based_to_submitit_zero_based() -> None:
    assert lsf_element("123") == "123"
    assert lsf_element("123_0") == "123[1]"
    assert lsf_element("123_3") == "123[4]"
    assert submitit_id("123", 0) == "123"  # LSB_JOBINDEX=0: not an array
    assert submitit_id("123", 4) == "123_3"
    assert all(lsf_element(submitit_id("77", i)) == f"77[{i}]" for i in range(1, 5))
    # LSF's -o file of each (%J_%I), and none for another launcher's job id
    assert [lsf_report_name(i) for i in ("123", "123_0", "my_app_3")] == [
        "123_lsf.out",
        "123_1_lsf.out",
        None,
    ]


def test_parse_submit_output() -> None:
    assert parse_submit_output("Job <123> is submitted to queue <gpu_a100>.") == "123"
    assert parse_submit_output(b"Job <9> is submitted to default queue <normal>.\n") == "9"
    with pytest.raises(submitit.core.utils.FailedSubmissionError, match="Could not read a job id"):
        parse_submit_output("Request aborted by esub. Job not submitted.")


def test_parse_bjobs_output_reads_every_state_and_array_elements() -> None:
    states = [*PENDING_STATES, *RUNNING_STATES, *FINISHED_STATES]
    assert len(states) == 11
    sample = "".join(f"500 {i} {s} {'1' if s == 'EXIT' else '-'}\n" for i, s in enumerate(states))
    sample += "Job <501> is not found\n"
    infos = parse_bjobs_output(sample)
    assert infos["500"] == {"State": "PEND", "ExitCode": "-"}  # index 0: the plain job
    assert {infos[f"500_{i - 1}"]["State"] for i in range(1, 11)} == set(states[1:])
    assert infos["500_9"] == {"State": "EXIT", "ExitCode": "1"}
    assert "501" not in infos


def test_only_done_exit_and_vanished_are_finished() -> None:
    assert [s for s in (*PENDING_STATES, *RUNNING_STATES) if is_finished(s)] == []
    assert is_finished("USUSP") is False and is_finished("SSUSP") is False
    assert all(is_finished(s) for s in (*FINISHED_STATES, VANISHED))
    assert is_finished("UNKNOWN") is False  # not asked yet


def test_parse_not_found() -> None:
    text = "Job <12> is not found\nJob <13[2]> is not found\n500 1 RUN -\n"
    assert parse_not_found(text) == {"12", "13"}


# ------------------------------------------------------------------------- through the stand-in


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.1)


def _job_identity(x: int) -> tuple[int, str, str, str]:
    env = submitit.JobEnvironment()
    return x * x, env.job_id, os.environ["LSB_JOBINDEX"], os.environ["LSB_QUEUE"]


def test_single_job_returns_its_value_with_the_requested_resources(
    lsf_standin: StandIn, tmp_path: Path
) -> None:
    executor = LSFExecutor(folder=tmp_path / "jobs" / "%j")
    executor.update_parameters(
        queue="gpu_a100", slots=12, gpu="num=1", project="flyvis", timeout_min=60, mem_gb=8
    )
    job = executor.submit(_job_identity, 7)
    assert job.result() == (49, job.job_id, "0", "gpu_a100")
    [submitted] = lsf_standin.submissions()
    assert submitted["argv"] == []  # the script came on stdin
    options = submitted["options"]
    assert (options["q"], options["n"], options["gpu"], options["P"]) == (
        "gpu_a100",
        "12",
        "num=1",
        "flyvis",
    )
    assert (options["W"], options["M"], options["wa"], options["wt"]) == (
        "60",
        "8192MB",
        "USR2",
        "2",
    )
    assert job.get_info(mode="force") == {"State": "DONE", "ExitCode": "-", "Final": "yes"}


def test_auto_executor_with_cluster_lsf(lsf_standin: StandIn, tmp_path: Path) -> None:
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="lsf")
    executor.update_parameters(
        timeout_min=10, cpus_per_task=4, gpus_per_node=1, lsf_queue="gpu_h100"
    )
    assert executor.submit(_job_identity, 3).result()[0] == 9
    options = lsf_standin.submissions()[0]["options"]
    assert (options["n"], options["gpu"], options["q"]) == ("4", "num=1", "gpu_h100")


def _timed_square(x: int, folder: Path) -> int:
    start = time.time()
    time.sleep(1.0)
    (folder / f"{x}.json").write_text(json.dumps([start, time.time()]))
    return x * x


def test_array_of_three_runs_at_most_two_at_once(lsf_standin: StandIn, tmp_path: Path) -> None:
    executor = LSFExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(queue="gpu_l4", slots=8, array_parallelism=2, name="sq")
    jobs = executor.map_array(_timed_square, [1, 2, 3], [tmp_path] * 3)
    assert [job.result() for job in jobs] == [1, 4, 9]
    [submitted] = lsf_standin.submissions()  # one bsub for the whole array
    array_id = parse_submit_output(f"Job <{submitted['job_id']}> is submitted to queue <q>.")
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(3)]
    assert submitted["options"]["J"] == "sq[1-3]%2"
    spans = [json.loads((tmp_path / f"{x}.json").read_text()) for x in (1, 2, 3)]
    running = [sum(s <= t < e for s, e in spans) for t, _ in spans]
    assert max(running) <= 2
    assert (tmp_path / "jobs" / f"{array_id}_1_lsf.out").read_text().count("Successfully") == 1


def _array_identity(x: int) -> tuple[str, str]:
    return submitit.JobEnvironment().job_id, os.environ["LSB_JOBINDEX"]


def test_array_elements_know_their_submitit_id(lsf_standin: StandIn, tmp_path: Path) -> None:
    executor = LSFExecutor(folder=tmp_path)
    with executor.batch():
        jobs = [executor.submit(_array_identity, x) for x in range(2)]
    assert [job.result() for job in jobs] == [(jobs[0].job_id, "1"), (jobs[1].job_id, "2")]


def _fail() -> None:
    raise ValueError("boom: no latent dims")


def test_failing_job_raises_its_exception_with_the_log_path(
    lsf_standin: StandIn, tmp_path: Path
) -> None:
    job = LSFExecutor(folder=tmp_path).submit(_fail)
    with pytest.raises(FailedJobError, match="boom: no latent dims") as error:
        job.result()
    assert str(job.paths.stderr) in str(error.value)
    assert "ValueError: boom" in job.stderr()
    _wait_for(lambda: job.get_info(mode="force").get("State") == "EXIT")
    assert job.get_info(mode="cache")["ExitCode"] == "1"


def _sleep_or_return(x: str, folder: Path) -> str:
    (folder / f"started_{x}").touch()
    if x == "sleep":
        time.sleep(60)
    return x


def test_cancel_one_array_element(lsf_standin: StandIn, tmp_path: Path) -> None:
    executor = LSFExecutor(folder=tmp_path)
    sleeper, quick = executor.map_array(_sleep_or_return, ["sleep", "quick"], [tmp_path] * 2)
    _wait_for(lambda: (tmp_path / "started_sleep").exists())
    sleeper.cancel()  # bkill "ID[1]"
    assert quick.result() == "quick"
    _wait_for(lambda: sleeper.done(force_check=True))
    assert sleeper.state == "EXIT" and quick.state == "DONE"
    array = lsf_standin.job(sleeper.job_id.split("_")[0])
    assert [array["elements"][i]["stat"] for i in ("1", "2")] == ["EXIT", "DONE"]


def test_bkill_of_a_finished_job_is_not_an_error(lsf_standin: StandIn, tmp_path: Path) -> None:
    job = LSFExecutor(folder=tmp_path).submit(_job_identity, 5)
    assert job.result()[0] == 25
    answer = subprocess.run(["bkill", job.job_id], capture_output=True, text=True)
    assert answer.returncode == 255 and "Job has already finished" in answer.stderr  # LSF's
    job.cancel()  # check=True: still no error
    with pytest.raises(subprocess.CalledProcessError):  # an unknown job stays an error
        LSFJob(folder=tmp_path, job_id="999999").cancel()


def test_cancel_jobs_calls_bkill_once_per_batch_and_passes_over_finished_ones(
    lsf_standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from latent_evolution.cluster import scheduler

    done = LSFExecutor(folder=tmp_path / "done").submit(_job_identity, 5)
    assert done.result()[0] == 25
    held = LSFExecutor(folder=tmp_path / "held")
    held.update_parameters(additional_directives={"H": True})  # bsub -H: waits in PSUSP
    array = held.map_array(_job_identity, [1, 2])
    ids = [scheduler.cancel_target("lsf", j.job_id) for j in [done, *array]]
    monkeypatch.setattr(scheduler, "CANCEL_BATCH", 2)
    commands = scheduler.cancel_jobs("lsf", ids)
    assert commands == [["bkill", *ids[:2]], ["bkill", ids[2]]]
    elements = lsf_standin.job(array[0].job_id.split("_")[0])["elements"]
    assert [elements[i]["stat"] for i in ("1", "2")] == ["EXIT", "EXIT"]
    assert (
        scheduler.cancel_target("lsf", array[0].job_id, whole_array=True)
        == (array[0].job_id.split("_")[0])
    )
    assert scheduler.cancel_target("slurm", "77_3") == "77_3"


def test_suspended_job_is_not_finished(lsf_standin: StandIn, tmp_path: Path) -> None:
    job = LSFExecutor(folder=tmp_path).submit(_sleep_or_return, "sleep", tmp_path)
    _wait_for(lambda: (tmp_path / "started_sleep").exists())
    subprocess.run(["bkill", "-s", "STOP", job.job_id], check=True, capture_output=True)
    _wait_for(lambda: job.get_info(mode="force").get("State") == "USUSP")
    assert not job.done(force_check=True)
    job.cancel()
    _wait_for(lambda: job.done(force_check=True))
    assert job.state == "EXIT"


def _exit_without_result() -> None:
    os._exit(3)


def test_vanished_jobs_are_judged_by_their_result_file(
    lsf_standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LSF_STANDIN_CLEAN_S", "0")  # bjobs forgets jobs as soon as they end
    monkeypatch.setattr(LSFJob, "_results_timeout_s", 0)  # no grace for a slow file system
    monkeypatch.setattr(LSFJob.watcher, "not_found_grace_s", 0)  # judge "not found" at once
    executor = LSFExecutor(folder=tmp_path)
    ok, lost = executor.submit(_job_identity, 2), executor.submit(_exit_without_result)
    assert ok.result()[0] == 4
    _wait_for(lambda: lost.done(force_check=True))
    assert ok.get_info(mode="force") == {"State": VANISHED, "Final": "yes"}
    assert (ok.state, lost.state) == ("DONE", "EXIT")
    with pytest.raises(UncompletedJobError, match=r"has not produced any output \(state: EXIT\)"):
        lost.result()


class CountingTask(submitit.helpers.Checkpointable):
    """Counts its starts in a file; the first start waits for the checkpoint signal."""

    def __call__(self, folder: Path) -> int:
        with open(folder / "starts", "a") as f:
            f.write(f"{os.environ['LSB_JOBID']}\n")
        starts = len((folder / "starts").read_text().splitlines())
        if starts == 1:
            (folder / "running").touch()
            time.sleep(60)
        return starts


def test_usr2_checkpoints_requeues_and_resumes_under_the_same_id(
    lsf_standin: StandIn, tmp_path: Path
) -> None:
    job = LSFExecutor(folder=tmp_path / "jobs").submit(CountingTask(), tmp_path)
    _wait_for(lambda: (tmp_path / "running").exists())
    job._interrupt()  # bkill -s USR2 ID: a preemption warning
    assert job.result() == 2
    assert (tmp_path / "starts").read_text().split() == [job.job_id] * 2
    assert len(lsf_standin.submissions()) == 1  # brequeue, not a resubmission
    assert f"Requeued job {job.job_id}" in job.stdout()


def test_warning_before_run_limit_requeues_a_timed_out_job(
    lsf_standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # -W 3 -wt 1: USR2 after 10 s, kill at 15 s (room for a slow start on a loaded machine)
    monkeypatch.setenv("LSF_STANDIN_MINUTE_S", "5")
    executor = LSFExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=3, signal_delay_min=1)
    job = executor.submit(CountingTask(), tmp_path)
    assert job.result() == 2
    assert "this job is timed-out" in job.stderr()


# ------------------------------------------------------------------------- the stand-in itself


def test_standin_bjobs_text_json_and_not_found(lsf_standin: StandIn, tmp_path: Path) -> None:
    script = '#!/bin/bash\n#BSUB -J "a[1-2]"\n#BSUB -q gpu_h200\nexit 0\n'
    submitted = subprocess.run(["bsub"], input=script, capture_output=True, text=True, check=True)
    job_id = parse_submit_output(submitted.stdout)
    assert submitted.stdout == f"Job <{job_id}> is submitted to queue <gpu_h200>.\n"
    fields = ["-o", "jobid jobindex stat exit_code"]
    _wait_for(lambda: _bjobs(*fields, "-noheader", job_id).stdout.count("DONE") == 2)
    text = _bjobs(*fields, "-noheader", job_id, "999")
    assert text.returncode == 255 and text.stderr == "Job <999> is not found\n"
    assert text.stdout == f"{job_id} 1 DONE -\n{job_id} 2 DONE -\n"
    records = json.loads(_bjobs(*fields, "-json", f"{job_id}[2]").stdout)["RECORDS"]
    assert records == [{"JOBID": job_id, "JOBINDEX": "2", "STAT": "DONE", "EXIT_CODE": ""}]
    killed = subprocess.run(["bkill", f"{job_id}[1]"], capture_output=True, text=True)
    assert killed.stderr == f"Job <{job_id}[1]>: Job has already finished\n"


def _bjobs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bjobs", *args], capture_output=True, text=True)
