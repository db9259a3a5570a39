"""Cost accounting, per-key budgets and the usage ledger (the ``cost`` plugin).

* **Cost** of a request = its usage priced with the catalogue price of the model
  actually used (the last attempt's target): uncached prompt tokens at
  ``input``, cached ones at ``cached_input`` (``input`` if unset), completion at
  ``output``, all per million tokens. Short-circuits and requests that never
  reached an upstream cost 0. Set on ``ctx.cost`` for the other observers and,
  on non-streaming responses, sent as ``x-floodgate-cost-usd``.
* **Budgets** per key, per UTC day and UTC month, from the principal's
  ``settings["budget"]`` (``daily_usd``, ``monthly_usd``) or the plugin's
  ``default_budget``. A key whose spending has reached a budget is refused at
  admission with 429 ``insufficient_quota`` (``x-should-retry: false``). The
  check is per request at admission: requests admitted while the key was
  still under budget all run, so spending may overshoot by the cost of the
  requests in flight. Spending is kept in memory and reloaded from the ledger
  at start-up, so a restart does not reset it.
* **Ledger**: one SQLite row per finished request, written in batches off the
  hot path (:mod:`.ledger`); ``floodgate usage`` and ``GET /-/usage``
  summarise it.

Example::

    plugins:
      cost:
        default_budget: {daily_usd: 5, monthly_usd: 100}
        ledger: {path: /var/lib/floodgate/usage.db}

Parts:

* :mod:`.settings` — the ``plugins.cost`` block and the ledger's path;
* :mod:`.schema` — the ledger's SQLite table;
* :mod:`.ledger` — the batched, off-the-hot-path SQLite writer;
* :mod:`.report` — the read side: ``summarize``, ``read_report``,
  ``format_table``, ``parse_since`` and the UTC ``periods``;
* :mod:`.plugin` — :class:`CostPlugin`: pricing, budgets, metrics and the
  ``/-/usage`` endpoint;
* :mod:`.cli` — ``floodgate usage``.
"""

import proxy

from .plugin import CostPlugin
from .settings import CostSettings

__all__ = ["CostPlugin", "CostSettings", "floodgate_plugin"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

floodgate_plugin = CostPlugin
