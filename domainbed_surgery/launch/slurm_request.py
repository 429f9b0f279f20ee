"""What the ``slurm`` launcher asks for (``DOMAINBED_SLURM_*``), and whether Slurm can ever give it.

:func:`check_setup` asks Slurm itself (``sbatch --test-only``) before anything is
submitted, and our sweep runs it before it makes any job folder: a request no node of
the partition can satisfy (a GPU on a GPU-less cluster, more CPUs or memory than any
node has, an unknown partition) stops with the variable to change and its possible values.

Options are environment variables (DomainBed's sweep CLI has no place for them):
``DOMAINBED_SLURM_PARTITION`` (default: the cluster's default partition),
``DOMAINBED_SLURM_TIME`` (minutes, default 1440), ``DOMAINBED_SLURM_GPUS``
(per job, default 1), ``DOMAINBED_SLURM_CPUS`` (per job, default 4),
``DOMAINBED_SLURM_MEM_GB`` (default 32), ``DOMAINBED_SLURM_ARRAY_PARALLELISM``
(tasks of one array running at once, default 256), ``DOMAINBED_SLURM_LOG_DIR``
(submitit's folder, default ``./submitit_logs``), ``DOMAINBED_SLURM_CLUSTER``
(submitit's ``cluster``: unset = Slurm, an error if there is no ``sbatch``;
``local`` = run the jobs here as subprocesses, at most
``DOMAINBED_SLURM_ARRAY_PARALLELISM`` at once, the launcher staying until they end;
``debug`` = one after the other in this process; used by the tests),
``DOMAINBED_SLURM_WAIT`` (``1``: stay until every job has ended and list the failures;
default ``1`` for ``local``/``debug``, ``0`` for Slurm, where the launcher returns
after submission and prints the job ids), ``DOMAINBED_SLURM_POLL`` (seconds between
two looks at the queue while waiting, default 10).
"""

from __future__ import annotations

import shutil
from typing import Optional

from . import cluster
from .process import env, env_int

ENV_PREFIX_SLURM = "DOMAINBED_SLURM_"


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


class SlurmSetupError(SystemExit):
    """The request (``DOMAINBED_SLURM_*``) is one this cluster can never satisfy."""


def slurm_cluster(cluster_name: Optional[str] = None) -> str:
    """The submitit cluster to use: ``cluster_name``, else ``DOMAINBED_SLURM_CLUSTER``, else
    ``"slurm"`` if ``sbatch`` is on PATH; otherwise :class:`SlurmNotFound`.

    submitit's own auto-detection would fall back to running every job on this machine
    at once, which on a login node means hundreds of training jobs."""
    cluster_name = cluster_name or env(ENV_PREFIX_SLURM + "CLUSTER") or None
    if cluster_name is not None:
        return cluster_name
    if shutil.which("sbatch") is None:
        raise SlurmNotFound(
            "slurm launcher: no Slurm here (no `sbatch` on PATH), so nothing was submitted. "
            "Run the sweep where Slurm is available (a login node), use "
            "--command_launcher parallel to run the jobs on this machine, or set "
            "DOMAINBED_SLURM_CLUSTER=local to run them here through submitit's local "
            "executor (DOMAINBED_SLURM_ARRAY_PARALLELISM at once).")
    return "slurm"


def check_setup(params: Optional[dict] = None) -> None:
    """Stop with :class:`SlurmSetupError` (naming the variable to change) if Slurm says it
    can never run the request of ``params`` (default: the ``DOMAINBED_SLURM_*`` variables);
    nothing is submitted. Only for the real Slurm (not ``local``/``debug``)."""
    if slurm_cluster() != "slurm":
        return
    params = slurm_parameters() if params is None else params
    try:
        verdict = cluster.test_only(params)
    except cluster.SlurmCommandFailed as exc:
        raise SlurmSetupError(f"slurm launcher: cannot check the request with Slurm ({exc}); "
                              "nothing was submitted.") from None
    if verdict is None:
        return
    fixes = _what_to_change(params)
    raise SlurmSetupError(
        f"slurm launcher: Slurm would never run these jobs (sbatch --test-only "
        f"{' '.join(cluster.sbatch_options(params))}: {verdict}).\n  "
        + ("\n  ".join(fixes) if fixes else "Check the DOMAINBED_SLURM_* variables.")
        + "\nNothing was submitted.")


def _what_to_change(params: dict) -> list[str]:
    """The variables whose values no node of the partition offers, with the values it does."""
    partition = params.get("slurm_partition")
    where = f"partition {partition!r}" if partition else "the default partition"
    try:
        nodes = cluster.partition_nodes(partition)
    except cluster.SlurmCommandFailed:
        nodes = []
    if not nodes:
        return [f"{ENV_PREFIX_SLURM}PARTITION={partition or '(unset)'}: {where} has no nodes "
                "(see `sinfo`)."]
    fixes = []
    gpus = params.get("gpus_per_node", 0)
    if gpus and not any("gpu" in n["gres"] for n in nodes):
        fixes.append(f"{ENV_PREFIX_SLURM}GPUS={gpus} asks each job for {gpus} GPU(s), but "
                     f"{where} has no GPUs: set {ENV_PREFIX_SLURM}GPUS=0 for CPU jobs, or "
                     f"{ENV_PREFIX_SLURM}PARTITION to a partition with GPUs.")
    most_cpus = max(n["cpus"] for n in nodes)
    if params["cpus_per_task"] > most_cpus:
        fixes.append(f"{ENV_PREFIX_SLURM}CPUS={params['cpus_per_task']}: the largest node of "
                     f"{where} has {most_cpus} CPUs; set {ENV_PREFIX_SLURM}CPUS to at most "
                     f"{most_cpus}.")
    most_gb = max(n["mem_mb"] for n in nodes) // 1024
    if params["mem_gb"] * 1024 > max(n["mem_mb"] for n in nodes):
        fixes.append(f"{ENV_PREFIX_SLURM}MEM_GB={params['mem_gb']}: the largest node of "
                     f"{where} has {most_gb} GB; set {ENV_PREFIX_SLURM}MEM_GB to at most "
                     f"{max(1, most_gb)}.")
    return fixes
