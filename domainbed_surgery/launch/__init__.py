"""Command launchers for DomainBed's sweep: ``parallel`` (one machine, :mod:`.parallel`) and
``slurm`` (submitit, :mod:`.slurm`, :mod:`.slurm_request`, :mod:`.watch`, :mod:`.cluster`),
what both share (:mod:`.process`, :mod:`.jobguard`: a job dies with its launcher), and who
owns a job folder (:mod:`.folders`). The lowest layer: standard library only (submitit when
the ``slurm`` launcher runs), nothing of the package; importing it imports nothing."""
