"""Train many runs at once: the ensemble engine (see `gradreg.ensemble.loop`)."""
