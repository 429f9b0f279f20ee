"""What the ``slurm`` launcher asks Slurm itself: limits, a dry-run of the request, job states.

Each function runs one Slurm command (``scontrol``, ``sbatch --test-only``, ``squeue``,
``scancel``, ``sinfo``) and parses its text; none needs the accounting database
(``sacct`` is only tried for a finished job's state, after ``scontrol``).
Standard library only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Optional, Sequence

#: Pending reasons that no amount of waiting resolves: the request exceeds what the
#: partition's nodes have or allow, or names what does not exist.
NEVER_STARTS = {
    "PartitionConfig": "the partition's nodes cannot satisfy the request (CPUs, memory, GPUs)",
    "BadConstraints": "the request's constraints can never be satisfied",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a time limit above the partition's MaxTime",
    "InvalidAccount": "an invalid account",
    "InvalidQOS": "an invalid QOS",
    "QOSMaxCpuPerJobLimit": "more CPUs than the QOS allows a job",
    "QOSMaxGRESPerJob": "more GPUs than the QOS allows a job",
    "QOSMaxMemoryPerJob": "more memory than the QOS allows a job",
    "QOSMaxWallDurationPerJobLimit": "a time limit above the QOS's",
    "DependencyNeverSatisfied": "a dependency that can never be satisfied",
}


class SlurmCommandFailed(RuntimeError):
    """A Slurm command failed (not found, timed out or exited non-zero)."""


def run(args: Sequence[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run one Slurm command; :class:`SlurmCommandFailed` with its own words if it fails."""
    if shutil.which(args[0]) is None:
        raise SlurmCommandFailed(f"`{args[0]}` is not on PATH")
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmCommandFailed(f"`{' '.join(args)}` did not answer in {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        raise SlurmCommandFailed((proc.stderr or proc.stdout).strip() or
                                 f"`{' '.join(args)}` exited with status {proc.returncode}")
    return proc


def config_value(name: str) -> Optional[str]:
    """A value of ``scontrol show config`` (e.g. ``MaxArraySize``), or None."""
    for line in run(["scontrol", "show", "config"]).stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return value.strip()
    return None


def max_array_size() -> int:
    """How many tasks one job array may have (``MaxArraySize``: task ids 0..MaxArraySize-1)."""
    value = config_value("MaxArraySize")
    try:
        return max(1, int(value)) if value else 1001
    except ValueError:
        return 1001


def sbatch_options(params: dict) -> list[str]:
    """The ``sbatch`` options of the launcher's request (those submitit writes for it)."""
    options = [f"--time={params['timeout_min']}", f"--cpus-per-task={params['cpus_per_task']}",
               f"--mem={params['mem_gb']}GB", f"--nodes={params.get('nodes', 1)}",
               f"--ntasks-per-node={params.get('tasks_per_node', 1)}"]
    if params.get("gpus_per_node"):
        options.append(f"--gpus-per-node={params['gpus_per_node']}")
    if params.get("slurm_partition"):
        options.append(f"--partition={params['slurm_partition']}")
    return options


def test_only(params: dict) -> Optional[str]:
    """Slurm's verdict on the request without submitting (``sbatch --test-only``): None if
    it would run, else Slurm's error text."""
    proc = run(["sbatch", "--test-only", *sbatch_options(params), "--wrap", "true"], check=False)
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return " / ".join(lines) or f"sbatch --test-only exited with status {proc.returncode}"


def partition_nodes(partition: Optional[str]) -> list[dict]:
    """The nodes of ``partition`` (default: the default one) as sinfo sees them:
    ``{"node", "cpus", "mem_mb", "gres", "partition"}``."""
    args = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P"]
    if partition:
        args += ["-p", partition]
    nodes = []
    for line in run(args).stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        if not partition and not parts[4].endswith("*"):
            continue  # only the default partition
        try:
            nodes.append({"node": parts[0], "cpus": int(parts[1]),
                          "mem_mb": int(re.sub(r"\D.*", "", parts[2]) or 0),
                          "gres": parts[3], "partition": parts[4].rstrip("*")})
        except ValueError:
            continue
    return nodes


def squeue_states(tasks: Sequence[str]) -> dict:
    """``{task: "STATE (reason)"}`` for the given array tasks (``1234_7``) or jobs that
    ``squeue`` still lists (pending, running, requeued, completing...); one call.
    Raises :class:`SlurmCommandFailed` (a ``RuntimeError``) if Slurm cannot be asked."""
    return {task: f"{state} ({reason})" if reason not in ("None", "") else state
            for task, (state, reason) in queue(tasks).items()}


def queue(tasks: Sequence[str]) -> dict:
    """``{task: (state, reason)}`` of the listed ``tasks`` (see :func:`squeue_states`)."""
    wanted = set(tasks)
    if not wanted:
        return {}
    jobs = sorted({t.split("_")[0] for t in wanted})
    proc = run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(jobs)], check=False)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return {}  # none of them is known any more
        raise SlurmCommandFailed(proc.stderr.strip() or "squeue failed")
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in wanted:
            found[parts[0]] = (parts[1], parts[2])
    return found


def cancel(ids: Sequence[str], signal: Optional[str] = None) -> None:
    """``scancel`` the jobs or array tasks ``ids`` (with ``signal``: only signal them)."""
    if ids:
        extra = [f"--signal={signal}"] if signal else []
        run(["scancel", *extra, *ids], check=False)


def final_state(task: str) -> str:
    """How a job that left the queue ended, in Slurm's words (``scontrol``, else ``sacct``):
    ``"STATE, reason R, exit code C"``, or ``"no record"`` where neither knows it."""
    proc = run(["scontrol", "show", "job", task], check=False)
    if proc.returncode == 0:
        fields = dict(re.findall(r"(\w+)=(\S+)", proc.stdout))
        state = fields.get("JobState", "UNKNOWN")
        words = [state]
        if fields.get("Reason") not in (None, "None"):
            words.append(f"reason {fields['Reason']}")
        if fields.get("ExitCode") not in (None, "0:0"):
            words.append(f"exit code {fields['ExitCode']}")
        return ", ".join(words)
    try:
        out = run(["sacct", "-n", "-P", "-X", "-o", "State,ExitCode", "-j", task]).stdout
    except SlurmCommandFailed:
        return "no record"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[-1].replace("|", ", exit code ") if lines else "no record"
