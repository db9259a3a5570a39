"""Rule-based FAQ: answer common questions from the config, without any upstream call.

Settings: :class:`FaqSettings` (``plugins.faq`` in ``docs/configuration.md``).

A rule matches the **last user message** (the prompt for ``/v1/completions``)
when all of these hold: one of ``any`` occurs in it, every one of ``all``
occurs, ``regex`` matches (``re.search``; case-insensitive unless
``case_sensitive``), none of ``exclude`` occurs, and it is at most
``max_length`` characters. A rule needs at least one of ``any``,
``all`` or ``regex``; keywords are substrings, so they work for Chinese. Rules
are tried in config order and the first that matches answers; the core renders
the answer as a ``chat.completion``/``text_completion`` or as an SSE stream.

The plugin never answers when the reply could break the client: the last
message is not the user's (e.g. a tool result), ``n`` > 1, ``logprobs`` was
asked for, ``response_format`` is not text, or ``tool_choice`` forces a tool call.

Under overload, a route's ``faq`` step (the degrade plugin) sets ``ctx.relax``: a
request no rule answers strictly is then answered by the first rule matching it
*loosely* — ``max_length`` and ``exclude`` ignored, the keywords and ``regex`` still
required — and the step's name is added to ``ctx.degraded`` (so the response says
``x-floodgate-degraded``). A strict match is never counted as degraded.

Matching is precomputed: all keywords of all rules form one trie-shaped regular
expression, so a message that mentions no keyword costs one regex scan in C, not
one check per rule (about 2-6 µs per request with 200 rules on short messages).
Only the rules of the keywords found are then checked. Rules with only a
``regex`` cost one regex search each per request: prefer keywords.

Metrics: ``floodgate_faq_hits_total{rule}`` and
``floodgate_faq_saved_usd_total{model}``: the (estimated) tokens of each answer
priced at the model the request would otherwise have used, found by calling the
``proxy_route`` hooks after the response on a copy of the context (``ctx.route``,
``ctx.state`` and the response headers are left alone). A route plugin that
counts its decisions inside ``proxy_route`` counts these too.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable
from typing import Annotated, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import Field, field_validator

import proxy

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Stored in ``ctx.state`` for the request the plugin answered: the rule's name.
STATE_RULE = "faq.rule"

Keyword = Annotated[str, Field(min_length=1, max_length=200)]


class RuleSettings(proxy.Settings):
    """One rule: what the last user message must (and must not) contain, and the answer."""

    name: str
    """Unique; 1-64 ASCII letters, digits and `. _ -`. Sent in `x-floodgate-short-circuit:
    faq/<name>` and a metric label."""
    any: list[Keyword] = Field(default_factory=list)
    """At least one of these substrings must occur."""
    all: list[Keyword] = Field(default_factory=list)
    """Every one of these substrings must occur."""
    regex: str | None = None
    """A Python regular expression searched in the message (compiled at start-up)."""
    exclude: list[Keyword] = Field(default_factory=list)
    """None of these substrings may occur."""
    max_length: proxy.PositiveInt | None = None
    """Only messages of at most this many characters (so a long coupon calculation is not
    answered by a rule meant for "优惠券怎么用?")."""
    answer: proxy.NonEmptyStr
    """The reply text."""
    model: proxy.NonEmptyStr | None = None
    """The reply's `model` field; unset: the requested model."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be 1-64 characters: ASCII letters, digits and . _ - (it is sent in a "
                             "response header and used as a metric label)")
        return value


class FaqSettings(proxy.Settings):
    """Rule-based answers without a model: rules match the last user message (the prompt for
    legacy completions), in order; the first hit answers, with no upstream call. A rule needs at
    least one of `any`, `all`, `regex`. See the
    [README](../README.md#pluginsfaq--rule-based-answers-without-a-model)."""

    rules: list[RuleSettings] = Field(default_factory=list)
    """The rules, tried in order."""
    case_sensitive: bool = False
    """`false`: keywords and regexes match in any case."""


class Rule:
    """One compiled rule; its keywords are lower-cased unless matching is case-sensitive."""

    __slots__ = ("all", "any", "exclude", "max_length", "name", "regex", "reply")

    def __init__(self, settings: RuleSettings, regex: re.Pattern[str] | None, fold: bool) -> None:
        norm = str.lower if fold else str
        self.name = settings.name
        self.any = frozenset(map(norm, settings.any))
        self.all = frozenset(map(norm, settings.all))
        self.exclude = tuple(dict.fromkeys(map(norm, settings.exclude)))
        self.regex = regex
        self.max_length = settings.max_length
        # Built once: a hit allocates nothing.
        self.reply = proxy.Reply(content=settings.answer, source=f"faq/{settings.name}", model=settings.model)

    def matches(self, text: str, folded: str, present: frozenset[str] | set[str], loose: bool = False) -> bool:
        """Whether the rule answers ``text`` (``folded``: normalised) given the keywords present;
        ``loose``: ignoring ``max_length`` and ``exclude``."""
        if not loose and self.max_length is not None and len(text) > self.max_length:
            return False
        if self.any and self.any.isdisjoint(present):
            return False
        if self.all and not self.all <= present:
            return False
        if not loose:
            for word in self.exclude:
                if word in folded:
                    return False
        return self.regex is None or self.regex.search(text) is not None


def trie_regex(words: Iterable[str]) -> str:
    """A regex matching any of ``words``, shaped as a trie.

    At any position it matches the longest word starting there (longer branches
    are tried first), and it begins with a plain alternation of literals, which
    lets the regex engine skip positions whose character starts no word.
    """
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here: longer words are optional continuations
            body = f"(?:{body})?"
        return body

    return build(trie)


class Matcher:
    """All rules, compiled for a cheap no-match path."""

    def __init__(self, rules: list[Rule], fold: bool) -> None:
        self.rules = rules
        words = sorted({w for r in rules for w in (*r.any, *r.all)})
        # Lower-casing the message is only needed if some keyword has letters with a case.
        cased = [w for w in (*words, *(x for r in rules for x in r.exclude)) if w != w.upper()]
        self.fold = fold and bool(cased)
        # Longer messages than every rule's max_length are answered by none: one len() check.
        limits = [r.max_length for r in rules]
        self.longest = max(limits) if None not in limits else None  # type: ignore[type-var]
        self.scan = re.compile(trie_regex(words)).search if words else None
        # Every word, with the words it contains: a match of the longest word at each
        # position then accounts for every word that occurs (see ``present``).
        known = frozenset(words)
        self.contains = {w: frozenset(w[i:j] for i in range(len(w)) for j in range(i + 1, len(w) + 1)
                                      if w[i:j] in known) for w in words}
        by_word: dict[str, list[int]] = {}
        for i, rule in enumerate(rules):
            for w in rule.any | rule.all:
                by_word.setdefault(w, []).append(i)
        self.by_word = {w: tuple(indexes) for w, indexes in by_word.items()}
        self.regex_only = tuple(i for i, r in enumerate(rules) if not r.any and not r.all)

    def present(self, folded: str) -> set[str] | None:
        """The keywords occurring in ``folded``, or ``None`` if none does.

        Searching again from one character after each match start visits every position
        where a keyword starts; there the trie regex finds the longest keyword, and every
        shorter keyword starting at that position is contained in it.
        """
        scan = self.scan
        if scan is None:
            return None
        m = scan(folded)
        if m is None:
            return None
        contains = self.contains
        found: set[str] = set()
        while m is not None:
            found |= contains[m.group()]
            m = scan(folded, m.start() + 1)
        return found

    def match(self, text: str, loose: bool = False) -> Rule | None:
        """The first rule (in config order) that answers ``text`` (``loose``: see :meth:`Rule.matches`)."""
        if not loose and self.longest is not None and len(text) > self.longest:
            return None
        folded = text.lower() if self.fold else text
        present = self.present(folded)
        if present is None:
            if not self.regex_only:
                return None
            candidates: Iterable[int] = self.regex_only
            present = set()
        else:
            by_word = self.by_word
            candidates = sorted({i for w in present for i in by_word[w]}.union(self.regex_only))
        rules = self.rules
        for i in candidates:
            rule = rules[i]
            if rule.matches(text, folded, present, loose):
                return rule
        return None


def _unsafe_to_answer(body: dict[str, Any]) -> bool:
    """Request features a canned single text answer would not honour."""
    messages = body.get("messages")
    if messages is not None:
        last = messages[-1] if isinstance(messages, list) and messages else None
        if not isinstance(last, dict) or last.get("role") != "user":
            return True  # e.g. the model must read a tool result
    n = body.get("n")
    if n is not None and n != 1:
        return True
    if body.get("logprobs"):
        return True
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
        return True
    choice = body.get("tool_choice")
    return choice == "required" or isinstance(choice, dict)


class FaqPlugin:
    """Short-circuits requests whose last user message matches a configured rule."""

    name = "faq"
    settings_model = FaqSettings

    def __init__(self) -> None:
        self.matcher: Matcher | None = None
        self.hooks: Any = None
        self.hits: Any = None
        self.saved: Any = None

    @proxy.hookimpl
    def proxy_configure(self, config: proxy.Config, registry: CollectorRegistry) -> None:
        settings = config.plugin_settings(self.name, self.settings_model)
        fold = not settings.case_sensitive
        errors: list[proxy.ConfigError] = []
        seen: dict[str, int] = {}
        rules: list[Rule] = []
        for i, entry in enumerate(settings.rules):
            path = ("plugins", self.name, "rules", i)
            if entry.name in seen:
                errors.append(config.error((*path, "name"), f"duplicate rule name {entry.name!r} "
                                           f"(also rules.{seen[entry.name]}.name)"))
            seen.setdefault(entry.name, i)
            if not (entry.any or entry.all or entry.regex):
                errors.append(config.error(path, "a rule needs at least one of any, all or regex"))
            regex = None
            if entry.regex is not None:
                try:
                    regex = re.compile(entry.regex, re.IGNORECASE if fold else 0)
                except re.error as exc:
                    errors.append(config.error((*path, "regex"), f"invalid regular expression: {exc}"))
            rules.append(Rule(entry, regex, fold))
        if errors:
            raise proxy.ConfigErrors(errors)
        self.matcher = Matcher(rules, fold) if rules else None
        self.hits = proxy.LabelCache(Counter(
            "floodgate_faq_hits", "Requests answered by an FAQ rule", ["rule"], registry=registry))
        for rule in rules:
            self.hits(rule.name)  # every rule shows up, with 0, before its first hit
        self.saved = proxy.LabelCache(Counter(
            "floodgate_faq_saved_usd", "Estimated US dollars saved by FAQ answers, priced at the model "
            "the request would have been routed to", ["model"], registry=registry))

    @proxy.hookimpl
    def proxy_startup(self, app: web.Application) -> None:
        self.hooks = app[proxy.HOOKS]

    @proxy.hookimpl
    def proxy_short_circuit(self, ctx: proxy.RequestContext) -> proxy.Reply | None:
        matcher = self.matcher
        if matcher is None:
            return None
        text, relax = ctx.last_user_text(), ctx.relax
        rule = matcher.match(text)
        loose = rule is None and relax is not None
        if loose:
            rule = matcher.match(text, loose=True)
        if rule is None or _unsafe_to_answer(ctx.body):  # checked on hits only: misses stay cheap
            return None
        if loose and relax is not None:
            ctx.degraded.append(relax)  # answered only thanks to the overload step
        ctx.state[STATE_RULE] = rule.name
        return rule.reply

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> Awaitable[None] | None:
        # Synchronous for every request; only the ones answered here return a coroutine
        # (the dispatcher awaits it), so misses do not pay for one.
        rule = ctx.state.get(STATE_RULE)
        if rule is None or ctx.reply is None or not ctx.reply.source.startswith("faq/"):
            return None
        self.hits(rule).inc()
        return self._account_saving(ctx)

    async def _account_saving(self, ctx: proxy.RequestContext) -> None:
        """Price the answer at the route the request would have taken (asked as a preview:
        the route hooks record nothing for a request that was never routed)."""
        if ctx.usage is None or self.hooks is None:
            return
        route = await self.hooks.preview_route(ctx)
        if route is None or not route.targets:
            return
        model = route.targets[0].model
        price = ctx.config.price(model)
        if price is not None:
            self.saved(model).inc(price.cost(ctx.usage))


floodgate_plugin = FaqPlugin
