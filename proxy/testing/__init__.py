"""A pytest plugin for plugin authors (registered as ``floodgate`` via ``pytest11``).

Fixtures:

``mock_upstream``
    A running :class:`proxy.mock.MockUpstream` on a real socket: it
    streams, reports exact usage and fails on demand
    (``mock_upstream.set_behaviour("gpt-4.1", fail_first=2, error_status=503)``).

``floodgate``
    A factory that builds and starts a gateway in front of ``mock_upstream``::

        async def test_my_plugin(floodgate):
            gw = await floodgate(plugins=[MyPlugin()], plugin_settings={"my": {"x": 1}})
            client = gw.openai()             # an openai.AsyncOpenAI pointed at the gateway
            reply = await client.chat.completions.create(model="gpt-4.1", messages=[...])

    It takes either a whole ``config`` (a dict, YAML text or a :class:`proxy.Config`)
    or builds one with :func:`mock_config`. ``builtins`` defaults to none, so a
    test sees only the plugins it asks for; pass ``builtins=BUILTIN_PLUGINS``
    for the whole chain.

Requires pytest-aiohttp (``pip install floodgate[test]``); tests are async.

The parts: :mod:`.fixtures` holds the fixtures and helpers above; this package re-exports them,
so ``pytest11: floodgate = "proxy.testing"`` registers them. Other test helpers for plugin
authors belong beside it, re-exported here.
"""

from .fixtures import MOCK_MODELS, RunningGateway, floodgate, mock_config, mock_upstream

__all__ = ["MOCK_MODELS", "RunningGateway", "floodgate", "mock_config", "mock_upstream"]
