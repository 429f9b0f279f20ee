"""Command launchers for DomainBed's sweep: ``parallel`` (one machine) and ``slurm`` (submitit).

DomainBed's ``sweep.py`` hands a launcher the list of shell commands
(``python -m domainbed.scripts.train ... --output_dir DIR``) and knows nothing else
about it; its CLI has no place for launcher options, so they come from environment
variables. Both launchers are added to ``domainbed.command_launchers.REGISTRY`` by
:mod:`domainbed_surgery.plugin.registration`, so ``sweep launch --command_launcher
parallel`` just works.

- :mod:`.parallel`: the ``parallel`` launcher and its options (``DOMAINBED_PARALLEL_*``);
- :mod:`.slurm`: the ``slurm`` launcher and its options (``DOMAINBED_SLURM_*``);
- :mod:`.process`: what both share: stop signals, the kill grace, starting a job under
  :mod:`.jobguard` and ending job groups.

Neither launcher writes DomainBed's ``done`` file or deletes anything: a job that
fails or is interrupted stays *Incomplete* for ``sweep.py``, so
``sweep delete_incomplete`` followed by ``sweep launch`` resumes a sweep.
"""

from __future__ import annotations

from .parallel import JobResult, ParallelPlan, parallel_launcher
from .process import JobsFailed, Terminated, available_cores, output_dir_of
from .slurm import ShellCommand, SlurmNotFound, slurm_cluster, slurm_launcher, slurm_parameters

__all__ = ["LAUNCHERS", "JobResult", "JobsFailed", "ParallelPlan", "ShellCommand",
           "SlurmNotFound", "Terminated", "available_cores", "output_dir_of",
           "parallel_launcher", "slurm_cluster", "slurm_launcher", "slurm_parameters"]

#: Launchers we add to ``domainbed.command_launchers.REGISTRY``.
LAUNCHERS = {"parallel": parallel_launcher, "slurm": slurm_launcher}
