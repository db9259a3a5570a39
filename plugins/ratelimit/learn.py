"""What a provider says about its limits: its ``x-ratelimit-*`` and ``retry-after`` headers.

OpenAI's convention, followed by most OpenAI-compatible providers (DeepSeek, Azure,
Groq, Together ...): ``x-ratelimit-limit-requests`` / ``-tokens`` (the quota per
minute), ``x-ratelimit-remaining-requests`` / ``-tokens`` (what is left now) and
``x-ratelimit-reset-requests`` / ``-tokens`` (until the quota is whole again:
``20ms``, ``1s``, ``6m0s``, or plain seconds), and ``retry-after`` (seconds) /
``retry-after-ms`` on a 429. Anything unreadable is ignored: a provider's headers
can only make the gateway more careful, never fail a request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["ProviderView", "parse_duration", "read_headers"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_SECONDS = 86_400.0  # a day: anything longer is a provider's nonsense, not a plan


class ProviderView(NamedTuple):
    """One response's statement of the provider's limits (``None``: not stated)."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None

    @property
    def empty(self) -> bool:
        return all(value is None for value in self)


def parse_duration(text: str) -> float | None:
    """Seconds of ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` or a plain number; ``None`` if unreadable."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and 0 <= seconds <= _MAX_SECONDS else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def read_headers(headers: Mapping[str, str] | None, retry_after: float | None = None) -> ProviderView:
    """The provider's view from a response's headers (case-insensitive ``Mapping``).

    :param retry_after: the ``Retry-After`` the core already parsed, if any (wins over the headers).
    """
    if not headers:
        return ProviderView(retry_after=retry_after)
    get = headers.get
    reset_r = get("x-ratelimit-reset-requests")
    reset_t = get("x-ratelimit-reset-tokens")
    if retry_after is None:
        ms = _number(get("retry-after-ms"))
        retry_after = ms / 1000 if ms is not None else _number(get("retry-after"))
    return ProviderView(
        _number(get("x-ratelimit-limit-requests")), _number(get("x-ratelimit-remaining-requests")),
        parse_duration(reset_r) if reset_r else None,
        _number(get("x-ratelimit-limit-tokens")), _number(get("x-ratelimit-remaining-tokens")),
        parse_duration(reset_t) if reset_t else None,
        retry_after if retry_after is None or retry_after <= _MAX_SECONDS else _MAX_SECONDS)
