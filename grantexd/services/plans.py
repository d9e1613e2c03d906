"""Plan quotas: how many agents, active grants and audit entries each plan allows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanLimits:
    agents: int | None
    active_grants: int | None
    audit_entries: int | None


# None means unlimited.
_PLANS = {
    "free": PlanLimits(agents=500, active_grants=1000, audit_entries=20_000),
    "pro": PlanLimits(agents=5000, active_grants=50_000, audit_entries=1_000_000),
    "enterprise": PlanLimits(agents=None, active_grants=None, audit_entries=None),
}


def plan_name(plan: str) -> str:
    """Return the plan, or ``free`` for an unknown value."""
    return plan if plan in _PLANS else "free"


def plan_limits(plan: str) -> PlanLimits:
    return _PLANS[plan_name(plan)]
