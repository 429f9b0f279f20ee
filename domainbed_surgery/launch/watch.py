"""Waiting for submitted Slurm jobs: every end is noticed, said, and counted.

submitit alone learns how a job ended from the result file the job writes, or from
``sacct``; without an accounting database a job that never writes one (cancelled while
pending, its process killed, a request no node can satisfy) leaves it waiting for ever.
:func:`watch` asks ``squeue`` instead, every ``poll_s`` seconds, for every task at once:

- listed: still alive (pending, running, requeued...). A task pending for a reason that
  never resolves (:data:`.cluster.NEVER_STARTS`) is cancelled and reported. A pending
  task's result file is an earlier attempt's (before a requeue): it is removed.
- no longer listed: its result file says how it ended; without one after
  ``absent_grace_s`` seconds it ended without a result, and ``scontrol``/``sacct`` say how.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import cluster
from .process import output_dir_of

#: exit statuses of a job's command that mean a signal, with what usually sent it
SIGNAL_STATUSES = {137: "SIGKILL: killed, e.g. out of memory or after a cancel",
                   143: "SIGTERM: cancelled, preempted or out of time",
                   140: "SIGUSR2: Slurm's time-limit signal", 130: "SIGINT"}


@dataclass
class Task:
    """One submitted command and what is known of it."""

    command: str
    job: Any  # submitit's Job
    state: str = ""
    outcome: Optional[str] = None  # None while unfinished; "" when it succeeded
    gone_since: Optional[float] = None
    ran: bool = False
    notes: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.job.job_id)

    @property
    def finished(self) -> bool:
        return self.outcome is not None


def reason(exc: BaseException) -> str:
    """The informative line of a submitit failure (its text is the job's whole traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "exit status" in line or "Error" in line:
            for status, meaning in SIGNAL_STATUSES.items():
                if f"exit status {status}" in line:
                    return f"{line} ({meaning})"
            return line
    return lines[-1] if lines else repr(exc)


def _outcome_from_result(task: Task) -> str:
    """'' if the task's result file holds a success, else the failure's reason."""
    exc = task.job.exception()
    return "" if exc is None else reason(exc)


def watch(tasks: list[Task], poll_s: float = 10.0, absent_grace_s: float = 20.0,
          queue: Callable = cluster.queue, say: Callable[[str], None] = None) -> None:
    """Follow ``tasks`` until each has an outcome (see the module docstring)."""
    say = say or (lambda text: print(f"slurm launcher: {text}", file=sys.stderr, flush=True))
    unreachable_said = False
    while True:
        unfinished = [t for t in tasks if not t.finished]
        if not unfinished:
            return
        try:
            listed = queue([t.id for t in unfinished])
        except cluster.SlurmCommandFailed as exc:
            if not unreachable_said:
                say(f"cannot ask Slurm about the jobs ({exc}); trying again every {poll_s:.0f} s")
                unreachable_said = True
            time.sleep(poll_s)
            continue
        never = []
        for task in unfinished:
            line = listed.get(task.id)
            _look(task, line, absent_grace_s, say)
            if task.outcome is None and line is not None and line[0] == "PENDING":
                why = line[1]
                if why in cluster.NEVER_STARTS:
                    task.outcome = (f"can never start: pending with reason {why} "
                                    f"({cluster.NEVER_STARTS[why]}); cancelled")
                    never.append(task.id)
            if task.finished and task.outcome:
                say(f"job {task.id} FAILED: {task.outcome}")
        if never:
            cluster.cancel(never)
        if any(not t.finished for t in tasks):
            time.sleep(poll_s)


def _look(task: Task, listed: Optional[tuple], absent_grace_s: float, say) -> None:
    """Update ``task`` from its ``squeue`` line (``(state, reason)``, None if not listed)."""
    result = task.job.paths.result_pickle
    if listed is not None:
        state, _why = listed
        if state in ("RUNNING", "COMPLETING"):
            task.ran = True
        elif state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") and task.ran and task.state not in (
                "PENDING", "REQUEUED", "REQUEUE_HOLD"):
            say(f"job {task.id} was requeued (preempted, timed out or `scontrol requeue`); it "
                "will continue from its last resume state")
        if state == "PENDING" and result.exists():
            result.unlink(missing_ok=True)  # an earlier attempt's result
        task.state, task.gone_since = state, None
        return
    if result.exists():
        task.outcome = _outcome_from_result(task)
        return
    now = time.monotonic()
    if task.gone_since is None:
        task.gone_since = now
    elif now - task.gone_since >= absent_grace_s:
        task.outcome = _without_result(task)


#: Slurm's final states, with what usually brings them about
FINAL_STATES = {"CANCELLED": "scancel, or an administrator", "FAILED": "its job process died "
                "(killed, or out of memory)", "NODE_FAIL": "its node failed",
                "TIMEOUT": "its time limit (raise DOMAINBED_SLURM_TIME)",
                "OUT_OF_MEMORY": "out of memory (raise DOMAINBED_SLURM_MEM_GB)",
                "PREEMPTED": "preempted, and not requeued", "BOOT_FAIL": "its node did not boot",
                "DEADLINE": "its deadline passed"}


def _without_result(task: Task) -> str:
    """Why a task that left the queue wrote no result, as far as Slurm and we know."""
    known = cluster.final_state(task.id)
    state = known.split(",")[0]
    if state in FINAL_STATES or state == "COMPLETED":
        hint = FINAL_STATES.get(state, "but wrote no result")
        return f"ended without a result: Slurm says {known} ({hint})"
    if task.ran:
        return ("ended while running without writing its result (its job process was killed, "
                "or its node failed); Slurm keeps no record of it")
    return ("left the queue before it ran, without a result (cancelled while pending: scancel "
            "or an administrator); Slurm keeps no record of it")


def report(tasks: list[Task]) -> int:
    """Print how many succeeded and list the failed ones; return how many failed."""
    failed = [t for t in tasks if t.outcome]
    print(f"slurm launcher: {len(tasks) - len(failed)} succeeded, {len(failed)} failed.",
          file=sys.stderr)
    for task in failed:
        out = output_dir_of(task.command)
        print(f"  FAILED job {task.id}: {task.command}\n"
              f"    err.txt: {out + '/err.txt' if out else '-'}\n"
              f"    submitit log: {task.job.paths.stderr}\n"
              f"    {task.outcome}", file=sys.stderr)
    return len(failed)
