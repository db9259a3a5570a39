"""The breakers of a fleet: every worker mirrors the breakers kept in Redis, kept across reloads.

With ``state.backend: memory`` the breakers are plain :class:`~.breaker.Breaker` objects,
kept by the state (``state.keep``) so a reload's new plugin object finds them as they
were. With ``redis`` each is a :class:`FleetBreaker`: a mirror of the fleet's breaker in
Redis (:mod:`.shared`'s scripts), so deciding whether a target may be used costs no
round trip:

* **Outcomes** are recorded in Redis (one script call for all the outcomes of the
  requests that finished meanwhile): failures seen by any worker open the breaker.
* **State changes** (opened, half-open, closed) are published on one channel; every
  worker's listener updates its mirrors at once, and re-reads them all whenever it
  (re)subscribes.
* **The one half-open probe**: when the cooldown ends, every worker's mirror asks to
  claim the probe slot; exactly one gets it (an atomic script) and lets its next
  request on that target be the probe. A claim unused for ``hold`` seconds lapses and
  is claimed again (by a worker with traffic, if one has any); a used one lasts the
  probe's lease (the retry deadline), so a worker that dies probing blocks nobody for long.

While the state is degraded (Redis unreachable) each mirror is a local breaker again,
from the state it had; when Redis is back the listener re-reads the fleet's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any

import proxy

from .breaker import _STATE_NAMES, CLOSED, HALF_OPEN, OPEN, Breaker, BreakerMetrics
from .settings import BreakerSettings
from .shared import CLAIM, READ, RECORD_MANY, RELEASE, USE, record_args

__all__ = ["FleetBreaker", "FleetBreakers", "kept_breakers"]

log = logging.getLogger("floodgate.retry")

_KEPT = "retry.breakers"
#: Seconds between looks at the shared state while the listener cannot subscribe.
_WAIT = 0.1


class FleetBreaker(Breaker):
    """A breaker mirroring the fleet's (see the module docstring); local while degraded."""

    __slots__ = ("fleet", "token", "token_until", "timer", "claiming", "heard")

    def __init__(self, model: str, settings: BreakerSettings, metrics: BreakerMetrics, label: str | None,
                 fleet: FleetBreakers) -> None:
        super().__init__(model, settings, metrics, label)
        self.fleet = fleet
        self.token = False  # this worker holds the fleet's probe slot...
        self.token_until = 0.0  # ...until then, unless a request uses it
        self.timer: Any = None  # when to claim the slot
        self.claiming = False
        #: Messages heard from the channel: a reply to a call that was on its way while one came
        #: may be older than it, so it is not applied (the breaker is read again instead).
        self.heard = 0

    def allow(self, now: float) -> tuple[bool, bool]:
        if not self.fleet.live:
            return super().allow(now)
        if self.state == CLOSED:
            return True, False
        if self.state == OPEN and now < self.open_until:
            return False, False
        if self.token and not self.probing and now < self.token_until:
            self.probing = True
            self.fleet.use(self)
            return True, True
        if not self.probing:
            self.fleet.claim(self)
        return False, False

    def record(self, failed: bool, now: float, probe: bool) -> None:
        if not self.fleet.live:
            super().record(failed, now, probe)
            return
        if probe:
            self.token = self.probing = False
        self.fleet.record(self, failed, probe)

    def release(self) -> None:
        if self.token and self.fleet.live:
            self.fleet.release(self)
        self.token = self.probing = False

    def mirror(self, state: int, left: float, holder: str | None, changed: bool = False) -> None:
        """The fleet's breaker as Redis reported it: ``left`` seconds of cooldown (open) or of the
        probe slot's hold (half-open), held by ``holder`` (``None``: not said)."""
        fleet = self.fleet
        now = fleet.clock.monotonic()
        if state == OPEN:
            self.open_until = now + left
        if state != HALF_OPEN:
            self.token = self.probing = False
        elif holder is not None and not self.probing:
            self.token = holder == fleet.instance
            self.token_until = now + left
        if state == CLOSED:
            self._reset()
        if state != self.state:
            self.state = state
            if self.label == self.model:
                self.metrics.state(self.model).set(state)
        if changed:  # this worker's call changed it: counted and logged once for the fleet
            if self.label is not None:
                self.metrics.transitions(self.label, _STATE_NAMES[state]).inc()
            log.log(logging.WARNING if state == OPEN else logging.INFO, "circuit breaker of %s is now %s",
                    self.model, _STATE_NAMES[state])
        if state == OPEN:
            fleet.claim_at(self, self.open_until)
        elif state == HALF_OPEN and not self.probing:
            fleet.claim_at(self, now + left)  # when the slot lapses unused (now, if it is free)
        else:
            fleet.claim_at(self, None)


_Outcome = tuple[FleetBreaker, bool, bool]  # a breaker, whether the attempt failed, whether it was the probe


class FleetBreakers:
    """Every breaker of one application (kept across reloads), and their link to Redis."""

    def __init__(self, state: proxy.SharedState) -> None:
        self.state = state
        self.breakers: dict[str, Breaker] = {}
        self.instance = state.instance
        self.clock: proxy.Clock = proxy.LoopClock()
        self.redis = state.redis if state.backend == "redis" else None
        self.channel = state.key("breakers")
        self._prefix = state.key("breaker") + ":"
        self._args: tuple[Any, ...] = ()
        self._hold_ms = self._lease_ms = self._ttl_ms = 0
        pipe = state.pipe if self.redis is not None else None
        if pipe is not None:  # the scripts on the pipe: they share the requests' round trips
            self._record = pipe.register_script(RECORD_MANY)
            self._claim = pipe.register_script(CLAIM)
            self._use = pipe.register_script(USE)
            self._release = pipe.register_script(RELEASE)
            self._read = pipe.register_script(READ)
        # Outcomes to record and breakers to read, gathered per write of the pipe (its calls' replies
        # come back in order: so do the message counts each call saw when it left).
        # Nobody waits for an outcome: it may share a later write (the next request's admission).
        self._records: proxy.Coalescer[_Outcome] = proxy.Coalescer(
            self._call_records, self._answer_records, lambda _, exc: self._failed(self._heard_records, exc), pipe,
            within=proxy.Coalescer.BACKGROUND)
        self._reads: proxy.Coalescer[FleetBreaker] = proxy.Coalescer(
            self._call_reads, self._answer_reads, lambda _, exc: self._failed(self._heard_reads, exc), pipe)
        self._heard_records: deque[list[int]] = deque()
        self._heard_reads: deque[list[int]] = deque()
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._users = 0

    @property
    def live(self) -> bool:
        """Whether the mirrors follow Redis now (else each breaker decides locally)."""
        return self.redis is not None and self.state.shared

    def configure(self, settings: BreakerSettings, deadline_s: float, clock: proxy.Clock) -> None:
        """A configuration's thresholds; a probe's slot lasts its deadline (plus a margin)."""
        self.clock = clock
        lease = deadline_s + 5.0
        self._hold_ms = int(max(1.0, 2 * self.state.settings.timeouts.command) * 1000)
        self._lease_ms = int(lease * 1000)
        self._ttl_ms = int(2 * max(settings.window_s, settings.cooldown_s, lease) * 1000)
        self._args = record_args(settings, self._ttl_ms, self.channel)

    def make(self, model: str, settings: BreakerSettings, metrics: BreakerMetrics, label: str | None) -> Breaker:
        """A new breaker for ``model`` (a mirror with Redis state, read from it in the background)."""
        if self.redis is None:
            return Breaker(model, settings, metrics, label)
        breaker = FleetBreaker(model, settings, metrics, label, self)
        if self.live:
            self._reads.add(breaker)
        return breaker

    # -- calls (in the background: the request never waits for them) --------------------
    def record(self, breaker: FleetBreaker, failed: bool, probe: bool) -> None:
        self._records.add((breaker, failed, probe))

    def _call_records(self, outcomes: list[_Outcome]) -> Awaitable[Any]:
        """Outcomes, one script call for all gathered (on the pipe: with the requests' calls)."""
        args: list[Any] = [*self._args]
        for breaker, failed, probe in outcomes:
            args += (breaker.model, int(failed), int(probe))
        self._heard_records.append([b.heard for b, _, _ in outcomes])  # replies come back in this order
        return self._record(keys=[self._key(b) for b, _, _ in outcomes], args=args)

    def _answer_records(self, outcomes: list[_Outcome], reply: Any) -> None:
        heard = self._heard_records.popleft()
        for i, (breaker, _, _) in enumerate(outcomes):
            state, left, changed = reply[3 * i: 3 * i + 3]
            self._apply(breaker, heard[i], int(state), int(left) / 1000, None, bool(int(changed)))

    def _call_reads(self, breakers: list[FleetBreaker]) -> Awaitable[Any]:
        self._heard_reads.append([b.heard for b in breakers])
        return self._read(keys=[self._key(b) for b in breakers])

    def _answer_reads(self, breakers: list[FleetBreaker], reply: Any) -> None:
        heard = self._heard_reads.popleft()
        for i, breaker in enumerate(breakers):
            state, left, holder = reply[3 * i: 3 * i + 3]
            self._apply(breaker, heard[i], int(state), int(left) / 1000, _text(holder))

    def _failed(self, heard: deque[list[int]], exc: Exception) -> None:
        """A call failed: degraded, the breakers decide locally meanwhile (the outcomes are dropped)."""
        heard.popleft()
        if isinstance(exc, self.state.errors):
            self.state.failed(exc)
        else:
            log.error("circuit breakers: a call to Redis failed: %r", exc)

    def _apply(self, breaker: FleetBreaker, heard: int, state: int, left: float, holder: str | None,
               changed: bool = False) -> None:
        """A call's reply, unless a message came while it was on its way: Redis may have run the call
        before what the message says, so the breaker is read again instead (until no message crosses)."""
        if breaker.heard == heard:
            breaker.mirror(state, left, holder, changed)
            return
        if changed:  # the change this call made is still counted and logged once
            if breaker.label is not None:
                breaker.metrics.transitions(breaker.label, _STATE_NAMES[state]).inc()
            log.log(logging.WARNING if state == OPEN else logging.INFO, "circuit breaker of %s is now %s",
                    breaker.model, _STATE_NAMES[state])
        self._reads.add(breaker)

    def claim(self, breaker: FleetBreaker) -> None:
        if not breaker.claiming and self.live:
            breaker.claiming = True
            self._spawn(self._claim_slot(breaker))

    def claim_at(self, breaker: FleetBreaker, when: float | None) -> None:
        """Claim ``breaker``'s probe slot at ``when`` (``None``: no claim due)."""
        if breaker.timer is not None:
            breaker.timer.cancel()
            breaker.timer = None
        if when is not None:
            breaker.timer = self.clock.call_at(when, lambda: self.claim(breaker))

    async def _claim_slot(self, breaker: FleetBreaker) -> None:
        try:
            heard = breaker.heard
            state, left, mine, changed = await self._claim(keys=[self._key(breaker)], args=[
                self._hold_ms, self._ttl_ms, self.channel, breaker.model, self.instance])
            self._apply(breaker, heard, int(state), int(left) / 1000, self.instance if int(mine) else "",
                        bool(int(changed)))
        except self.state.errors as exc:
            self.state.failed(exc)
        finally:
            breaker.claiming = False

    def use(self, breaker: FleetBreaker) -> None:
        """The claimed slot goes to a request: it lasts the probe's lease from now."""
        self._spawn(self._call(self._use, breaker, self._lease_ms, self.instance))

    def release(self, breaker: FleetBreaker) -> None:
        self._spawn(self._call(self._release, breaker, self.channel, breaker.model, self.instance))

    async def _call(self, script: Any, breaker: FleetBreaker, *args: Any) -> None:
        try:
            await script(keys=[self._key(breaker)], args=list(args))
        except self.state.errors as exc:
            self.state.failed(exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _key(self, breaker: Breaker) -> str:
        return self._prefix + breaker.model

    # -- the listener ---------------------------------------------------------------------
    def acquire(self) -> None:
        """A configuration starts using the breakers (the first starts the listener)."""
        self._users += 1
        if self.redis is not None and self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def release_user(self) -> None:
        """A configuration stopped; the last one stops the listener and the calls."""
        self._users -= 1
        if self._users > 0:
            return
        tasks = [t for t in (self._listener, *self._background) if t is not None]
        self._listener = None
        await self._records.close()  # what was gathered goes now
        await self._reads.close()
        for breaker in self.breakers.values():
            if isinstance(breaker, FleetBreaker):
                self.claim_at(breaker, None)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        """Follow the channel while the state is shared; re-read every breaker on (re)subscribing."""
        assert self.redis is not None
        while True:
            if not self.state.shared:
                await asyncio.sleep(_WAIT)
                continue
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                for breaker in self.breakers.values():  # read again (on the pipe: no wait here)
                    if isinstance(breaker, FleetBreaker):
                        self._reads.add(breaker)
                while self.state.shared:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_message(message["data"])
            except self.state.errors as exc:
                self.state.failed(exc)
            finally:
                with contextlib.suppress(*self.state.errors):
                    await pubsub.aclose()

    def _on_message(self, data: bytes | str) -> None:
        """``<state> <ms left> <holder or -> <model>``."""
        parts = _text(data).split(" ", 3)
        breaker = self.breakers.get(parts[3]) if len(parts) == 4 else None
        if isinstance(breaker, FleetBreaker):
            breaker.heard += 1
            breaker.mirror(int(parts[0]), int(parts[1]) / 1000, parts[2])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def kept_breakers(state: proxy.SharedState) -> FleetBreakers:
    """The application's breakers (made the first time)."""
    return state.keep(_KEPT, lambda: FleetBreakers(state))
