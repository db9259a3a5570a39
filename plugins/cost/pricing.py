"""What a request costs, and the most it may cost (what admission reserves)."""

from __future__ import annotations

import proxy

__all__ = ["Prices"]


class Prices:
    """The catalogue's prices, and the two questions the plugin asks of them.

    A model whose catalogue entry has no price is *unpriced*: its requests cost an
    unknown amount (``None``), never a made-up one.
    """

    def __init__(self, config: proxy.Config, default_max_tokens: int) -> None:
        self._config = config
        self.default_max_tokens = default_max_tokens

    def price(self, model: str, deployment: str | None = None) -> proxy.Price | None:
        return self._config.price(model, deployment)  # exact entries and names catalogue patterns serve

    def target_price(self, target: proxy.Target) -> proxy.Price | None:
        """The price on ``target``'s deployment (its own when it has one, else its model's)."""
        return self._config.price(target.model, target.deployment)

    def cost(self, ctx: proxy.RequestContext) -> float | None:
        """The request's cost in USD; ``None`` when an upstream was used and the cost is unknown
        (passthrough, an unpriced model). Short-circuits and failed or refused requests cost 0."""
        target = ctx.target
        if ctx.kind is proxy.EndpointKind.PASSTHROUGH:
            if not ctx.attempts:
                return 0.0
            # A passthrough answer the core metered (a stored-prompt Responses call names its
            # model and usage) is priced like a model call; any other passthrough is unpriced.
            price = (self.price(target.model)
                     if target is not None and target.model != "-" and ctx.usage is not None else None)
            return price.cost(ctx.usage) if price is not None and ctx.usage is not None else None
        if ctx.reply is not None or target is None or ctx.usage is None:
            return 0.0
        price = self.target_price(target)
        return price.cost(ctx.usage) if price is not None else None

    def attempt_cost(self, attempt: proxy.AttemptRecord) -> float | None:
        """What one attempt's own usage cost (a hedged attempt that lost the race)."""
        price = self.target_price(attempt.target)
        return price.cost(attempt.usage) if price is not None and attempt.usage is not None else None

    def maximum(self, ctx: proxy.RequestContext) -> float | None:
        """The most the request may cost: estimated prompt × input price + its output limit ×
        output price, at the dearest of the route's priced targets (a fallback may cost more),
        each target with its own overrides. ``None`` when no target is priced (or no route)."""
        route = ctx.route
        if route is None:
            return None
        prompt = ctx.estimated_prompt_tokens()
        highest: float | None = None
        for target in route.targets:
            price = self.target_price(target)
            if price is None:
                continue
            tokens, output = proxy.request_token_bounds(ctx.body, ctx.endpoint, target.overrides,
                                                        self.default_max_tokens, prompt=prompt)
            cost = (tokens * price.input + output * price.output) / 1_000_000
            if highest is None or cost > highest:
                highest = cost
        return highest
