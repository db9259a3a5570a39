"""Upstreams: pooled sessions (``client``), failure classification (``failures``) and
the headers that cross the gateway (``headers``)."""

from .client import Upstreams
from .failures import RelayedRejection, UpstreamError, excerpt, parse_retry_after
from .headers import forwardable_headers, relayable_headers

__all__ = ["RelayedRejection", "UpstreamError", "Upstreams", "excerpt", "forwardable_headers",
           "parse_retry_after", "relayable_headers"]
