"""Train many runs at once: the ensemble engine (see :mod:`gradreg.ensemble.loop`)."""
