"""Requests in flight at each deployment, attempt by attempt.

A request takes its deployment's concurrency slot with the rest of its admission, and the
slot follows the attempts: an attempt that goes to a deployment the request holds nothing
on — a failover, a hedge — takes one there as it starts (``proxy_attempt_started``; the
attempt is already decided, so in this process's memory the take cannot be refused: a
full deployment would go over its limit, a debt the next give-back pays — with a shared
store, which cannot wait for a round trip, it is only counted), and the place an attempt
failed at (``proxy_attempt_result``) is given back once the request moves on. A retry on
the same deployment keeps its slot through its backoff: an overloaded provider is not
sent someone else meanwhile. Whatever is still held goes back when the request ends.

The counts (:attr:`~.deployments.Deployment.in_flight`) are what adaptive concurrency,
``least_outstanding`` and ``proxy_unavailable`` see: what the provider is serving now,
failovers included. The retry plugin asks ``proxy_unavailable`` before failing over, so a
full or throttled deployment is not sent a failover it would refuse.
"""

from __future__ import annotations

from collections.abc import Callable

import proxy

from .deployments import Deployment, Deployments
from .plan import CONCURRENCY
from .store import BucketStore, Claim, Return

__all__ = ["FULL", "InFlight"]

_HELD = "ratelimit.held"
#: The reason ``proxy_unavailable`` gives for a deployment with no slot left for the request.
FULL = "full"

#: ``release(store, returns, lease)``: give back (and wake the queue).
Release = Callable[[BucketStore, list[Return], str], None]


class _Slot:
    __slots__ = ("deployment", "store", "lease", "taken", "failed")

    def __init__(self, deployment: Deployment, store: BucketStore, lease: str, taken: bool) -> None:
        self.deployment = deployment
        self.store = store
        self.lease = lease
        self.taken = taken  # a slot of the store is held (else only counted here)
        self.failed = False  # its last attempt failed: given back when the request moves elsewhere


def _slot_claim(deployment: Deployment) -> Claim | None:
    """The deployment's concurrency bucket as it is now (its limit may have changed)."""
    return next((s.unit for s in deployment.specs() if s.kind is CONCURRENCY), None)


class InFlight:
    """The deployment slots each request holds (in ``ctx.state``), taken and given back per attempt."""

    def __init__(self, deployments: Deployments, release: Release, clock: proxy.Clock) -> None:
        self.deployments = deployments
        self._release = release
        self.clock = clock

    @staticmethod
    def _held(ctx: proxy.RequestContext) -> dict[str, _Slot]:
        """The request's slots by place (``Target.qualified``)."""
        held = ctx.state.get(_HELD)
        if held is None:
            held = ctx.state[_HELD] = {}
        return held

    def placed(self, ctx: proxy.RequestContext, target: proxy.Target, deployment: Deployment, store: BucketStore,
               lease: str, taken: bool) -> None:
        """The admission placed the request on ``deployment`` (its slot among the admission's claims)."""
        self._held(ctx)[target.qualified] = _Slot(deployment, store, lease, taken)
        self._count(deployment, 1)

    def started(self, ctx: proxy.RequestContext, store: BucketStore, attempt: proxy.AttemptRecord) -> None:
        target = attempt.target
        held = self._held(ctx)
        for place in [p for p, slot in held.items() if slot.failed and p != target.qualified]:
            self._give_back(held.pop(place))  # the request moved on from where its attempt failed
        slot = held.get(target.qualified)
        if slot is not None:
            slot.failed = False  # the admission's slot, or a retry on the same deployment: it keeps its slot
            return
        deployment = self.deployments.of(target) if target.deployment is not None else None
        if deployment is None:
            return
        claim = _slot_claim(deployment)
        taken = False
        if claim is not None and not store.shared:  # a shared store cannot wait for a round trip: counted only
            store.settle([(claim, -1.0)], "", self.clock.monotonic())  # taken: the attempt is decided
            taken = True
        held[target.qualified] = _Slot(deployment, store, "", taken)
        self._count(deployment, 1)

    def no_room(self, ctx: proxy.RequestContext, target: proxy.Target, now: float) -> str | None:
        """Why ``target`` (a deployment) has no room for ``ctx`` now, if it has none."""
        deployment = self.deployments.of(target)
        if deployment is None:
            return None
        if now < deployment.throttled_until:
            return "throttled by its provider"
        held = ctx.state.get(_HELD)
        slots = deployment.concurrency
        if slots is not None and deployment.in_flight >= slots and not (held and target.qualified in held):
            return FULL
        return None

    def failed(self, ctx: proxy.RequestContext, target: proxy.Target) -> None:
        """An attempt on ``target`` failed: its slot goes back once the request tries elsewhere."""
        held = ctx.state.get(_HELD)
        slot = held.get(target.qualified) if held else None
        if slot is not None:
            slot.failed = True

    def finish(self, ctx: proxy.RequestContext) -> None:
        """The request ended: every slot it still holds goes back."""
        held = ctx.state.pop(_HELD, None)
        for slot in (held or {}).values():
            self._give_back(slot)

    def _give_back(self, slot: _Slot) -> None:
        self._count(slot.deployment, -1)
        claim = _slot_claim(slot.deployment) if slot.taken else None
        if claim is not None:
            self._release(slot.store, [(claim, 1.0)], slot.lease)

    def _count(self, deployment: Deployment, change: int) -> None:
        deployment.in_flight += change
        self.deployments.publish(deployment)
