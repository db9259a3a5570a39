"""Fixtures of the server tests: gateway processes and a Redis key prefix (see ``fleet_helpers``)."""

from fleet_helpers import gateway, redis_prefix

__all__ = ["gateway", "redis_prefix"]
