"""The FL plan: loading, defaults, aliases, validation and hashing."""

from __future__ import annotations

from fedrun.plan.loader import Plan, diff_plans, plan_hash

__all__ = ["Plan", "diff_plans", "plan_hash"]
