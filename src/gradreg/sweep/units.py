"""The unit a report shows its metric in (used by the reports, the figures and the index)."""

from __future__ import annotations

from ..paper.numbers import TABLES


def metric_scale(plan: dict) -> tuple[float, str]:
    """Multiplier from our metric to the unit shown, and the unit's label.

    Accuracy in %, MSE in the paper's Table 7 unit (x 1e-5) everywhere, also where no paper
    table exists.

    Args:
        plan: An experiment's plan (its `metric` and `paper_table`).

    Returns:
        `(scale, label)`: `(100.0, "%")` for accuracy, else `1 / table.scale` and `"×<unit>"`.
    """
    if plan["metric"] == "accuracy":
        return 100.0, "%"
    table = TABLES.get(plan.get("paper_table") or "") or TABLES["table7"]
    return 1.0 / table.scale, f"×{table.unit}"
