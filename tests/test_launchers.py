"""The ``parallel`` and ``slurm`` launchers, and their registration into DomainBed."""

import _thread
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import domainbed_surgery
from domainbed_surgery.launch import launchers, parallel
from domainbed_surgery.plugin.registration import RegistrationConflict, add_launchers

PY = shlex.quote(sys.executable)


@pytest.fixture
def cpu_env(monkeypatch):
    """CPU mode, 2 jobs at once, whatever machine the tests run on."""
    monkeypatch.setenv("DOMAINBED_PARALLEL_GPUS", "none")
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", "2")
    monkeypatch.delenv("DOMAINBED_PARALLEL_THREADS", raising=False)
    monkeypatch.delenv("DOMAINBED_PARALLEL_PER_GPU", raising=False)


def record(path: Path, sleep: float = 0.0, code: int = 0) -> str:
    """A shell command writing start/end times and its thread env vars to ``path``."""
    script = (
        "import json, os, sys, time; t0 = time.time(); time.sleep(%r); "
        "json.dump({'start': t0, 'end': time.time(), "
        "'omp': os.environ.get('OMP_NUM_THREADS'), 'mkl': os.environ.get('MKL_NUM_THREADS'), "
        "'cuda': os.environ.get('CUDA_VISIBLE_DEVICES')}, open(%r, 'w')); sys.exit(%d)"
        % (sleep, str(path), code))
    return f"{PY} -c {shlex.quote(script)}"


def test_output_dir_parsing():
    cmd = "python -m domainbed.scripts.train --algorithm ERM --output_dir '/a b/c' --seed 0"
    assert launchers.output_dir_of(cmd) == "/a b/c"
    assert launchers.output_dir_of("python -c pass --output_dir=/x") == "/x"
    assert launchers.output_dir_of("true") is None


def test_parallel_runs_concurrently_and_sets_threads(tmp_path, cpu_env, monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 8)
    files = [tmp_path / f"r{i}.json" for i in range(4)]
    results = launchers.parallel_launcher([record(f, sleep=0.8) for f in files],
                                          progress=False)
    assert [r.returncode for r in results] == [0, 0, 0, 0]
    runs = [json.loads(f.read_text()) for f in files]
    assert all(r["omp"] == "4" and r["mkl"] == "4" for r in runs)  # 8 cores // 2 jobs
    # at most 2 at once, and some two overlap in time
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    assert peak == 2


def test_parallel_threads_and_gpu_slots(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 16)
    monkeypatch.setenv("DOMAINBED_PARALLEL_GPUS", "0,3")
    monkeypatch.setenv("DOMAINBED_PARALLEL_PER_GPU", "2")
    plan = launchers.ParallelPlan.from_env()
    assert [s["CUDA_VISIBLE_DEVICES"] for s in plan.slots] == ["0", "3", "0", "3"]
    assert plan.threads == 4 and all(s["OMP_NUM_THREADS"] == "4" for s in plan.slots)
    monkeypatch.setenv("DOMAINBED_PARALLEL_GPUS", "none")
    monkeypatch.delenv("DOMAINBED_PARALLEL_JOBS", raising=False)
    plan = launchers.ParallelPlan.from_env()
    assert len(plan.slots) == 8 and plan.threads == 2  # default: cores // 2 jobs
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", "32")
    assert launchers.ParallelPlan.from_env().threads == 1  # never below 1
    monkeypatch.setenv("DOMAINBED_PARALLEL_JOBS", "zero")
    with pytest.raises(ValueError, match="DOMAINBED_PARALLEL_JOBS"):
        launchers.ParallelPlan.from_env()


def test_gpu_slots_get_their_device(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINBED_PARALLEL_GPUS", "5,7")
    files = [tmp_path / f"g{i}.json" for i in range(2)]
    launchers.parallel_launcher([record(f, sleep=0.3) for f in files], progress=False)
    assert sorted(json.loads(f.read_text())["cuda"] for f in files) == ["5", "7"]


def test_parallel_failure_does_not_stop_others(tmp_path, cpu_env, capsys):
    out = tmp_path / "job_fail"
    cmds = [record(tmp_path / "a.json"),
            f"exit 3 # --output_dir {out}",
            record(tmp_path / "b.json", code=0),
            record(tmp_path / "c.json", code=5)]
    with pytest.raises(SystemExit) as exc:
        launchers.parallel_launcher(cmds, progress=False)
    assert exc.value.code not in (0, None)  # the sweep exits non-zero
    assert "2 of 4 job(s) failed" in str(exc.value.code)
    results = exc.value.results
    assert [r.returncode for r in results] == [0, 3, 0, 5]
    assert (tmp_path / "a.json").exists() and (tmp_path / "b.json").exists()
    err = capsys.readouterr().err
    assert "2 succeeded, 2 failed" in err
    assert "exit code 3" in err and f"{out}/err.txt" in err and "exit code 5" in err
    assert results[1].log == str(out / "launcher.txt")
    assert not (out / "done").exists()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def sigint_handled():
    """Ctrl-C as a terminal delivers it: a suite started as ``nohup ... &`` inherits an
    ignored SIGINT, and then ``_thread.interrupt_main`` (our simulated Ctrl-C) does nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_keyboard_interrupt_kills_children_and_leaves_jobs_incomplete(tmp_path, cpu_env,
                                                                      monkeypatch, sigint_handled):
    monkeypatch.setenv("DOMAINBED_PARALLEL_KILL_GRACE", "2")
    cmds = []
    for i in range(3):  # 2 run, 1 waits
        out = tmp_path / f"job{i}"
        out.mkdir()
        (out / "out.txt").write_text("partial\n")
        script = (f"import os, time; open({str(out / 'pid')!r}, 'w').write(str(os.getpid())); "
                  f"time.sleep(60); open({str(out / 'done')!r}, 'w').write('')")
        # a grandchild in the background: the whole process group must go
        cmds.append(f"sleep 60 & {PY} -c {shlex.quote(script)}; wait # --output_dir {out}")
    pid_files = [tmp_path / f"job{i}" / "pid" for i in range(2)]

    def interrupt():
        deadline = time.time() + 20
        while time.time() < deadline and not all(p.exists() for p in pid_files):
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        launchers.parallel_launcher(cmds, progress=False)
    assert time.time() - t0 < 20
    pids = [int(p.read_text()) for p in pid_files]
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    for i in range(3):
        out = tmp_path / f"job{i}"
        assert out.is_dir() and (out / "out.txt").read_text() == "partial\n"  # nothing deleted
        assert not (out / "done").exists()
    assert not (tmp_path / "job2" / "pid").exists()  # the queued job never started


def test_interrupted_job_is_incomplete_for_domainbed_sweep(tmp_path, cpu_env, sigint_handled):
    """DomainBed's own Job sees an interrupted job as Incomplete (so delete_incomplete works)."""
    sweep = pytest.importorskip("domainbed.scripts.sweep")
    args = {"dataset": "RotatedDigits", "algorithm": "ERM", "test_envs": [0],
            "hparams_seed": 0, "data_dir": str(tmp_path), "trial_seed": 0, "seed": 0}
    job = sweep.Job(args, str(tmp_path))
    os.makedirs(job.output_dir)
    cmd = f"sleep 30 # --output_dir {job.output_dir}"
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        launchers.parallel_launcher([cmd], progress=False)
    assert sweep.Job(args, str(tmp_path)).state == sweep.Job.INCOMPLETE


# -- registration ------------------------------------------------------------------------
def test_registration_is_idempotent_and_reported(domainbed):
    domainbed_surgery.register()
    from domainbed import command_launchers

    assert command_launchers.REGISTRY["parallel"] is launchers.parallel_launcher
    assert command_launchers.REGISTRY["slurm"] is launchers.slurm_launcher
    before = dict(command_launchers.REGISTRY)
    assert domainbed_surgery.register()["launchers"] == ["parallel", "slurm"]
    assert command_launchers.REGISTRY == before
    assert command_launchers.REGISTRY["local"].__module__ == "domainbed.command_launchers"


def test_foreign_launcher_is_not_replaced(domainbed, monkeypatch):
    from domainbed import command_launchers

    def foreign(commands):
        pass

    monkeypatch.setitem(command_launchers.REGISTRY, "parallel", foreign)
    with pytest.raises(RegistrationConflict, match="parallel"):
        add_launchers(command_launchers, strict=True)
    assert command_launchers.REGISTRY["parallel"] is foreign
    with pytest.warns(RuntimeWarning, match="does not replace"):
        add_launchers(command_launchers, strict=False)
    assert command_launchers.REGISTRY["parallel"] is foreign
    assert command_launchers.REGISTRY["slurm"] is launchers.slurm_launcher


# -- slurm via submitit's local executor -------------------------------------------------------
def test_slurm_parameters_from_env(monkeypatch):
    for k, v in {"PARTITION": "gpu", "TIME": "90", "GPUS": "2", "CPUS": "8", "MEM_GB": "64",
                 "ARRAY_PARALLELISM": "10"}.items():
        monkeypatch.setenv("DOMAINBED_SLURM_" + k, v)
    p = launchers.slurm_parameters()
    assert (p["slurm_partition"], p["timeout_min"], p["gpus_per_node"], p["cpus_per_task"],
            p["mem_gb"], p["slurm_array_parallelism"]) == ("gpu", 90, 2, 8, 64, 10)
    monkeypatch.delenv("DOMAINBED_SLURM_PARTITION")
    assert "slurm_partition" not in launchers.slurm_parameters()


def test_slurm_local_executor_runs_jobs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("DOMAINBED_SLURM_CLUSTER", "local")
    monkeypatch.setenv("DOMAINBED_SLURM_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("DOMAINBED_SLURM_GPUS", "0")
    monkeypatch.setenv("DOMAINBED_SLURM_TIME", "2")
    cmds = [f"echo {i} > {tmp_path / f'marker{i}'}" for i in range(3)]
    cmds.append(f"exit 3 # --output_dir {tmp_path / 'bad'}")
    with pytest.raises(SystemExit) as exc:
        launchers.slurm_launcher(cmds)
    assert exc.value.code not in (0, None) and "1 of 4 job(s) failed" in str(exc.value.code)
    jobs = exc.value.results
    assert len(jobs) == 4
    for i in range(3):
        assert (tmp_path / f"marker{i}").read_text().strip() == str(i)
        assert jobs[i].result() == 0
    assert "exit status 3" in str(jobs[3].exception())
    err = capsys.readouterr().err
    assert "3 succeeded, 1 failed" in err and f"{tmp_path / 'bad'}/err.txt" in err
    assert "returned non-zero exit status 3" in err


# -- the sweep killed: SIGTERM like Ctrl-C; after SIGKILL the jobs die with it ----------------
LAUNCH = {
    "parallel": "import sys; from domainbed_surgery.launch import launchers; "
                "launchers.parallel_launcher(sys.argv[1:], progress=False)",
    "slurm": "import sys; from domainbed_surgery.launch import launchers; "
             "launchers.slurm_launcher(sys.argv[1:])",
}


def job_writing_pids(out: Path) -> str:
    """A job that records its guard's pid, its python pid and a background grandchild's pid,
    then runs 60 s."""
    script = (f"import os, time; open({str(out / 'pid')!r}, 'w').write(str(os.getpid())); "
              f"time.sleep(60); open({str(out / 'done')!r}, 'w').write('done')")
    return (f"echo $PPID > {shlex.quote(str(out / 'guard'))}; "
            f"sleep 60 & echo $! > {shlex.quote(str(out / 'bg'))}; "
            f"{PY} -c {shlex.quote(script)}; wait # --output_dir {out}")


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("launcher_name,sig", [("parallel", "SIGTERM"), ("parallel", "SIGKILL"),
                                                ("slurm", "SIGTERM")])
def test_killed_launcher_leaves_no_job_behind(tmp_path, launcher_name, sig):
    """The sweep's process killed (slurm: DOMAINBED_SLURM_CLUSTER=local) mid-way: no job
    process survives it, none writes ``done``, the queued one never starts. Jobs that end
    on SIGTERM go at once, their guards too: the grace period is only for stubborn ones."""
    import signal

    if launcher_name == "slurm":
        pytest.importorskip("submitit")
    outs = [tmp_path / f"job{i}" for i in range(3)]  # 2 run, 1 waits
    for out in outs:
        out.mkdir()
    env = dict(os.environ, DOMAINBED_PARALLEL_GPUS="none", DOMAINBED_PARALLEL_JOBS="2",
               DOMAINBED_PARALLEL_KILL_GRACE="30", DOMAINBED_SLURM_CLUSTER="local",
               DOMAINBED_SLURM_ARRAY_PARALLELISM="2", DOMAINBED_SLURM_GPUS="0",
               DOMAINBED_SLURM_LOG_DIR=str(tmp_path / "logs"))
    log = open(tmp_path / "launcher.log", "w")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCH[launcher_name],
                                 *map(job_writing_pids, outs)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    pid_files = [out / name for out in outs[:2] for name in ("guard", "pid", "bg")]
    pids = []
    try:
        assert wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pid_files), 30)
        pids = [int(p.read_text()) for p in pid_files]
        assert all(_alive(p) for p in pids)
        launcher.send_signal(getattr(signal, sig))
        launcher.wait(timeout=20)
        assert wait_for(lambda: not any(_alive(p) for p in pids), 8), \
            f"job processes outlived the launcher's {sig}: {[p for p in pids if _alive(p)]}"
        if sig == "SIGTERM":  # handled like Ctrl-C: says so, exits non-zero
            assert launcher.returncode not in (0, None)
            assert "2 running" in (tmp_path / "launcher.log").read_text()
        assert not any((out / "done").exists() for out in outs)
        assert not (outs[2] / "pid").exists()  # the queued job never started
    finally:
        log.close()
        for pid in pids + [launcher.pid]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        launcher.wait()


# -- slurm without Slurm ------------------------------------------------------------------------
def test_slurm_without_slurm_is_an_error_not_a_local_run(tmp_path, monkeypatch):
    """No sbatch and DOMAINBED_SLURM_CLUSTER unset: submitit would quietly run every job here
    at once; the launcher must refuse before starting anything."""
    pytest.importorskip("submitit")
    monkeypatch.delenv("DOMAINBED_SLURM_CLUSTER", raising=False)
    monkeypatch.setenv("DOMAINBED_SLURM_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))  # no sbatch, no srun
    cmds = [f"echo {i} > {tmp_path / f'marker{i}'}" for i in range(4)]
    made = tmp_path / "job_folder"  # as DomainBed's sweep makes it before launching
    made.mkdir()
    cmds.append(f"true --output_dir {made}")
    with pytest.raises(SystemExit) as exc:
        launchers.slurm_launcher(cmds)
    message = str(exc.value.code)
    assert "sbatch" in message and "DOMAINBED_SLURM_CLUSTER=local" in message
    assert "parallel" in message
    time.sleep(1.0)
    assert not list(tmp_path.glob("marker*"))  # nothing ran, nothing was submitted
    assert not made.exists()  # so that DomainBed's sweep, run again, launches the job


def test_slurm_cluster_is_slurm_when_sbatch_is_there(tmp_path, monkeypatch):
    """With sbatch on PATH, submitit is asked for Slurm explicitly (never its local fallback)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    monkeypatch.delenv("DOMAINBED_SLURM_CLUSTER", raising=False)
    assert launchers.slurm_cluster() == "slurm"
    monkeypatch.setenv("DOMAINBED_SLURM_CLUSTER", "local")
    assert launchers.slurm_cluster() == "local"


def test_slurm_local_honours_array_parallelism(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("DOMAINBED_SLURM_CLUSTER", "local")
    monkeypatch.setenv("DOMAINBED_SLURM_ARRAY_PARALLELISM", "2")
    monkeypatch.setenv("DOMAINBED_SLURM_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("DOMAINBED_SLURM_GPUS", "0")
    files = [tmp_path / f"r{i}.json" for i in range(4)]
    jobs = launchers.slurm_launcher([record(f, sleep=1.5) for f in files])
    assert [j.result() for j in jobs] == [0, 0, 0, 0]
    runs = [json.loads(f.read_text()) for f in files]
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    assert peak == 2


# -- progress on the terminal while the output goes to a log (sweeps/demo.sh) -------------------
def test_progress_reaches_the_terminal_when_output_is_logged(tmp_path):
    """DOMAINBED_PARALLEL_PROGRESS=tty: the bar goes to the controlling terminal, the rest
    (summary, failures) to stderr, here a log file, as in sweeps/demo.sh."""
    import pty

    log_path = tmp_path / "launch.log"
    code = ("import sys; from domainbed_surgery.launch import launchers; "
            "launchers.parallel_launcher(['true', 'true', 'true'])")
    env = dict(os.environ, DOMAINBED_PARALLEL_PROGRESS="tty", DOMAINBED_PARALLEL_GPUS="none",
               DOMAINBED_PARALLEL_JOBS="2")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own, its stdout and stderr into the log
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.execve(sys.executable, [sys.executable, "-c", code], env)
    terminal = b""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    logged = log_path.read_text()
    assert b"parallel (CPU, 2 at once" in terminal and b"3/3" in terminal
    assert "3 succeeded, 0 failed" in logged and "parallel (CPU" not in logged


# -- our launchers run the train that continues where it stopped (issue 18.3) ----------------
def test_domainbed_train_commands_run_as_the_resumable_train():
    from domainbed_surgery.launch.process import resumable

    cmd = "python -m domainbed.scripts.train --algorithm ERM --output_dir '/a b/c'"
    assert resumable(cmd) == ("exec python -m domainbed_surgery.scripts.train --algorithm ERM "
                              "--output_dir '/a b/c'")
    for other in ("python -m domainbed.scripts.train --x 1; echo y",  # not one command
                  "python -m domainbed.scripts.train_other --x 1", "sleep 1", "echo "
                  "python -m domainbed.scripts.train"):
        assert resumable(other) == other


def _steps(folder: Path) -> list:
    path = folder / "results.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] \
        if path.exists() else []


def test_parallel_sweep_stopped_mid_job_continues_on_relaunch(domainbed, subprocess_env, tmp_path):
    """SIGTERM to a parallel sweep while its job trains (frozen after its first record): the
    job saves its state and the sweep exits 143; the same command again continues the job
    (`Also launching the 1 incomplete job(s)`): every record once, as an uninterrupted run."""
    import signal

    env = dict(subprocess_env, DOMAINBED_PARALLEL_GPUS="none", DOMAINBED_PARALLEL_JOBS="1",
               DOMAINBED_PARALLEL_KILL_GRACE="60")
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "domainbed_surgery.scripts.sweep", "launch", "--datasets",
            "RotatedDigits", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
            "--single_test_envs", "--test_envs", "0", "--steps", "20", "--checkpoint_freq", "5",
            "--hparams", '{"batch_size": 8}', "--data_dir", str(tmp_path), "--output_dir",
            str(out), "--command_launcher", "parallel", "--skip_confirmation"]
    sweep = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline, pid = time.time() + 300, None
        while pid is None and time.time() < deadline:
            jobs = [d for d in out.iterdir() if d.is_dir()] if out.is_dir() else []
            if jobs and _steps(jobs[0]):
                pid = json.loads((jobs[0] / "train.lock").read_text())["pid"]
            time.sleep(0.1)
        assert pid, "the job wrote no record in 300 s"
        os.kill(pid, signal.SIGSTOP)  # it cannot finish before the SIGTERM below
        sweep.send_signal(signal.SIGTERM)
        time.sleep(2)  # the launcher has signalled the job's group
        os.kill(pid, signal.SIGCONT)
        _, stderr = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    job = jobs[0]
    assert not (job / "done").exists() and (job / "resume.pt").exists()
    assert 1 <= len(_steps(job)) < 5
    again = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Also launching the 1 incomplete job(s)" in again.stdout
    assert "Resuming at step" in (job / "out.txt").read_text()
    assert _steps(job) == [0, 5, 10, 15, 19]
