"""The ``slurm`` launcher: submit DomainBed's commands as Slurm job arrays with submitit.

Its options are environment variables, listed in :mod:`.slurm_request`.

On Slurm:

- the request is checked before anything is submitted (``sbatch --test-only``,
  :func:`check_setup`; our sweep runs it before it makes any job folder): a request the
  cluster can never satisfy stops with the variable to change;
- the jobs go in arrays of at most the cluster's ``MaxArraySize`` tasks, and each job's
  folder records its task (``slurm_job``), so that ``sweep delete_incomplete`` and a
  relaunch leave the folder alone while Slurm lists the task;
- each job runs our resumable train (:func:`.process.resumable`): at a time limit or
  preemption signal it saves its state and is requeued (submitit's checkpointing), and
  a requeued or relaunched job continues from its last resume state;
- a waiting launcher follows every task with ``squeue`` (:mod:`.watch`): a task that ends
  without a result, or that is pending for a reason that never resolves, is reported
  with its reason, and any failure makes the sweep exit with status 1;
- Ctrl-C, SIGTERM or SIGHUP while submitting or waiting cancel (``scancel``) every job
  this launcher submitted and exit non-zero (130, 128 + the signal number).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import cluster, folders, watch
from .process import (CHECKPOINT_SIGNAL, SAVE_WAIT_S, JobsFailed, StopSignals, Terminated, env,
                      exit_on, kill_groups, output_dir_of, resumable, start_job)
from .slurm_request import (ENV_PREFIX_SLURM, SlurmNotFound, SlurmSetupError, check_setup,
                            slurm_cluster, slurm_parameters)

__all__ = ["ShellCommand", "SlurmNotFound", "SlurmSetupError", "check_setup", "slurm_cluster",
           "slurm_launcher", "slurm_parameters"]


class ShellCommand:
    """A picklable job body: run one shell command; raise if it exits non-zero.

    The command runs under :mod:`.jobguard`, so its processes end with the task.
    Lighter than ``submitit.helpers.CommandFunction``, which keeps the whole stdout
    in memory and pickles it back as the result; DomainBed's train.py already writes
    its own ``out.txt``/``err.txt``, and submitit keeps the job's stdout/stderr logs.

    :meth:`checkpoint` makes it checkpointable for submitit: at a time limit or a
    preemption (SIGUSR2), the command is told to stop (it saves its resume state) and
    the same command is requeued (and continues).
    """

    def __init__(self, command: str) -> None:
        self.command = command
        self._guard: Optional[subprocess.Popen] = None

    def __call__(self) -> int:
        self._guard = start_job(self.command, dict(os.environ), None)  # dies with this task
        try:
            code = self._guard.wait()
        except BaseException:  # the task is being stopped: take the job's processes along
            kill_groups([self._guard])
            raise
        if code != 0:
            raise subprocess.CalledProcessError(code, self.command)
        return code

    def checkpoint(self):
        """Called by submitit (in this task's process) at a time limit or preemption, before
        it requeues the task: SIGUSR2 to the command's group (our train saves its resume state
        after its current step and exits), wait for it, and requeue this same command."""
        import submitit  # noqa: PLC0415

        guard = self._guard
        if guard is not None:
            try:
                os.killpg(guard.pid, CHECKPOINT_SIGNAL)
            except OSError:
                pass
            _wait_exit(guard.pid, SAVE_WAIT_S)
        return submitit.helpers.DelayedSubmission(ShellCommand(self.command))

    def __getstate__(self) -> dict:
        return {"command": self.command}

    def __setstate__(self, state: dict) -> None:
        self.command, self._guard = state["command"], None

    def __repr__(self) -> str:
        return f"ShellCommand({self.command!r})"


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait until child ``pid`` has exited (without reaping it: ``Popen.wait`` may be
    suspended below us, holding its lock), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.1)


def _remove_empty_folders(commands: Sequence[str]) -> int:
    """Remove the job folders of ``commands`` that are still empty (made for jobs that were
    never submitted), so that a relaunch sees them as not launched; return how many."""
    removed = 0
    for command in commands:
        out = output_dir_of(command)
        if out:
            try:
                os.rmdir(out)  # only an empty folder
                removed += 1
            except OSError:
                pass
    return removed


def slurm_launcher(commands: Sequence[str], *, cluster: Optional[str] = None,
                   wait: Optional[bool] = None,
                   executor_factory: Optional[Callable[..., object]] = None) -> list:
    """Submit ``commands`` (see the module docstring); return the submitit jobs, in order.

    ``cluster`` (default: :func:`slurm_cluster`) is submitit's: ``"slurm"``, or
    ``"local"``/``"debug"`` to run here. ``executor_factory(folder=..., cluster=...)``
    replaces ``submitit.AutoExecutor``. With ``wait`` (always for ``local``) it stays until
    every job has ended, lists the failures and raises :class:`JobsFailed` if any.
    """
    originals = list(commands)
    if not originals:
        return []
    commands = [resumable(c) for c in originals]
    try:  # a refusal removes the empty folders DomainBed's sweep made: a relaunch submits them
        cluster_name = slurm_cluster(cluster)
        params = slurm_parameters()
        if cluster_name == "slurm":
            check_setup(params)
    except (SlurmNotFound, SlurmSetupError, ValueError):
        removed = _remove_empty_folders(originals)
        if removed:
            print(f"slurm launcher: removed the {removed} empty job folder(s) made for "
                  "these jobs, so that a relaunch submits them.", file=sys.stderr)
        raise
    import submitit  # noqa: PLC0415 - optional dependency, only for this launcher

    if cluster_name == "local":
        wait = True
    if wait is None:
        default_wait = "1" if cluster_name in ("local", "debug") else "0"
        wait = env(ENV_PREFIX_SLURM + "WAIT", default_wait) not in ("0", "false", "no", "")
    folder = Path(env(ENV_PREFIX_SLURM + "LOG_DIR") or "submitit_logs") / "%j"
    executor = (executor_factory or submitit.AutoExecutor)(folder=folder, cluster=cluster_name)
    executor.update_parameters(**params)
    jobs: list = []
    with StopSignals(handle_ignored_sigint=cluster_name == "local") as stop_signals:
        try:
            if cluster_name == "local":
                limit = params["slurm_array_parallelism"]
                print(f"slurm launcher: running {len(commands)} job(s) on this machine "
                      f"(DOMAINBED_SLURM_CLUSTER=local), at most {limit} at once",
                      file=sys.stderr)
                _submit_throttled(executor, commands, limit, jobs)
            elif cluster_name == "slurm":
                _submit_arrays(executor, commands, jobs, stop_signals)
            else:
                with executor.batch():
                    jobs.extend(executor.submit(ShellCommand(c)) for c in commands)
            ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
            print(f"slurm launcher: submitted {len(jobs)} job(s) ({', '.join(ids)}); "
                  f"logs in {folder.parent}", file=sys.stderr)
            if wait:
                _wait_and_report(cluster_name, commands, jobs)
        except (KeyboardInterrupt, Terminated) as exc:
            with stop_signals.deferred():
                if cluster_name == "local":
                    _cancel_local(jobs)
                elif cluster_name == "slurm":
                    _cancel_slurm(jobs)
            exit_on(exc)
            raise
    return jobs


def _submit_arrays(executor, commands: list[str], jobs: list, stop_signals) -> None:
    """Submit one array per ``MaxArraySize`` commands into ``jobs`` and record each job's
    task in its folder. If an array cannot be submitted, stop with Slurm's reason; the
    arrays already submitted stay (and are said), the unsubmitted jobs' empty folders go."""
    size = cluster.max_array_size()
    for start in range(0, len(commands), size):
        chunk = commands[start:start + size]
        with stop_signals.deferred():  # an array is either submitted and known, or not
            try:
                with executor.batch():
                    submitted = [executor.submit(ShellCommand(c)) for c in chunk]
            except Exception as exc:  # noqa: BLE001 - sbatch's own words, then stop
                removed = _remove_empty_folders(commands[start:])
                done = (f"{len(jobs)} job(s) in earlier arrays were submitted "
                        f"({', '.join(sorted({str(j.job_id).split('_')[0] for j in jobs}))}) "
                        "and run; " if jobs else "")
                raise SystemExit(
                    f"slurm launcher: Slurm refused an array of {len(chunk)} job(s): "
                    f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}. "
                    f"{done}{len(commands) - start} job(s) were not submitted ({removed} empty "
                    "job folder(s) removed, so a relaunch submits them).") from None
            jobs.extend(submitted)
            for command, job in zip(chunk, submitted):
                out = output_dir_of(command)
                if out and os.path.isdir(out):
                    folders.claim_for_slurm(out, str(job.job_id))
        if len(commands) > size:
            print(f"slurm launcher: array {submitted[0].job_id.split('_')[0]}: jobs "
                  f"{start}-{start + len(chunk) - 1} of {len(commands)} (MaxArraySize {size})",
                  file=sys.stderr)


def _submit_throttled(executor, commands: Sequence[str], limit: int, jobs: list,
                      poll_s: float = 0.5) -> None:
    """Submit one job per command into ``jobs``, at most ``limit`` unfinished at once
    (submitit's local executor ignores ``slurm_array_parallelism`` and would start them all)."""
    running: list = []
    for command in commands:
        while len(running) >= limit:
            running = [job for job in running if not job.done()]
            if len(running) >= limit:
                time.sleep(poll_s)
        jobs.append(executor.submit(ShellCommand(command)))
        running.append(jobs[-1])


def _cancel_local(jobs: list) -> None:
    """Stop the unfinished jobs of submitit's local executor (their process trees included)."""
    unfinished = [job for job in jobs if not job.done()]
    print(f"\nslurm launcher: stopping {len(unfinished)} running local job(s); nothing was "
          "marked done.", file=sys.stderr)
    for job in unfinished:
        job.cancel()  # submitit's way: SIGINT to the job's controller process


def _cancel_slurm(jobs: list, wait_s: float = 60.0) -> None:
    """``scancel`` every array this launcher submitted; wait (at most ``wait_s``) until Slurm
    lists none of their tasks, so nothing of them runs on when the launcher has exited."""
    tasks = [str(j.job_id) for j in jobs]
    arrays = sorted({t.split("_")[0] for t in tasks})
    if not arrays:
        return
    print(f"\nslurm launcher: cancelling the {len(tasks)} job(s) it submitted (scancel "
          f"{' '.join(arrays)}); running ones save their resume state. Nothing was marked "
          "done: `python -m domainbed_surgery.scripts.sweep launch` again continues them.",
          file=sys.stderr)
    cluster.cancel(arrays)
    deadline = time.monotonic() + wait_s
    left = tasks
    while left and time.monotonic() < deadline:
        try:
            left = list(cluster.queue(left))
        except cluster.SlurmCommandFailed:
            break
        if left:
            time.sleep(1.0)
    if left:
        print(f"slurm launcher: {len(left)} cancelled job(s) still listed by squeue after "
              f"{wait_s:.0f} s ({', '.join(left[:5])}...): their folders stay theirs until they "
              "end.", file=sys.stderr)


def _wait_and_report(cluster_name: str, commands: list[str], jobs: list) -> None:
    """Wait for every job, list the failed ones, raise :class:`JobsFailed` if any."""
    tasks = [watch.Task(c, j) for c, j in zip(commands, jobs)]
    if cluster_name == "slurm":
        watch.watch(tasks, poll_s=float(env(ENV_PREFIX_SLURM + "POLL") or 10.0))
    else:
        for task in tasks:
            try:
                task.job.result()
                task.outcome = ""
            except Exception as exc:  # noqa: BLE001 - report every failure, stop none
                task.outcome = watch.reason(exc)
    if watch.report(tasks):
        raise JobsFailed("slurm", sum(bool(t.outcome) for t in tasks), jobs)
