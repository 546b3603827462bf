"""An experiment's plan as the reports read it: typed, frozen, and convertible to and from the
JSON form the store and ``records/plans.json`` hold (``Experiment.plan()`` writes that form).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlanCandidate:
    """One candidate weight of a cell and the run key of each seed trained with it.

    Attributes:
        lam: The weight (None for an unregularized cell).
        runs: One run key per seed.
    """

    lam: float | None
    runs: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanCandidate:
        """The candidate of the stored form ``{"lambda", "runs"}``.

        Args:
            data: The stored form.

        Returns:
            The candidate.
        """
        return cls(lam=data["lambda"], runs=tuple(data["runs"]))

    def to_dict(self) -> dict[str, Any]:
        """The stored form, ``{"lambda", "runs"}``.

        Returns:
            A new dict.
        """
        return {"lambda": self.lam, "runs": list(self.runs)}


@dataclass(frozen=True)
class PlanCell:
    """One cell of a report: its labels, its x coordinate (figures) and its candidates; with
    several candidates the dev set picks one (section 6.1 of the paper).

    Attributes:
        row: The row label.
        col: The column label.
        x: The x coordinate of a figure's point (train size, lambda), or None.
        candidates: The candidate weights, each with its runs.
    """

    row: str
    col: str
    x: float | None
    candidates: tuple[PlanCandidate, ...]

    @classmethod
    def of(cls, cell: PlanCell | Mapping[str, Any]) -> PlanCell:
        """``cell`` itself, or the cell of its stored form ``{"row", "col", "x", "candidates"}``.

        Args:
            cell: A cell, or its stored form.

        Returns:
            The cell.
        """
        if isinstance(cell, PlanCell):
            return cell
        candidates = tuple(PlanCandidate.from_dict(c) for c in cell["candidates"])
        return cls(row=cell["row"], col=cell["col"], x=cell.get("x"), candidates=candidates)

    def to_dict(self) -> dict[str, Any]:
        """The stored form.

        Returns:
            A new dict.
        """
        return {"row": self.row, "col": self.col, "x": self.x, "candidates": [c.to_dict() for c in self.candidates]}


Pair = tuple[tuple[str, str], tuple[str, str]]


@dataclass(frozen=True)
class ReportPlan:
    """What a report needs to know about an experiment, besides its runs.

    A field missing from a stored plan takes its default here (a plan stored by hand, or by an
    older gradreg, may lack ``command``).

    Attributes:
        name: The experiment (``"table1"``).
        title: Its one-line title.
        kind: ``"table"`` or ``"figure"``.
        metric: ``"accuracy"`` or ``"mse"``, on the test set.
        cells: The cells, in the report's order.
        seeds: The seeds every candidate is trained with.
        paper_table: The key of the paper's table in ``gradreg.paper.numbers.TABLES``, or None.
        baseline_col: Every cell is tested against this column of its row, or None.
        comparisons: Explicit ``((row, col), (row, col))`` pairs to test instead.
        description: Words the report prints under its header.
        profile: The profile the plan was made with (``"quick"``, ``"published"``), or None.
        profile_note: What that profile changes.
        command: The command that made the runs, or None.
    """

    name: str = ""
    title: str = ""
    kind: str = "table"
    metric: str = "accuracy"
    cells: tuple[PlanCell, ...] = ()
    seeds: tuple[int, ...] = ()
    paper_table: str | None = None
    baseline_col: str | None = None
    comparisons: tuple[Pair, ...] = ()
    description: str = ""
    profile: str | None = None
    profile_note: str = ""
    command: str | None = None

    @classmethod
    def of(cls, plan: ReportPlan | Mapping[str, Any]) -> ReportPlan:
        """``plan`` itself, or the plan of its stored form (the dict of ``Experiment.plan()``).

        Args:
            plan: A plan, or its stored form.

        Returns:
            The plan.
        """
        if isinstance(plan, ReportPlan):
            return plan
        pairs = tuple(((a[0], a[1]), (b[0], b[1])) for a, b in plan.get("comparisons") or ())
        return cls(
            name=plan.get("name", ""),
            title=plan.get("title", ""),
            kind=plan.get("kind", "table"),
            metric=plan.get("metric", "accuracy"),
            cells=tuple(PlanCell.of(c) for c in plan.get("cells", ())),
            seeds=tuple(plan.get("seeds", ())),
            paper_table=plan.get("paper_table"),
            baseline_col=plan.get("baseline_col"),
            comparisons=pairs,
            description=plan.get("description", ""),
            profile=plan.get("profile"),
            profile_note=plan.get("profile_note", ""),
            command=plan.get("command"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form; ``ReportPlan.of(d).to_dict() == d`` for every plan gradreg stores.

        Returns:
            A new dict (without ``command`` where it is None).
        """
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "metric": self.metric,
            "paper_table": self.paper_table,
            "baseline_col": self.baseline_col,
            "comparisons": [[list(a), list(b)] for a, b in self.comparisons],
            "seeds": list(self.seeds),
            "description": self.description,
            "profile": self.profile,
            "profile_note": self.profile_note,
            "cells": [c.to_dict() for c in self.cells],
        }
        if self.command is not None:
            out["command"] = self.command
        return out

    def run_keys(self) -> list[str]:
        """Every run key the plan's cells use (all candidates and seeds), deduplicated, in order.

        Returns:
            The keys.
        """
        return list(dict.fromkeys(k for c in self.cells for cand in c.candidates for k in cand.runs))
