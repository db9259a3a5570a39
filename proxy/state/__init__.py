"""State that outlives a request and a reload: :class:`SharedState` (Redis or memory), the
auto-pipelined connection its stores call scripts on (:class:`Pipe`), and the :class:`Coalescer`
that makes one call of what a store is asked in one turn of the event loop."""

from .coalesce import Coalescer
from .futures import relay
from .pipe import Pipe, PipeScript
from .shared import STATE_ERRORS, SharedState

__all__ = ["STATE_ERRORS", "Coalescer", "Pipe", "PipeScript", "SharedState", "relay"]
