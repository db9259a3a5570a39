"""Upstreams: pooled sessions (``client``), failure classification (``failures``) and
the headers that cross the gateway (``headers``) and the attempt timer (``watchdog``)."""

from .client import Upstreams
from .failures import RelayedRejection, UpstreamError, excerpt, parse_retry_after
from .headers import forwardable_headers, relayable_dict, relayable_headers
from .watchdog import Watchdog

__all__ = ["RelayedRejection", "UpstreamError", "Upstreams", "Watchdog", "excerpt", "forwardable_headers",
           "parse_retry_after", "relayable_dict", "relayable_headers"]
