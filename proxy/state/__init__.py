"""State that outlives a request and a reload: :class:`SharedState` (Redis or memory)."""

from .shared import STATE_ERRORS, SharedState

__all__ = ["STATE_ERRORS", "SharedState"]
