"""API keys: who may call the gateway, which models each key may use, per-key limits.

Settings: :class:`~.settings.AuthSettings` (``plugins.auth`` in ``docs/configuration.md``).

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

Each key's settings become its :class:`proxy.KeyPolicy` (``Principal.policy``),
the one typed value the limiter, the budget check and the router read.

The key is checked from the headers (``proxy_authenticate``), before the body is
read; what the key may do is checked once the body is parsed
(``proxy_authorize``):

* ``models``: the model the client asks for must match (names or globs);
* ``endpoints``: the passthrough endpoints (first path segment under ``/v1``:
  ``files``, ``batches``, ``responses``, ...; ``"*"`` for all) the key may reach.
  Without ``endpoints``, a key with no ``models`` list may reach every
  passthrough endpoint, and a key with a ``models`` list only those whose JSON
  body names an allowed model (its limit must not be escaped through a body the
  gateway cannot read, such as a multipart upload).

Metric: ``floodgate_auth_requests_total{key, outcome}``: ``key`` is the key's
name (``-`` when unknown or missing), ``outcome`` one of ``ok``, ``missing``,
``invalid``, ``forbidden_model``, ``forbidden_endpoint``.

Parts:

* :mod:`.settings` — the ``plugins.auth`` block, key names and digests;
* :mod:`.plugin` — :class:`AuthPlugin`: keys compiled for the hot path, the
  ``proxy_authenticate`` and ``proxy_authorize`` hooks;
* :mod:`.cli` — ``floodgate key new``.
"""

from .plugin import AuthPlugin
from .settings import AuthSettings

__all__ = ["AuthPlugin", "AuthSettings", "floodgate_plugin"]

floodgate_plugin = AuthPlugin
