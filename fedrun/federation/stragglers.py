"""Straggler policies: when may a round close before every collaborator has reported?"""

from __future__ import annotations

import math
from typing import Any

from fedrun.errors import PlanError


class StragglerPolicy:
    """Base class. The aggregator asks :meth:`round_may_close` after every result and at
    :meth:`deadline`, so a cut-off fires on time without polling."""

    def round_may_close(self, done: int, total: int, started_at: float | None, now: float) -> bool:
        """True when the round may close with ``done`` of ``total`` collaborators finished."""
        return done >= total

    def deadline(self, started_at: float | None) -> float | None:
        """Monotonic time at which the round should be re-checked, if any."""
        return None


class WaitForAllPolicy(StragglerPolicy):
    """The round closes when every assigned collaborator has finished (the default)."""

    def __init__(self, **_: Any) -> None:
        pass


class CutoffTimePolicy(StragglerPolicy):
    """Close the round ``straggler_cutoff_time`` seconds after its first task was handed out,
    once at least ``minimum_reporting`` collaborators have finished."""

    def __init__(
        self, straggler_cutoff_time: float = math.inf, minimum_reporting: int = 1, **_: Any
    ) -> None:
        if minimum_reporting < 1:
            raise PlanError(
                "FX-PLAN-020",
                f"straggler_handling_policy.settings.minimum_reporting is {minimum_reporting}",
                "use at least 1",
            )
        if straggler_cutoff_time <= 0:
            raise PlanError(
                "FX-PLAN-020",
                f"straggler_handling_policy.settings.straggler_cutoff_time is {straggler_cutoff_time}",
                "use a positive number of seconds",
            )
        self.cutoff = float(straggler_cutoff_time)
        self.minimum_reporting = int(minimum_reporting)

    def round_may_close(self, done: int, total: int, started_at: float | None, now: float) -> bool:
        if done >= total:
            return True
        if started_at is None or math.isinf(self.cutoff):
            return False
        return now - started_at >= self.cutoff and done >= min(self.minimum_reporting, total)

    def deadline(self, started_at: float | None) -> float | None:
        if started_at is None or math.isinf(self.cutoff):
            return None
        return started_at + self.cutoff


class PercentagePolicy(StragglerPolicy):
    """Close the round once ``percent_collaborators_needed`` of the collaborators (and at least
    ``minimum_reporting``) have finished."""

    def __init__(
        self, percent_collaborators_needed: float = 1.0, minimum_reporting: int = 1, **_: Any
    ) -> None:
        if not 0 < percent_collaborators_needed <= 1:
            raise PlanError(
                "FX-PLAN-020",
                "straggler_handling_policy.settings.percent_collaborators_needed is "
                f"{percent_collaborators_needed}",
                "use a fraction in (0, 1]",
            )
        if minimum_reporting < 1:
            raise PlanError(
                "FX-PLAN-020",
                f"straggler_handling_policy.settings.minimum_reporting is {minimum_reporting}",
                "use at least 1",
            )
        self.percent = float(percent_collaborators_needed)
        self.minimum_reporting = int(minimum_reporting)

    def round_may_close(self, done: int, total: int, started_at: float | None, now: float) -> bool:
        needed = max(math.ceil(self.percent * total - 1e-9), min(self.minimum_reporting, total))
        return done >= needed


# OpenFL 1.6 names
CutoffTimeBasedStragglerHandling = CutoffTimePolicy
PercentageBasedStragglerHandling = PercentagePolicy
