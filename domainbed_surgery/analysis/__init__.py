"""Gradient analyses: intra/inter-domain per-sample gradient similarity (paper Sec. 4.3)
and agreement/cosine curves from DomainBed sweeps. The command-line entry points are in
:mod:`domainbed_surgery.scripts`."""
