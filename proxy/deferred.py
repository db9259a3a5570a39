""":class:`Deferred`: a ``proxy_admit`` decision that may be awaited with the later ones.

Admission hooks run one after another, so a plugin that waits for a shared store
makes the next one wait for it too: with a budget and a rate limit in Redis that
is two round trips before the first attempt. A plugin whose decision needs
nothing from the later implementations, and which leaves ``ctx.route`` alone,
returns its awaitable wrapped in :class:`Deferred` instead: the core runs the
later implementations at once (their calls to Redis go out in the same write as
its call) and then awaits the deferred decisions in the order the plugins ran.

The deferred awaitables are awaited in the request's own task (no task each). A
refusal — from any implementation, deferred or not — abandons the deferred
decisions not yet awaited: each runs to its first wait and is cancelled there, so
the plugin gives back what it was granted (as when the client leaves); the first
refusal in plugin order reaches the client. Returned from any other hook, a
:class:`Deferred` is simply awaited where it stands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any

__all__ = ["Deferred"]


class Deferred:
    """An admission decision to await after the later implementations have run (see the module)."""

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable

    def __await__(self) -> Generator[Any, None, Any]:
        return self.awaitable.__await__()
