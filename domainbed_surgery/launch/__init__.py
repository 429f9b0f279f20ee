"""Command launchers for DomainBed's sweep: ``parallel`` (one machine) and ``slurm`` (submitit),
and the job guard that ties each job's life to its launcher's. Importing this package imports nothing."""
