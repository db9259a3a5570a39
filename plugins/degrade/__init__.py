"""Degrade, don't fail: an overload ladder per route (the ``degrade`` plugin).

While a route's capacity is short — a request on it would wait longer than
``threshold_ms`` for capacity, as the rate limiter predicts (``proxy_predicted_wait``:
its deployments have no headroom and its queue is long) — the route's steps apply, in
their declared order, to each request that finds it short:

* ``faq: true`` — short-circuit plugins may answer looser matches (``ctx.relax``; the
  FAQ plugin then ignores its rules' ``max_length`` and ``exclude``);
* ``route: <name>`` — the request moves to that (cheaper) route, if that one has capacity;
* ``max_tokens: N`` — its answer is capped at N tokens (and it continues down the ladder);
* ``shed_below_priority: P`` — keys of lower priority get 429 with ``retry-after``;
* ``reject: true`` — 429 with ``retry-after``.

The first step that absorbs the request (an answer, a move, a refusal) ends its walk. A
request no step in force absorbs brings the next step into force (at most one every
``escalate_s``, and only while the wait has not improved since the last) and gets it.
Steps come off one at a time, the last first, once every request has found capacity
again (waits below ``recover_ms``) for ``hold_s``. Keys with ``degrade: false`` are
never degraded: they get the route's own models or an error.

Responses served by a step say so in ``x-floodgate-degraded: <step>``; the ledger records
it (``degraded``); ``floodgate_degrade_requests_total{route,step}`` counts them,
``floodgate_degrade_steps_in_force{route}`` and ``floodgate_degrade_transitions_total``
show the ladder, and ``/-/status`` the step in force per route.

Settings: :class:`~.settings.DegradeSettings` (``plugins.degrade`` in ``docs/configuration.md``).

Parts:

* :mod:`.settings` — the ``plugins.degrade`` block;
* :mod:`.ladder` — :class:`~.ladder.Ladder`, one route's steps in force, with hysteresis;
* :mod:`.plugin` — :class:`DegradePlugin`: the readings, the steps, the metrics.
"""

import proxy

from .ladder import Ladder
from .plugin import DegradePlugin
from .settings import DegradeSettings, LadderSettings, StepSettings

__all__ = ["DegradePlugin", "DegradeSettings", "Ladder", "LadderSettings", "StepSettings", "floodgate_plugin"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

floodgate_plugin = DegradePlugin
