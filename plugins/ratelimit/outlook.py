"""What the limiter can tell before admitting: a route's predicted wait, and its status per route
and deployment (for the overload ladder, ``/-/status`` and ``floodgate status``)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import proxy

from .deployments import Deployments
from .placement import peek_claims, soonest
from .plan import CONCURRENCY, Plan, Planner
from .queue import AdmissionQueue
from .store import BucketStore, Claim, Grant


def predicted_wait(planner: Planner, store: BucketStore, queue: AdmissionQueue, now: float,
                   ctx: proxy.RequestContext, route: proxy.Route) -> Awaitable[float] | float | None:
    """The wait of a request like ``ctx`` on ``route``'s soonest deployment, its key's own limits
    left out; ``None`` when nothing here limits the route."""
    if not planner.configured or not route.targets:
        return None
    candidates = Deployments.candidates(route) or route.targets[:1]
    plans: list[Plan] = []
    for target in candidates:
        try:
            plan = planner.plan(ctx, target, own_key=False)
        except proxy.Rejection:  # larger than a bucket: refused whatever the wait
            continue
        if plan is None:
            return 0.0  # nothing limits that deployment
        plans.append(plan)
    if not plans:
        return None
    claims = peek_claims(plans)
    peeked = store.peek(claims, now)
    if isinstance(peeked, Grant):
        return soonest(plans, peeked, claims, queue.forecast)
    return _soonest_later(plans, claims, peeked, queue)


async def _soonest_later(plans: list[Plan], claims: list[Claim], pending: Awaitable[Grant],
                         queue: AdmissionQueue) -> float:
    return soonest(plans, await pending, claims, queue.forecast)


async def status(deployments: Deployments | None, store: BucketStore, queue: AdmissionQueue, now: float,
                 mode: str) -> dict[str, Any]:
    """Per route: queue length and the predicted wait of its last waiter; per deployment: limits
    in force, what is left, requests in flight."""
    routes = {name: {"queue": count, "predicted_wait_ms": round(wait * 1000, 1)}
              for name, (count, wait) in queue.by_route(now).items()}
    levels: dict[str, float] = {}
    if deployments is not None and deployments.by_key:
        claims = [spec.unit for d in deployments.by_key.values() for spec in d.specs()
                  if spec.kind is not CONCURRENCY]
        if claims:
            peeked = store.peek(claims, now)
            grant = peeked if isinstance(peeked, Grant) else await peeked
            levels = {claim.key: level for claim, level in zip(claims, grant.levels)}
    return {"routes": routes, "deployments": deployments.status(levels) if deployments is not None else {},
            "ratelimit": {"queue": len(queue), "mode": mode}}
