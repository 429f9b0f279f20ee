"""The ``slurm`` launcher against a real Slurm (``.ci/slurm`` starts a one-node one): what a
new user meets on a cluster, each case of issue 18 reproduced first.

Tiny jobs (RotatedDigits, batches of 8, 1 CPU, 1 GB). A test that must interrupt a job
mid-run first freezes its training process (SIGSTOP; the pid is in the folder's
``train.lock``), so the job cannot finish before the interruption arrives, then lets it
go on (Slurm sends SIGCONT with its own signals). Records are compared with DomainBed's
own ``train.py`` run with the same arguments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = json.dumps({"batch_size": 8})


@pytest.fixture
def slurm_env(slurm, subprocess_env, tmp_path):
    """Environment for a sweep on the test cluster; cancels what the test submitted."""
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("DOMAINBED_SLURM_")}
    env.update(DOMAINBED_SLURM_GPUS="0", DOMAINBED_SLURM_CPUS="1", DOMAINBED_SLURM_MEM_GB="1",
               DOMAINBED_SLURM_TIME="30", DOMAINBED_SLURM_LOG_DIR=str(tmp_path / "logs"),
               DOMAINBED_SLURM_POLL="1")
    yield env
    ids = {p.name.split("_")[0] for p in (tmp_path / "logs").glob("*") if p.is_dir()}
    ids |= {p.read_text().split("_")[0].strip() for p in tmp_path.glob("*/*/slurm_job")}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=60)


def sweep_args(command, out, data, *, steps=40, freq=10, jobs=("0",), extra=()):
    return ["domainbed_surgery.scripts.sweep", command, "--datasets", "RotatedDigits",
            "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1", "--single_test_envs",
            "--test_envs", *jobs, "--steps", str(steps), "--checkpoint_freq", str(freq),
            *common_args(out, data), *extra]


def common_args(out, data):
    return ["--hparams", TINY, "--data_dir", str(data), "--output_dir", str(out),
            "--command_launcher", "slurm", "--skip_confirmation"]


def run(args, env, cwd, timeout=900):
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def records(folder: Path) -> list[dict]:
    out = []
    path = folder / "results.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        record = json.loads(line)
        record.pop("step_time")
        record["args"].pop("output_dir")
        out.append(record)
    return out


def steps_of(folder: Path) -> list[int]:
    return [r["step"] for r in records(folder)]


def domainbed_records(job: Path, env, cwd) -> list[dict]:
    """DomainBed's own train.py with the arguments of the job in ``job``: the reference."""
    args = records(job)[0]["args"]
    argv = []
    for key, value in sorted(args.items()):
        if isinstance(value, bool):
            argv += [f"--{key}"] if value else []
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    reference = cwd / "reference" / job.name
    proc = run(["domainbed.scripts.train", *argv, "--output_dir", str(reference)], env, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return records(reference)


def training_pid(job: Path):
    """The pid of the training process holding ``job``'s lock, once it has a record."""
    try:
        if not records(job):
            return None
        return json.loads((job / "train.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def start_sweep(env, out: Path, tmp_path: Path) -> subprocess.Popen:
    """The one-job sweep of :func:`sweep_args`, launched in the background."""
    return subprocess.Popen([sys.executable, "-m", *sweep_args("launch", out, tmp_path)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def first_record(out: Path) -> tuple[Path, int]:
    """The sweep's job folder and its training pid, once the job has written a record."""
    job = wait_for(lambda: out.is_dir() and next(out.iterdir(), None), 120, "the job folder")
    return job, wait_for(lambda: training_pid(job), 300, "the job's first record")


def slurm_task(job: Path) -> str:
    return (job / "slurm_job").read_text().strip()


def listed(task: str) -> bool:
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", task.split("_")[0]],
                          capture_output=True, text=True, timeout=60)
    return task in proc.stdout.split()


def more_cpus_than_a_node() -> str:
    """A CPU count no node of the test cluster has (4 on a 2-CPU node)."""
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True,
                          timeout=60, check=True)
    return str(max(int(n) for n in proc.stdout.split()) + 2)


def only_job(out: Path) -> Path:
    jobs = [d for d in out.iterdir() if d.is_dir()]
    assert len(jobs) == 1, jobs
    return jobs[0]


# -- 1. an interrupted waiting launcher cancels its jobs; alive folders are never touched ---------
def test_sigterm_to_the_waiting_launcher_cancels_its_jobs_and_relaunch_continues(
        slurm_env, tmp_path):
    """Issue 18.1: SIGTERM to the waiting launcher (DOMAINBED_SLURM_WAIT=1) while its job runs:
    it says so, cancels the job (scancel; the job saves its state) and exits 143 once Slurm
    lists the job no more. A relaunch continues the job: the records of an uninterrupted run,
    each once."""
    env = dict(slurm_env, DOMAINBED_SLURM_WAIT="1")
    out = tmp_path / "sweep"
    sweep = start_sweep(env, out, tmp_path)
    try:
        job, pid = first_record(out)
        os.kill(pid, signal.SIGSTOP)  # it cannot finish before the SIGTERM below
        task = slurm_task(job)
        assert listed(task)
        sweep.send_signal(signal.SIGTERM)
        stdout, stderr = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "cancelling the 1 job(s) it submitted" in stderr
    assert not listed(task)  # gone before the launcher exited
    assert not (job / "done").exists()
    assert 1 <= len(steps_of(job)) < 5

    again = run(sweep_args("launch", out, tmp_path), env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Also launching the 1 incomplete job(s)" in again.stdout
    assert "Resuming at step" in (job / "out.txt").read_text()
    assert records(job) == domainbed_records(job, slurm_env, tmp_path)
    assert steps_of(job) == [0, 10, 20, 30, 39]


LAUNCH_SLEEPS = """
from domainbed_surgery.launch.slurm import slurm_launcher
slurm_launcher(["sleep 300", "sleep 300"])
"""


def test_ctrl_c_to_the_waiting_launcher_cancels_running_and_pending_tasks(slurm_env, tmp_path):
    """Issue 18.1 with Ctrl-C (SIGINT): one task running, one pending (array parallelism 1);
    the launcher cancels both, waits until Slurm lists neither, and ends by the SIGINT
    (``KeyboardInterrupt`` re-raised: a shell sees status 130)."""
    env = dict(slurm_env, DOMAINBED_SLURM_WAIT="1", DOMAINBED_SLURM_ARRAY_PARALLELISM="1")
    # As at a terminal: SIGINT at its default in the launcher, also when this test run was
    # started in the background (SIGINT ignored, inherited), which the launcher keeps.
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCH_SLEEPS], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        logs = tmp_path / "logs"
        array = wait_for(lambda: logs.is_dir() and next(logs.glob("*_0"), None), 120,
                         "the submission").name.split("_")[0]

        def running_first():
            proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", array],
                                  capture_output=True, text=True, timeout=60)
            return dict(line.split() for line in proc.stdout.splitlines()).get(f"{array}_0") \
                == "RUNNING"

        wait_for(running_first, 120, "the first task to run")
        assert listed(f"{array}_1")  # pending behind it
        launcher.send_signal(signal.SIGINT)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == -signal.SIGINT, stderr[-3000:]
    assert "cancelling the 2 job(s) it submitted" in stderr
    assert not listed(f"{array}_0") and not listed(f"{array}_1")


def test_alive_jobs_are_neither_deleted_nor_relaunched(slurm_env, tmp_path):
    """Issue 18.1 with DOMAINBED_SLURM_WAIT=0 (the Slurm default): the launcher returns while
    the job runs; `delete_incomplete` keeps the folder and `launch` submits nothing while
    Slurm lists the job. When it ends, its records are there, each once."""
    out = tmp_path / "sweep"
    launched = run(sweep_args("launch", out, tmp_path), slurm_env, tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    job = only_job(out)
    pid = wait_for(lambda: training_pid(job), 300, "the job's first record")
    os.kill(pid, signal.SIGSTOP)  # still running through both sweeps below
    try:
        deleted = run(sweep_args("delete_incomplete", out, tmp_path), slurm_env, tmp_path)
        assert deleted.returncode == 0, deleted.stderr[-3000:]
        assert "Running: " in deleted.stdout and "Deleted 0 jobs!" in deleted.stdout
        assert job.is_dir() and records(job)
        relaunched = run(sweep_args("launch", out, tmp_path), slurm_env, tmp_path)
        assert relaunched.returncode == 0, relaunched.stderr[-3000:]
        assert "1 job(s) still running" in relaunched.stdout
        assert "Launched 0 jobs!" in relaunched.stdout
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: (job / "done").exists(), 600, "the job to end")
    assert steps_of(job) == [0, 10, 20, 30, 39]


# -- 2, 3. preemption (requeue) and time limit (SIGUSR2): continued, no duplicate -----------
def test_requeue_and_time_limit_signal_continue_the_job_without_duplicates(slurm_env, tmp_path):
    """Issue 18.2 and 18.3: `scontrol requeue` of the running task (what a preemption does),
    then Slurm's time-limit signal (submitit's SIGUSR2, sent as `scancel --signal=USR2`):
    each time the job saves its state (requeued by Slurm, then by submitit) and continues;
    the waiting launcher reports success, and the records are DomainBed's, each once."""
    env = dict(slurm_env, DOMAINBED_SLURM_WAIT="1")
    out = tmp_path / "sweep"
    sweep = start_sweep(env, out, tmp_path)
    try:
        job, pid = first_record(out)
        os.kill(pid, signal.SIGSTOP)
        task = slurm_task(job)
        subprocess.run(["scontrol", "requeue", task], check=True, timeout=60)
        # the requeued process, once it has resumed (a signal before that would find it
        # still starting, with nothing to save yet)
        second = wait_for(lambda: (p := training_pid(job)) not in (None, pid)
                          and (job / "out.txt").read_text().count("Resuming at step") == 1 and p,
                          300, "the requeued job to continue")
        os.kill(second, signal.SIGSTOP)
        subprocess.run(["scancel", "--signal=USR2", task], check=True, timeout=60)
        os.kill(second, signal.SIGCONT)
        stdout, stderr = sweep.communicate(timeout=900)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    assert stderr.count(f"job {task} was requeued") == 2
    assert "1 succeeded, 0 failed" in stderr
    log = (job / "out.txt").read_text()
    assert log.count("Resuming at step") == 2
    assert records(job) == domainbed_records(job, slurm_env, tmp_path)


# -- 4. more jobs than MaxArraySize -----------------------------------------------------------------
def test_more_jobs_than_max_array_size_are_split_into_arrays(slurm_env, tmp_path):
    """Issue 18.4: a few more jobs than the cluster's MaxArraySize (read with `scontrol show
    config`; 1001 on .ci/slurm's cluster, so 1,004 jobs): two arrays, the first of
    MaxArraySize tasks, every job folder records its task, and a relaunch leaves them all
    alone. (Cancelled at once: nothing here needs them to run.)"""
    from domainbed_surgery.launch import cluster

    limit = cluster.max_array_size()
    if limit > 2001:
        pytest.skip(f"MaxArraySize {limit}: too many jobs for a test (.ci/slurm's cluster: 1001)")
    n_hparams = (limit + 3 + 3) // 4  # x 4 targets: at least 3 jobs more than the limit
    n_jobs = 4 * n_hparams
    out = tmp_path / "sweep"
    args = sweep_args("launch", out, tmp_path, jobs=("0", "1", "2", "3"))
    args[args.index("--n_hparams") + 1] = str(n_hparams)
    env = dict(slurm_env, DOMAINBED_SLURM_ARRAY_PARALLELISM="1")
    launched = run(args, env, tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert f"Launched {n_jobs} jobs!" in launched.stdout
    assert f"submitted {n_jobs} job(s)" in launched.stderr
    tasks = [slurm_task(d) for d in out.iterdir()]
    arrays = {}
    for task in tasks:
        array, index = task.split("_")
        arrays.setdefault(array, set()).add(int(index))
    assert sorted(len(v) for v in arrays.values()) == sorted([limit, n_jobs - limit])
    assert sorted(map(max, arrays.values())) == sorted([limit - 1, n_jobs - limit - 1])
    relaunched = run(args, env, tmp_path)
    assert f"{n_jobs} job(s) still running" in relaunched.stdout
    assert "Launched 0 jobs!" in relaunched.stdout
    subprocess.run(["scancel", *arrays], check=True, timeout=60)


# -- 5, 6. hangs and setup errors: said, with the variable, before any folder ------------------------
@pytest.mark.parametrize("variable,value,expected", [
    ("DOMAINBED_SLURM_GPUS", "1", "set DOMAINBED_SLURM_GPUS=0 for CPU jobs"),
    ("DOMAINBED_SLURM_CPUS", None, "set DOMAINBED_SLURM_CPUS to at most"),
])
def test_a_request_the_cluster_cannot_satisfy_stops_before_any_folder(slurm_env, tmp_path,
                                                                      variable, value, expected):
    """Issue 18.5 (a request that would pend for ever) and 18.6 (a GPU asked of a GPU-less
    cluster): our sweep stops before making any folder and names the variable. Through
    DomainBed's own sweep (which makes the folders first) the launcher removes the empty
    folders, so that the relaunch submits them instead of launching 0 jobs."""
    env = dict(slurm_env, **{variable: value or more_cpus_than_a_node()})
    out = tmp_path / "sweep"
    proc = run(sweep_args("launch", out, tmp_path), env, tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stderr and "Nothing was submitted" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    theirs = run(["domainbed.scripts.sweep", "launch", "--datasets", "RotatedDigits",
                  "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
                  "--single_test_envs", "--steps", "40", *common_args(out, tmp_path)], env,
                 tmp_path)
    assert theirs.returncode != 0 and expected in theirs.stderr
    assert out.is_dir() and not any(out.iterdir())  # their folders made, and removed again


def test_waiting_launcher_reports_jobs_that_can_never_end_well(slurm, tmp_path, monkeypatch,
                                                               capsys):
    """Issue 18.5: the waiting launcher detects, names and counts (exit non-zero) a pending task
    cancelled with scancel, a task whose job process is killed with kill -9, and a request
    that pends for ever (the setup check bypassed to let it reach the queue); the healthy
    job succeeds."""
    from domainbed_surgery.launch import slurm as slurm_launcher

    for key in [k for k in os.environ if k.startswith("DOMAINBED_SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in {"GPUS": "0", "CPUS": "1", "MEM_GB": "1", "TIME": "10", "POLL": "1",
                       "WAIT": "1", "ARRAY_PARALLELISM": "1",
                       "LOG_DIR": str(tmp_path / "logs")}.items():
        monkeypatch.setenv(f"DOMAINBED_SLURM_{key}", value)
    monkeypatch.chdir(tmp_path)
    # the job process (submitit's, in the task) is the parent of the guard, $PPID of the shell
    submitit_pid = tmp_path / "submitit.pid"
    commands = [f"awk '{{print $4}}' /proc/$PPID/stat > {submitit_pid}; sleep 120",
                "sleep 120", "true"]
    failures = []

    def disturb():
        try:
            jobs = wait_for(lambda: list((tmp_path / "logs").glob("*_0")), 120, "submission")
            array = jobs[0].name.split("_")[0]
            pid = int(wait_for(lambda: submitit_pid.exists() and submitit_pid.read_text().strip(),
                               120, "the first job to start"))
            subprocess.run(["scancel", f"{array}_1"], check=True, timeout=60)  # pending
            os.kill(pid, signal.SIGKILL)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    threading.Thread(target=disturb, daemon=True).start()
    t0 = time.time()
    with pytest.raises(SystemExit) as exc:
        slurm_launcher.slurm_launcher(commands)
    assert not failures, failures
    assert time.time() - t0 < 300
    err = capsys.readouterr().err
    assert "1 succeeded, 2 failed" in err and "2 of 3 job(s) failed" in str(exc.value.code)
    killed, cancelled = (line for line in err.splitlines() if " FAILED: " in line)
    assert "_0 FAILED: ended without a result: Slurm says FAILED" in killed  # kill -9
    assert "_1 FAILED: left the queue before it ran" in cancelled  # scancel while pending

    # a request that can never start, when the setup check is bypassed
    monkeypatch.setattr(slurm_launcher, "check_setup", lambda params=None: None)
    monkeypatch.setenv("DOMAINBED_SLURM_CPUS", more_cpus_than_a_node())
    with pytest.raises(SystemExit):
        slurm_launcher.slurm_launcher(["true"])
    err = capsys.readouterr().err
    assert "can never start: pending with reason PartitionConfig" in err
    assert "0 succeeded, 1 failed" in err
    never = err.split("FAILED job ")[1].split(":")[0]
    assert not listed(never), f"job {never} left pending for ever in the queue"
