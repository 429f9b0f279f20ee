"""The surgery algorithms in DomainBed: one ``GradientSurgery(ERM)`` per rule, the
order-free BatchNorm update, and their hparams. Importing this package imports nothing."""
