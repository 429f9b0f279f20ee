"""The ``slurm`` launcher: submit DomainBed's commands as a Slurm job array with submitit.

``DOMAINBED_SLURM_PARTITION`` (default: the cluster's default partition),
``DOMAINBED_SLURM_TIME`` (minutes, default 1440), ``DOMAINBED_SLURM_GPUS``
(per job, default 1), ``DOMAINBED_SLURM_CPUS`` (per job, default 4),
``DOMAINBED_SLURM_MEM_GB`` (default 32), ``DOMAINBED_SLURM_ARRAY_PARALLELISM``
(array tasks running at once, default 256), ``DOMAINBED_SLURM_LOG_DIR``
(submitit's folder, default ``./submitit_logs``), ``DOMAINBED_SLURM_CLUSTER``
(submitit's ``cluster``: unset = Slurm, an error if there is no ``sbatch``;
``local`` = run the jobs here as subprocesses, at most
``DOMAINBED_SLURM_ARRAY_PARALLELISM`` at once, the launcher staying until they end;
``debug`` = one after the other in this process; used by the tests),
``DOMAINBED_SLURM_WAIT`` (``1``: block until all jobs end and list failures;
default ``1`` for ``local``/``debug``, ``0`` for Slurm, where the launcher returns
after submission and prints the job ids). When it waits, failures are listed and the
sweep exits with status 1, as with ``parallel``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .process import (JobsFailed, StopSignals, Terminated, env, env_int, exit_on, kill_groups,
                      output_dir_of, start_job)

ENV_PREFIX_SLURM = "DOMAINBED_SLURM_"


class ShellCommand:
    """A picklable job body: run one shell command; raise if it exits non-zero.

    The command runs under :mod:`.jobguard`, so its processes end with the task.

    Lighter than ``submitit.helpers.CommandFunction``, which keeps the whole stdout
    in memory and pickles it back as the result; DomainBed's train.py already writes
    its own ``out.txt``/``err.txt``, and submitit keeps the job's stdout/stderr logs.
    """

    def __init__(self, command: str) -> None:
        self.command = command

    def __call__(self) -> int:
        guarded = start_job(self.command, dict(os.environ), None)  # dies with this task
        try:
            code = guarded.wait()
        except BaseException:  # the task is being stopped: take the job's processes along
            kill_groups([guarded])
            raise
        if code != 0:
            raise subprocess.CalledProcessError(code, self.command)
        return code

    def __repr__(self) -> str:
        return f"ShellCommand({self.command!r})"


def slurm_parameters() -> dict:
    """submitit ``update_parameters`` keywords from the ``DOMAINBED_SLURM_*`` variables."""
    params = {
        "name": "domainbed",
        "timeout_min": env_int(ENV_PREFIX_SLURM + "TIME", 24 * 60, minimum=1),
        "gpus_per_node": env_int(ENV_PREFIX_SLURM + "GPUS", 1),
        "cpus_per_task": env_int(ENV_PREFIX_SLURM + "CPUS", 4, minimum=1),
        "mem_gb": env_int(ENV_PREFIX_SLURM + "MEM_GB", 32, minimum=1),
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": env_int(ENV_PREFIX_SLURM + "ARRAY_PARALLELISM", 256,
                                            minimum=1),
    }
    partition = env(ENV_PREFIX_SLURM + "PARTITION")
    if partition:
        params["slurm_partition"] = partition
    return params


class SlurmNotFound(SystemExit):
    """``slurm`` was asked for, but this machine cannot submit to Slurm."""


def slurm_cluster(cluster: Optional[str] = None) -> str:
    """The submitit cluster to use: ``cluster``, else ``DOMAINBED_SLURM_CLUSTER``, else
    ``"slurm"`` if ``sbatch`` is on PATH; otherwise :class:`SlurmNotFound`.

    submitit's own auto-detection would fall back to running every job on this machine
    at once, which on a login node means hundreds of training jobs."""
    cluster = cluster or env(ENV_PREFIX_SLURM + "CLUSTER") or None
    if cluster is not None:
        return cluster
    if shutil.which("sbatch") is None:
        raise SlurmNotFound(
            "slurm launcher: no Slurm here (no `sbatch` on PATH), so nothing was submitted. "
            "Run the sweep where Slurm is available (a login node), use "
            "--command_launcher parallel to run the jobs on this machine, or set "
            "DOMAINBED_SLURM_CLUSTER=local to run them here through submitit's local "
            "executor (DOMAINBED_SLURM_ARRAY_PARALLELISM at once).")
    return "slurm"


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


def slurm_launcher(commands: Sequence[str], *, cluster: Optional[str] = None,
                   wait: Optional[bool] = None,
                   executor_factory: Optional[Callable[..., object]] = None) -> list:
    """Submit ``commands`` as one submitit job array (see the module docstring).

    ``cluster`` (default: :func:`slurm_cluster`) is submitit's: ``"slurm"``, or
    ``"local"``/``"debug"`` to run here; without Slurm and without one of those, a
    :class:`SlurmNotFound` error. ``executor_factory(folder=..., cluster=...)`` replaces
    ``submitit.AutoExecutor`` (for tests or custom clusters). Returns the submitit jobs,
    in command order; with ``wait`` (always for ``local``, which runs at most
    ``DOMAINBED_SLURM_ARRAY_PARALLELISM`` jobs at once) it blocks until they end, lists
    the failures and raises :class:`JobsFailed` (carrying the jobs) if any.
    """
    commands = list(commands)
    if not commands:
        return []
    cluster = slurm_cluster(cluster)
    import submitit  # noqa: PLC0415 - optional dependency, only for this launcher

    if cluster == "local":
        wait = True
    if wait is None:
        default_wait = "1" if cluster in ("local", "debug") else "0"
        wait = env(ENV_PREFIX_SLURM + "WAIT", default_wait) not in ("0", "false", "no", "")
    folder = Path(env(ENV_PREFIX_SLURM + "LOG_DIR") or "submitit_logs") / "%j"
    factory = executor_factory or submitit.AutoExecutor
    executor = factory(folder=folder, cluster=cluster)
    params = slurm_parameters()
    executor.update_parameters(**params)
    jobs: list = []
    with StopSignals(handle_ignored_sigint=cluster == "local") as stop_signals:
        try:
            if cluster == "local":
                limit = params["slurm_array_parallelism"]
                print(f"slurm launcher: running {len(commands)} job(s) on this machine "
                      f"(DOMAINBED_SLURM_CLUSTER=local), at most {limit} at once",
                      file=sys.stderr)
                _submit_throttled(executor, commands, limit, jobs)
            else:
                with executor.batch():
                    jobs.extend(executor.submit(ShellCommand(c)) for c in commands)
            ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
            print(f"slurm launcher: submitted {len(jobs)} job(s) ({', '.join(ids)}); "
                  f"logs in {folder.parent}", file=sys.stderr)
            if wait:
                _wait_and_report(commands, jobs)
        except (KeyboardInterrupt, Terminated) as exc:
            if cluster == "local":
                with stop_signals.deferred():
                    _cancel_local(jobs)
            exit_on(exc)
            raise
    return jobs


def _cancel_local(jobs: list) -> None:
    """Stop the unfinished jobs of submitit's local executor (their process trees included)."""
    unfinished = [job for job in jobs if not job.done()]
    print(f"\nslurm launcher: stopping {len(unfinished)} running local job(s); nothing was "
          "marked done.", file=sys.stderr)
    for job in unfinished:
        job.cancel()  # submitit's way: SIGINT to the job's controller process


def _wait_and_report(commands: list[str], jobs: list) -> None:
    """Wait for every job, list the failed ones, raise :class:`JobsFailed` if any."""
    failed = []
    for command, job in zip(commands, jobs):
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - report every failure, stop none
            failed.append((command, job, exc))
    print(f"slurm launcher: {len(jobs) - len(failed)} succeeded, {len(failed)} failed.",
          file=sys.stderr)
    for command, job, exc in failed:
        out = output_dir_of(command)
        print(f"  FAILED job {job.job_id}: {command}\n"
              f"    err.txt: {os.path.join(out, 'err.txt') if out else '-'}\n"
              f"    submitit log: {job.paths.stderr}\n"
              f"    {_reason(exc)}", file=sys.stderr)
    if failed:
        raise JobsFailed("slurm", len(failed), jobs)


def _reason(exc: BaseException) -> str:
    """The informative line of a submitit failure (its text is the job's whole traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "exit status" in line or "Error" in line:
            return line
    return lines[-1] if lines else repr(exc)


