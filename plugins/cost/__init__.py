"""Cost accounting, per-key budgets and the usage ledger (the ``cost`` plugin).

* **Cost** of a request = its usage priced with the catalogue price of the model
  actually used (the last attempt's target): uncached prompt tokens at
  ``input``, cached ones at ``cached_input`` (``input`` if unset), completion at
  ``output``, all per million tokens. Short-circuits and requests that never
  reached an upstream cost 0. Passthrough requests and models without a price
  are *unpriced*: their cost is unknown (``ctx.cost`` is ``None``, the ledger row
  says ``unpriced``). Set on ``ctx.cost`` for the other observers and, on
  non-streaming priced responses, sent as ``x-floodgate-cost-usd``.
* **Budgets** per key, per UTC day and UTC month, from the principal's
  ``policy.budget`` or the plugin's ``default_budget``. Admission *reserves* the
  request's maximum cost (estimated prompt × input price + its output limit, or
  ``default_max_tokens``, × output price, at the dearest of the route's targets);
  it is refused (429 ``insufficient_quota``) when that does not fit beside what
  the key spent and what its requests in flight reserved. Finishing settles the
  reservation to the actual cost. Unpriced requests reserve nothing and are
  admitted while the budget is not used up. See :mod:`.budgets` for the rule.
  Spending is reloaded from the ledger at start-up.
* **Ledger**: one row per finished request, journaled on local disk as the
  response completes and moved in batches to SQLite or PostgreSQL
  (:mod:`.ledger`): a killed worker loses no answered request. ``floodgate usage``
  and ``GET /-/usage`` summarise it.

Settings: :class:`~.settings.CostSettings` (``plugins.cost`` in ``docs/configuration.md``).

Parts:

* :mod:`.settings` — the ``plugins.cost`` block;
* :mod:`.pricing` — the cost of a request and the most it may cost;
* :mod:`.budgets` — the budget rule, the store protocol and the in-process store;
* :mod:`.redis_budgets` — the fleet-wide store on Redis;
* :mod:`.fleet` — the budgets the shared state asks for (memory, or Redis with a local share
  and a replay after an outage) and the ledgers shared across a reload, kept by the state;
* :mod:`.rows` — one ledger row, its journal line;
* :mod:`.ledger` — journal, SQLite and PostgreSQL backends, the background mover;
* :mod:`.factory` — the ledger the settings describe;
* :mod:`.report` — the summary query, ``parse_since``, the UTC ``periods``, the table;
* :mod:`.plugin` — :class:`CostPlugin`: the hooks;
* :mod:`.endpoint` — ``GET /-/usage``;
* :mod:`.cli` — ``floodgate usage``.
"""

import proxy

from .plugin import CostPlugin
from .settings import CostSettings

__all__ = ["CostPlugin", "CostSettings", "floodgate_plugin"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

floodgate_plugin = CostPlugin
