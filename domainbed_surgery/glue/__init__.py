"""DomainBed glue: the algorithms (one per rule), hparams, backbones, datasets, Fishr, data loaders.

Everything here subclasses or wraps DomainBed; :mod:`domainbed_surgery.plugin` puts it
into DomainBed's registries. Importing this package imports nothing.
"""
