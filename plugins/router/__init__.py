"""The complexity router: send each request to a model tier.

Clients ask for a route instead of a model: the selector (``auto`` by default)
classifies the request with ordered rules (keywords of the last user message,
prompt length, number of turns, request features) and picks a tier; a route
name (``simple``, ``complex``, an agent persona ...) picks that tier directly.
Existing clients reach a route through the core's ``aliases``
(``gpt-4o-mini: auto``). An explicit catalogue model is left to the core.

A tier is its model, ordered fallbacks, ``max_tokens`` default and cap, an
optional system prompt and parameter overrides; they become the route's
targets' ``overrides``, so fallbacks get the same treatment. Settings:
:class:`~.settings.RouterSettings` (``plugins.router`` in ``docs/configuration.md``).

A key whose policy has ``force_tier`` may choose a tier with the
``x-floodgate-tier`` request header (it wins over the requested model, even an
explicit catalogue model); anyone else sending it gets 403
``tier_forcing_not_allowed`` (never silently ignored), an unknown tier 400.

Route and rule names are ASCII tokens because they travel in response headers
(``x-floodgate-route``, ``x-floodgate-route-rule``) and metric labels; give a
tier a Chinese client-facing name with an alias (``订单查询: order``).

``floodgate route "这款手机和那款有什么区别?"`` shows the decision for a message.

Parts:

* :mod:`.settings` — the ``plugins.router`` block (pydantic models);
* :mod:`.body` — what rules look at in a request body (pure functions);
* :mod:`.tiers` — tiers and rules compiled for the hot path, and the
  cross-checks against the catalogue;
* :mod:`.plugin` — :class:`RouterPlugin`: configuration, classification, the
  ``proxy_route`` and ``proxy_finished`` hooks;
* :mod:`.cli` — ``floodgate route``.
"""

from .plugin import RouterPlugin
from .settings import RouterSettings
from .tiers import Decision

__all__ = ["Decision", "RouterPlugin", "RouterSettings", "floodgate_plugin"]

floodgate_plugin = RouterPlugin
