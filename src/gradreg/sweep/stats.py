"""Temporary alias of :mod:`gradreg.stats`, where the statistics now live (the paper's claims use
them too, and the paper layer sits below the sweeps).

Only ``sweep/report.py`` still imports this name (``from . import robust, stats``). Once it reads
``from .. import stats``, delete this file.
"""

from ..stats import adjusted, bonferroni, mean_std, welch_from_summary, welch_t_test

__all__ = ["mean_std", "welch_t_test", "welch_from_summary", "bonferroni", "adjusted"]
