"""Entry points mirroring DomainBed's scripts: they register our algorithms, then run DomainBed's."""
