"""Changes at DomainBed's own names: Fishr without BackPACK (:mod:`.fishr`) and the
infinite data loaders' check (:mod:`.loaders`). Importing this package imports nothing."""
