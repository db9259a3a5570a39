"""Example plugin: answer "满400减50" coupon questions deterministically.

A customer asks "我买了三件,总价是500元,能用满400减50的优惠券吗?"; a language model
may get the arithmetic wrong, this plugin never does, and the answer costs nothing.
It reads the total and the coupon rules ("满X减Y") from the last user message and
short-circuits with the exact amount to pay. Messages without both a total and a
coupon go upstream as usual.

Enable it in config.yaml::

    plugins:
      modules: [examples.coupon]
      coupon:
        currency: 元
        min_total: 1

Its settings are documented once, in :class:`CouponSettings`'s docstrings
(``floodgate config reference --plugin examples.coupon`` renders them).
"""

from __future__ import annotations

import re

from prometheus_client import Counter

from proxy import Config, Reply, RequestContext, Settings, hookimpl

_COUPON = re.compile(r"满\s*(\d+(?:\.\d+)?)\s*(?:元)?\s*减\s*(\d+(?:\.\d+)?)")
_TOTAL = re.compile(r"(?:总价|总共|合计|一共|总额)\D{0,6}?(\d+(?:\.\d+)?)")


class CouponSettings(Settings):
    """Coupon questions answered exactly: the total and the "满X减Y" rules come from the message."""

    currency: str = "元"
    """The unit written after amounts in the answer."""
    min_total: float = 1.0
    """Totals below this are left to the model."""


def best_price(total: float, coupons: list[tuple[float, float]]) -> tuple[float, tuple[float, float] | None]:
    """The lowest price after applying the single best eligible coupon."""
    eligible = [(threshold, off) for threshold, off in coupons if total >= threshold]
    if not eligible:
        return total, None
    best = max(eligible, key=lambda c: c[1])
    return total - best[1], best


def _fmt(value: float) -> str:
    return f"{value:g}"


class CouponPlugin:
    name = "coupon"
    settings_model = CouponSettings

    @hookimpl
    def proxy_configure(self, config: Config, registry) -> None:
        self.settings = config.plugin_settings(self.name, self.settings_model)
        self.answered = Counter("floodgate_coupon_answers", "Coupon questions answered", registry=registry)

    @hookimpl
    def proxy_short_circuit(self, ctx: RequestContext) -> Reply | None:
        text = ctx.last_user_text()
        if "减" not in text:  # cheap pre-check: most messages are not about coupons
            return None
        coupons = [(float(a), float(b)) for a, b in _COUPON.findall(text)]
        total_match = _TOTAL.search(text)
        if not coupons or total_match is None:
            return None
        total = float(total_match.group(1))
        if total < self.settings.min_total:
            return None
        unit = self.settings.currency
        price, used = best_price(total, coupons)
        self.answered.inc()
        if used is None:
            lowest = min(c[0] for c in coupons)
            answer = (f"您的订单总价 {_fmt(total)}{unit},还差 {_fmt(lowest - total)}{unit} 才能使用"
                      f"满{_fmt(lowest)}减的优惠券哦。")
        else:
            answer = (f"可以使用!订单总价 {_fmt(total)}{unit},使用满{_fmt(used[0])}减{_fmt(used[1])}的优惠券后,"
                      f"实付 {_fmt(price)}{unit}。")
        return Reply(answer, source="coupon/calculator")


floodgate_plugin = CouponPlugin
