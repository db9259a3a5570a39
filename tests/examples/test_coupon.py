"""The example plugin from docs/plugins.md, tested with the plugin author's kit."""

from __future__ import annotations

from examples.coupon import CouponPlugin, best_price


def test_best_price_picks_the_biggest_eligible_discount():
    assert best_price(500, [(400, 50), (300, 20), (600, 100)]) == (450, (400, 50))
    assert best_price(200, [(400, 50)]) == (200, None)


async def test_coupon_question_is_answered_without_upstream(floodgate, mock_upstream):
    gw = await floodgate(plugins=[CouponPlugin()])
    client = gw.openai()
    ask = [{"role": "user", "content": "我想买三件商品,总价是500元,能用满400减50的优惠券吗?"}]
    raw = await client.chat.completions.with_raw_response.create(model="deepseek-v3.2", messages=ask)
    assert raw.headers["x-floodgate-short-circuit"] == "coupon/calculator"
    assert "实付 450元" in raw.parse().choices[0].message.content
    assert mock_upstream.stats.total == 0

    stream = await client.chat.completions.create(model="deepseek-v3.2", stream=True, messages=[
        {"role": "user", "content": "合计 350 元,满400减50能用吗"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert "还差 50元" in text

    await client.chat.completions.create(model="deepseek-v3.2", messages=[{"role": "user", "content": "包邮吗"}])
    assert mock_upstream.stats.total == 1
    assert "floodgate_coupon_answers_total 2.0" in await gw.metrics()


async def test_coupon_settings_are_validated(floodgate):
    import pytest

    from proxy import ConfigErrors
    with pytest.raises(ConfigErrors) as info:
        await floodgate(plugins=[CouponPlugin()], plugin_settings={"coupon": {"min_totl": 5}})
    assert info.value.errors[0].path == "plugins.coupon.min_totl"
