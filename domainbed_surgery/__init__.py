"""domainbed-surgery: gradient-surgery domain generalization (Agr-Sum, Agr-Rand, PCGrad) in DomainBed.

Installing the package arms a start-up hook that registers everything into DomainBed
when DomainBed is imported (``DOMAINBED_SURGERY_AUTOREGISTER=0`` turns it off); or
call :func:`register` yourself. The rules are in :mod:`domainbed_surgery.rules`.
Importing this package imports neither torch nor DomainBed.
"""

from .plugin.registration import register, registered

__version__ = "0.1.0"
__all__ = ["register", "registered", "__version__"]
