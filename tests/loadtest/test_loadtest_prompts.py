"""Tests of the load tester's prompts (proxy/loadtest/prompts.py): prompt files and the built-in mix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.loadtest import PromptFileError, builtin_prompts, load_prompts, parse_prompts
from proxy.loadtest.prompts import _check_messages


def test_prompt_file_good_lines(prompt_file: Callable[..., str]) -> None:
    path = prompt_file(
        {"messages": [{"role": "system", "content": "简洁"}, {"role": "user", "content": "包邮吗"}]},
        "",
        {"prompt": "退货怎么办？", "weight": 3, "category": "faq"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    prompts = load_prompts(path)
    assert len(prompts) == 3
    assert prompts[1].messages == [{"role": "user", "content": "退货怎么办？"}]
    assert (prompts[1].weight, prompts[1].category) == (3.0, "faq")
    assert prompts[0].weight == 1.0 and prompts[0].messages[0]["role"] == "system"


def test_prompt_file_bad_lines(prompt_file: Callable[..., str], tmp_path: Path) -> None:
    path = prompt_file(
        {"prompt": "ok"},
        '{"prompt": "unterminated',
        ["not", "an", "object"],
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"promt": "typo"},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": []},
        {"prompt": "   "},
        {"prompt": "x", "weight": 0},
        {"messages": [{"role": "user"}]})
    with pytest.raises(PromptFileError) as info:
        load_prompts(path)
    errors = info.value.errors
    assert [e.split(":")[1] for e in errors] == ["2", "3", "4", "5", "6", "7", "8", "9", "10"]
    assert all(e.startswith(path + ":") for e in errors)
    text = str(info.value)
    for fragment in ("not valid JSON", "expected a JSON object", "exactly one of",
                     "unknown key 'promt'", "messages[0].role must be one of",
                     '"messages" must be a non-empty list', '"prompt" must be a non-empty',
                     '"weight" must be a positive number', "messages[0].content must be"):
        assert fragment in text
    with pytest.raises(PromptFileError, match="no prompts"):
        parse_prompts(["", "  "], "empty.jsonl")
    with pytest.raises(PromptFileError, match="cannot read prompts"):
        load_prompts(tmp_path / "missing.jsonl")


def test_builtin_mix() -> None:
    mix = builtin_prompts()
    assert len(mix) >= 30
    assert {c for c, _, _ in mix} == {"faq", "order", "comparison", "reasoning"}
    assert sum(w for _, w, _ in mix) == pytest.approx(1.0)
    for _, weight, messages in mix:
        assert weight > 0 and _check_messages(messages) is None
        assert messages[-1]["role"] == "user"
        assert any("\u4e00" <= ch <= "\u9fff" for ch in messages[-1]["content"])
    texts = " ".join(m[-1]["content"] for _, _, m in mix)
    for topic in ("营业时间", "退货", "包邮", "订单", "物流", "区别", "满", "减"):
        assert topic in texts
