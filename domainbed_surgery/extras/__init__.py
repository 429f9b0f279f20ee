"""What we add to DomainBed: backbones (:mod:`.backbones`) and datasets (:mod:`.datasets`).
Importing this package imports nothing."""
