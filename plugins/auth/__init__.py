"""API keys: who may call the gateway, which models each key may use, per-key limits.

Settings (``plugins.auth``)::

    plugins:
      auth:
        admin_key_sha256: 9f86d0...        # or admin_key: ${FLOODGATE_ADMIN_KEY}
        keys:
          - {name: shop-bot, key: "${SHOP_BOT_KEY}", models: ["deepseek-*", gpt-4.1-mini]}
          - name: analytics
            sha256: 2c26b4...              # hex SHA-256 of the secret: the file holds no secret
            priority: 10
            rate_limit: {requests_per_second: 5, burst: 10}
            budget: {daily_usd: 20}

Clients send their key as ``Authorization: Bearer <key>`` (what every OpenAI SDK
does) or in an ``api-key`` header (what the Azure OpenAI SDKs send). Secrets are
only kept as SHA-256 digests and compared with :func:`hmac.compare_digest`; no
key, nor any part of one, ever appears in a message, log line or metric label:
callers are known by their key's ``name``.

Without any key configured (no ``plugins.auth`` block, or no ``keys`` and no
admin key) the plugin does nothing and callers are anonymous (the core's
default). With only an admin key, the OpenAI endpoints stay open and only the
admin endpoints (``/-/...``) need that key.

The admin key authenticates as ``Principal(name="admin", admin=True)`` on every
endpoint; the core's ``require_admin`` lets only it (or, without auth, the
anonymous caller) into admin endpoints.

``floodgate key new --name NAME`` prints a fresh key and its config entry.

Metric: ``floodgate_auth_requests_total{key, outcome}``: ``key`` is the key's
name (``-`` when unknown or missing), ``outcome`` one of ``ok``, ``missing``,
``invalid``, ``forbidden_model``.

The ``models`` list is also checked on passthrough endpoints (other ``/v1/*``
paths, whose bodies the core does not parse): a JSON body's ``model`` must be
allowed, and a body that is not JSON (e.g. a multipart upload) is refused for a
key with a list, since its model cannot be checked.

Parts:

* :mod:`.settings` — the ``plugins.auth`` block, key names and digests;
* :mod:`.plugin` — :class:`AuthPlugin`: keys compiled for the hot path and
  the ``proxy_authenticate`` hook;
* :mod:`.cli` — ``floodgate key new``.
"""

from .plugin import AuthPlugin
from .settings import AuthSettings

__all__ = ["AuthPlugin", "AuthSettings", "floodgate_plugin"]

floodgate_plugin = AuthPlugin
