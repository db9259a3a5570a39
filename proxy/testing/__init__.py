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

``PluginHarness`` (no fixture needed)
    Plugins configured as in a gateway, their hooks driven one by one without
    sockets, time taken from a :class:`proxy.ManualClock` the test advances: rate
    limits, queues, breakers, budgets and retry decisions tested without sleeping.
    ``run_now(awaitable)`` asserts that something answers without waiting.

The parts: :mod:`.fixtures` (the fixtures and ``mock_config``) and :mod:`.harness`
(the offline harness); this package re-exports them, so ``pytest11: floodgate =
"proxy.testing"`` registers the fixtures.
"""

from .fixtures import MOCK_MODELS, RunningGateway, floodgate, mock_config, mock_upstream
from .harness import PluginHarness, run_now

__all__ = ["MOCK_MODELS", "PluginHarness", "RunningGateway", "floodgate", "mock_config", "mock_upstream",
           "run_now"]
