"""Timeouts resolved per upstream and model: connect, first_byte, stall, total (README, "Timeouts")."""

from __future__ import annotations

import pytest

import proxy
from proxy.config import AttemptTimeouts, config_from_dict
from proxy.testing import MOCK_MODELS, mock_config


def test_each_model_overrides_its_upstream_key_by_key():
    models = {**MOCK_MODELS, "gpt-4.1": {**MOCK_MODELS["gpt-4.1"], "timeouts": {"stall": 2, "first_byte": 3}}}
    config = config_from_dict(mock_config("http://upstream.invalid/v1", models=models, upstream={
        "timeouts": {"connect": 1, "first_byte": 5, "stall": 7, "total": 30}}))
    assert config.timeouts(config.target("gpt-4.1")) == AttemptTimeouts(1, 3, 2, 30)
    assert config.timeouts(config.target("deepseek-v3.2")) == AttemptTimeouts(1, 5, 7, 30)
    # A request's deadline caps every bound but connect.
    assert config.timeouts(config.target("deepseek-v3.2"), 4) == AttemptTimeouts(1, 4, 4, 4)


def test_defaults_and_validation():
    config = config_from_dict(mock_config("http://upstream.invalid/v1", upstream={"timeouts": {}}))
    assert config.timeouts(config.target("gpt-4.1")) == AttemptTimeouts(10, 60, 30, 600)
    with pytest.raises(proxy.ConfigErrors) as caught:
        config_from_dict(mock_config("http://upstream.invalid/v1", upstream={"timeouts": {"stall": 0, "stal": 1}}))
    assert {e.path for e in caught.value.errors} == {"upstreams.main.timeouts.stall", "upstreams.main.timeouts.stal"}
