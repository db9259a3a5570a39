""":class:`ModelLookup`: which catalogue entry serves a model name, and the :class:`Target` for it.

Exact catalogue names are resolved at start-up. A name only a pattern matches gets its
target on first use, kept in a bounded least-recently-used cache (clients choose these
names, so nothing about them may grow without bound).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..types import Target
from .patterns import Pattern, is_pattern, ordered
from .schema import ModelSettings

#: Names matched by patterns whose targets are kept (least recently used dropped first).
MAX_CONCRETE_NAMES = 1024


@dataclass(slots=True)
class _Resolved:
    entry: str  # the catalogue name serving it (itself, or a pattern)
    deployments: tuple[Target, ...]  # one target per deployment (one for an entry without deployments)
    chain: tuple[Target, ...] | None = None  # with the fallbacks' targets, on first use

    @property
    def target(self) -> Target:
        return self.deployments[0]


def _exact_id(name: str, pattern: bool) -> Callable[[str | None], str]:
    """The model id of a catalogue name asked for as itself: the ``upstream_model`` set (else the name);
    a pattern's own text (``target("gpt-*")``) is sent as it is."""
    def upstream_model(template: str | None) -> str:
        return name if pattern else template or name
    return upstream_model


def _targets(model: str, entry: ModelSettings, upstream_model: Callable[[str | None], str]) -> tuple[Target, ...]:
    """``model``'s targets: one per deployment of its entry, each with the model id it is sent as
    (``upstream_model(template)``: a deployment's own ``upstream_model``, else the entry's)."""
    if not entry.deployments:
        return (Target(model, entry.upstream, upstream_model(entry.upstream_model)),)
    return tuple(Target(model, d.upstream, upstream_model(d.upstream_model or entry.upstream_model), deployment=d.key)
                 for d in entry.deployments)


class ModelLookup:
    """Exact names, then patterns (longer first, then earlier in the catalogue)."""

    def __init__(self, models: Mapping[str, ModelSettings], *, max_concrete: int = MAX_CONCRETE_NAMES) -> None:
        self._models = models
        self.patterns = ordered([Pattern.compile(name, i) for i, name in enumerate(models) if is_pattern(name)])
        # Exact names, and each pattern as a name of its own: plugins that precompute something
        # per catalogue entry can ask for ``target("gpt-*")`` (whatever the glob's syntax).
        self._exact = {name: _Resolved(name, _targets(name, m, _exact_id(name, is_pattern(name))))
                       for name, m in models.items()}
        self._concrete: OrderedDict[str, _Resolved] = OrderedDict()
        self._max = max_concrete

    def _find(self, model: str) -> _Resolved | None:
        found = self._exact.get(model)
        if found is not None:
            return found
        cache = self._concrete
        found = cache.get(model)
        if found is not None:
            cache.move_to_end(model)
            return found
        for pattern in self.patterns:
            match = pattern.match(model)
            if match is not None:
                entry = self._models[pattern.text]

                def upstream_model(template: str | None, p: Pattern = pattern, m: re.Match[str] = match) -> str:
                    return p.upstream_model(template, model, m)

                found = _Resolved(pattern.text, _targets(model, entry, upstream_model))
                cache[model] = found
                if len(cache) > self._max:
                    cache.popitem(last=False)
                return found
        return None

    def entry_name(self, model: str) -> str | None:
        """The catalogue name serving ``model``: itself when exact, else the winning pattern."""
        found = self._find(model)
        return found.entry if found is not None else None

    def target(self, model: str) -> Target:
        """The target of a model name the catalogue serves (its first deployment's); ``KeyError``
        for any other."""
        found = self._find(model)
        if found is None:
            raise KeyError(model)
        return found.target

    def deployments(self, model: str) -> tuple[Target, ...]:
        """``model``'s targets, one per deployment in catalogue order; ``KeyError`` if unknown."""
        found = self._find(model)
        if found is None:
            raise KeyError(model)
        return found.deployments

    def chain(self, model: str) -> tuple[Target, ...]:
        """``model``'s deployments, then its entry's fallbacks' (each model once, never itself)."""
        found = self._find(model)
        if found is None:
            raise KeyError(model)
        if found.chain is None:
            fallbacks = self._models[found.entry].fallbacks
            found.chain = (*found.deployments, *(t for m in dict.fromkeys(fallbacks) if m != model
                                                 for t in self.deployments(m)))
        return found.chain

    @property
    def cached(self) -> int:
        """How many pattern-matched names have a cached target now."""
        return len(self._concrete)

    def listed_names(self, upstream: str, upstream_id: str) -> list[str]:
        """The names clients use for a model ``upstream`` lists as ``upstream_id``: one per pattern
        sending to that upstream that serves it under a name that can be told (see
        :meth:`Pattern.client_name`) and that no exact entry or earlier pattern takes."""
        names = []
        for pattern in self.patterns:
            entry = self._models[pattern.text]
            if entry.upstream != upstream:
                continue
            name = pattern.client_name(entry.upstream_model, upstream_id)
            if name is not None and name not in self._exact and self.entry_name(name) == pattern.text:
                names.append(name)
        return names
