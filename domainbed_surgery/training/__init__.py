"""Training runs that stop and continue: DomainBed's train loop with a resume state
(:mod:`.loop`), its checkpointable data loaders (:mod:`.loaders`) and the state itself
(:mod:`.state`). Above :mod:`..plugin` (it registers and runs DomainBed's code)."""
