"""Assigners decide which collaborator runs which tasks in each round.

Assignment is a pure function of the round number (and the plan's seed), so an aggregator that
restarts mid-round hands out exactly the same tasks again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedrun.errors import PlanError


class Assigner:
    """Base class: maps (collaborator, round) to an ordered task list.

    Parameters
    ----------
    task_groups:
        Groups from the plan; each has ``name`` and ``tasks`` (run in list order).
    authorized_cols:
        Collaborator names from cols.yaml.
    rounds_to_train:
        Rounds in the experiment.
    selected_task_group:
        Run only this group (e.g. ``evaluation``); its members become every collaborator.
    seed:
        Seed for random grouping.
    """

    def __init__(
        self,
        task_groups: Sequence[Mapping[str, Any]],
        authorized_cols: Sequence[str],
        rounds_to_train: int = 1,
        selected_task_group: str | None = None,
        seed: int | None = None,
        **_: Any,
    ) -> None:
        self.authorized_cols = list(authorized_cols)
        self.rounds_to_train = rounds_to_train
        self.seed = 0 if seed is None else int(seed)
        groups = [dict(g) for g in task_groups]
        if selected_task_group is not None:
            chosen = [g for g in groups if g.get("name") == selected_task_group]
            if not chosen:
                names = ", ".join(str(g.get("name")) for g in groups)
                raise PlanError(
                    "FX-PLAN-019",
                    f"task group {selected_task_group!r} is not in assigner.settings.task_groups",
                    f"choose one of: {names}",
                )
            chosen[0]["percentage"] = 1.0
            chosen[0].pop("collaborators", None)
            groups = chosen
        self.task_groups = groups
        self.selected_task_group = selected_task_group

    def tasks_for(self, collaborator: str, round_num: int) -> list[str]:
        """Ordered tasks for ``collaborator`` in ``round_num`` (empty if none)."""
        return list(self.assignment(round_num).get(collaborator, []))

    def assignment(self, round_num: int) -> dict[str, list[str]]:
        """Every collaborator's task list for one round."""
        raise NotImplementedError

    def all_tasks(self) -> list[str]:
        """Every task any group runs, in first-seen order."""
        seen: list[str] = []
        for group in self.task_groups:
            for task in group.get("tasks") or []:
                if task not in seen:
                    seen.append(task)
        return seen


class RandomGroupedAssigner(Assigner):
    """Splits collaborators into groups by percentage, reshuffled every round."""

    def __init__(
        self, task_groups: Sequence[Mapping[str, Any]], authorized_cols: Sequence[str], **kw: Any
    ) -> None:
        super().__init__(task_groups, authorized_cols, **kw)
        total = sum(float(g.get("percentage", 0)) for g in self.task_groups)
        if abs(total - 1.0) > 0.01:
            raise PlanError(
                "FX-PLAN-019",
                f"assigner task group percentages add up to {total:g}, not 1.0",
                "make the `percentage` values of assigner.settings.task_groups sum to 1.0",
            )
        n = len(self.authorized_cols)
        exact = [float(g.get("percentage", 0)) * n for g in self.task_groups]
        self.sizes = [int(round(x)) for x in exact]
        whole = all(abs(x - size) < 1e-6 for x, size in zip(exact, self.sizes, strict=True))
        if n and (not whole or sum(self.sizes) != n):
            shares = ", ".join(
                f"{g.get('name')}={float(g.get('percentage', 0)):g}" for g in self.task_groups
            )
            raise PlanError(
                "FX-PLAN-019",
                f"the group percentages ({shares}) cannot split {n} collaborators into whole groups",
                f"choose percentages that are multiples of 1/{n}, or change the collaborator count",
            )

    def assignment(self, round_num: int) -> dict[str, list[str]]:
        cols = list(self.authorized_cols)
        if len(self.task_groups) > 1:
            rng = np.random.default_rng([self.seed, round_num])
            cols = [cols[i] for i in rng.permutation(len(cols))]
        out: dict[str, list[str]] = {}
        start = 0
        for group, size in zip(self.task_groups, self.sizes, strict=True):
            for col in cols[start : start + size]:
                out[col] = list(group.get("tasks") or [])
            start += size
        return out


class StaticGroupedAssigner(Assigner):
    """Fixed membership: each group lists its collaborators; the same tasks every round."""

    def __init__(
        self, task_groups: Sequence[Mapping[str, Any]], authorized_cols: Sequence[str], **kw: Any
    ) -> None:
        super().__init__(task_groups, authorized_cols, **kw)
        self._fixed: dict[str, list[str]] = {}
        if self.selected_task_group is not None:
            group = self.task_groups[0]
            self._fixed = {c: list(group.get("tasks") or []) for c in self.authorized_cols}
            return
        for group in self.task_groups:
            for col in group.get("collaborators") or []:
                if col in self._fixed:
                    raise PlanError(
                        "FX-PLAN-019",
                        f"collaborator {col!r} appears in more than one static task group",
                        "list each collaborator in exactly one group",
                    )
                self._fixed[str(col)] = list(group.get("tasks") or [])
        missing = [c for c in self.authorized_cols if c not in self._fixed]
        unknown = [c for c in self._fixed if c not in self.authorized_cols]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"not in any group: {', '.join(missing)}")
            if unknown:
                parts.append(f"not in cols.yaml: {', '.join(unknown)}")
            raise PlanError(
                "FX-PLAN-019",
                "StaticGroupedAssigner groups do not match cols.yaml (" + "; ".join(parts) + ")",
                "list every authorized collaborator in exactly one group",
            )

    def assignment(self, round_num: int) -> dict[str, list[str]]:
        return {c: list(t) for c, t in self._fixed.items()}
