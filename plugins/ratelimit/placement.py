"""Which of a model's deployments a request goes to, from one look at every bucket involved.

The candidates come in the strategy's order (:meth:`~.deployments.Deployments.order`).
One ``peek`` of every bucket any of their plans needs (distinct keys: one store call,
one round trip for a shared store) tells which have headroom now: the first of those
wins. If none has, the one with the shortest predicted wait does (it queues there): a
newcomer joins the deployment it will get soonest, so the queues stay in proportion to
the deployments' capacities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .forecast import Forecast
from .plan import Plan, Spec
from .store import EPSILON, Claim, Grant

__all__ = ["choose", "peek_claims", "soonest"]


def peek_claims(plans: Sequence[Plan]) -> list[Claim]:
    """Every bucket the plans need, once."""
    claims: dict[str, Claim] = {}
    for plan in plans:
        for claim in plan.claims:
            claims.setdefault(claim.key, claim)
    return list(claims.values())


def _levels(plan: Plan, by_key: dict[str, float]) -> list[float]:
    return [by_key[claim.key] for claim in plan.claims]


def _fits(plan: Plan, by_key: dict[str, float]) -> bool:
    return all(by_key[c.key] >= c.amount - EPSILON for c in plan.claims)


def choose(plans: Sequence[Plan], peeked: Grant, claims: Sequence[Claim], forecast: Forecast, priority: int,
           blocker: Callable[[Plan], Spec | None]) -> int:
    """The index of the plan to admit the request on (see the module docstring)."""
    by_key = {claim.key: level for claim, level in zip(claims, peeked.levels)}
    for i, plan in enumerate(plans):
        if _fits(plan, by_key) and blocker(plan) is None:
            return i
    waits = [forecast.wait(plan.claims, _levels(plan, by_key), priority)[0] for plan in plans]
    return min(range(len(plans)), key=waits.__getitem__)


def soonest(plans: Sequence[Plan], peeked: Grant, claims: Sequence[Claim], forecast: Forecast) -> float:
    """The predicted wait of a newcomer on the soonest of ``plans`` (0: one has headroom now)."""
    by_key = {claim.key: level for claim, level in zip(claims, peeked.levels)}
    best = min(forecast.wait(plan.claims, _levels(plan, by_key), 0)[0] for plan in plans)
    return max(0.0, best)
